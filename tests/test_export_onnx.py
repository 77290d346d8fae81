"""``rsseg export-onnx``: Deepness metadata, onnxruntime == PyTorch, Deepness-style inference,
clear errors for unexportable architectures and missing optional packages."""

from __future__ import annotations

import json
import re
import sys

import numpy as np
import pytest
import torch
from torch import nn

from rsseg.models.bundle import BundleMeta, save_bundle
from rsseg.models.factory import ModelSpec, build_model

WEIGHTS = np.array([[1, -2, 3], [0, 1, 1], [-1, 2, -1]], dtype=np.float32)
MEANS, STDS = (100.0, 90.0, 80.0), (20.0, 25.0, 30.0)
CLASSES = [{"id": 2, "name": "crop", "color": (200, 200, 0)},
           {"id": 5, "name": "forest", "color": (0, 120, 0)},
           {"id": 9, "name": "water", "color": (0, 0, 200)}]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory):
    spec = ModelSpec(arch="pixel", in_channels=3, classes=3)
    net = build_model(spec)
    with torch.no_grad():
        net.net[0].weight.copy_(torch.from_numpy(WEIGHTS)[:, :, None, None])
        net.net[0].bias.zero_()
    meta = BundleMeta(model=spec, tile=32, overlap=8, resolution=0.5, classes=CLASSES,
                      bands=[{"name": n, "mean": m, "std": s}
                             for n, m, s in zip(("red", "green", "blue"), MEANS, STDS,
                                                strict=True)])
    return save_bundle(tmp_path_factory.mktemp("b") / "m.rsseg", net, meta)


def test_export_has_deepness_metadata_and_matches_pytorch(bundle, tmp_path, run_cli) -> None:
    ort = pytest.importorskip("onnxruntime")
    out = tmp_path / "model.onnx"
    result = run_cli("export-onnx", bundle, "--out", out)
    assert result.exit_code == 0, result
    diff = float(re.search(r"max abs difference (\S+)", result.stdout).group(1))
    assert diff <= 1e-5
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    meta = {k: json.loads(v) for k, v in session.get_modelmeta().custom_metadata_map.items()}
    assert meta["model_type"] == "Segmentor"
    assert meta["class_names"] == {"0": "crop", "1": "forest", "2": "water"}
    assert meta["resolution"] == 50  # cm/px
    assert meta["tiles_size"] == 32 and meta["tiles_overlap"] == 25  # percent
    np.testing.assert_allclose(meta["standardization_mean"], np.array(MEANS) / 255)
    np.testing.assert_allclose(meta["standardization_std"], np.array(STDS) / 255)
    assert session.get_inputs()[0].shape == [1, 3, 32, 32]
    assert session.get_outputs()[0].shape == [1, 3, 32, 32]
    # Deepness: uint8 HWC tile → /255 → standardise → NCHW → probabilities → argmax
    rng = np.random.default_rng(0)
    tile = rng.integers(0, 256, (32, 32, 3)).astype(np.uint8)
    x = (tile / 255.0 - meta["standardization_mean"]) / meta["standardization_std"]
    x = x.transpose(2, 0, 1)[None].astype(np.float32)
    (probs,) = session.run(None, {session.get_inputs()[0].name: x})
    np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-5)
    logits = np.einsum("kc,chw->khw", WEIGHTS.astype(np.float64),
                       (tile.transpose(2, 0, 1) - np.array(MEANS)[:, None, None])
                       / np.array(STDS)[:, None, None])
    np.testing.assert_array_equal(probs[0].argmax(0), logits.argmax(0))


class _Eigen(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        gram = y.flatten(2) @ y.flatten(2).transpose(1, 2)
        return y * torch.linalg.eigvalsh(gram)[:, :, None, None]


def test_unexportable_architecture_names_the_operator(bundle, tmp_path, run_cli,
                                                      monkeypatch) -> None:
    pytest.importorskip("onnxscript")
    import rsseg.models.onnx_export as export
    from rsseg.models.bundle import load_bundle

    def eigen_bundle(path):
        _, meta = load_bundle(path)
        return _Eigen().eval(), meta

    monkeypatch.setattr(export, "load_bundle", eigen_bundle)
    result = run_cli("export-onnx", bundle, "--out", tmp_path / "m.onnx")
    assert result.exit_code == 1, result
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1, result.stderr
    assert re.search(r"pixel/resnet18 cannot be exported to ONNX \(operator "
                     r"aten::_linalg_eigh has no ONNX conversion\)", result.stderr), result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("case", ["missing onnxruntime", "suffix", "exists"])
def test_export_bad_input(case, bundle, tmp_path, run_cli, monkeypatch) -> None:
    out = tmp_path / "m.onnx"
    if case == "missing onnxruntime":
        monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if absent
        expected = r"needs the optional package onnxruntime.*pip install 'rsseg\[onnx\]'"
    elif case == "suffix":
        out = tmp_path / "m.pt"
        expected = r"name it \.onnx"
    else:
        out.write_text("keep")
        expected = r"already exists.*--overwrite"
    before = set(tmp_path.iterdir())
    result = run_cli("export-onnx", bundle, "--out", out)
    assert result.exit_code == 1 and result.stderr.count("\n") == 1, result
    assert re.search(expected, result.stderr), result.stderr
    assert set(tmp_path.iterdir()) == before
