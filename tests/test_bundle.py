"""Model factory and bundle: build, required multiples, save/load round trip, bad bundles, info."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import safetensors
import safetensors.torch
import torch

from rsseg.errors import ConfigError, InputError, OutputError
from rsseg.models.bundle import BundleMeta, load_bundle, read_meta, save_bundle
from rsseg.models.factory import ARCHITECTURES, ModelSpec, build_model, required_multiple

SMALL_UNET = {"encoder_depth": 3, "decoder_channels": (16, 8, 8)}


def _meta(spec: ModelSpec, **extra: object) -> BundleMeta:
    return BundleMeta(
        model=spec,
        bands=[{"name": f"B{i}", "mean": 10.0 * i, "std": 2.0} for i in range(spec.in_channels)],
        classes=[{"id": i, "name": f"class {i}", "color": (40 * i, 0, 255 - 40 * i)}
                 for i in range(spec.classes)],
        **extra,
    )


@pytest.fixture(scope="module")
def saved_unet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec = ModelSpec(arch="unet", encoder="resnet18", in_channels=3, classes=3, kwargs=SMALL_UNET)
    path = tmp_path_factory.mktemp("bundle") / "m.rsseg"
    return save_bundle(path, build_model(spec), _meta(spec, resolution=10.0))


@pytest.fixture
def unet_bundle(saved_unet: Path, tmp_path: Path) -> Path:
    """A private copy of a small U-Net bundle (tests may overwrite it)."""
    path = tmp_path / "m.rsseg"
    path.write_bytes(saved_unet.read_bytes())
    return path


def test_required_multiple_matches_smp() -> None:
    assert required_multiple(ModelSpec(arch="unet", in_channels=3, classes=2)) == 32
    assert required_multiple(ModelSpec(arch="deeplabv3plus", in_channels=3, classes=2)) == 16
    assert required_multiple(ModelSpec(arch="pixel", in_channels=3, classes=2)) == 1
    spec = ModelSpec(arch="unet", in_channels=3, classes=2, kwargs=SMALL_UNET)
    assert required_multiple(spec) == 8


QUICK_ARCHS = ("unet", "deeplabv3plus", "pixel")  # the others (slow to build) run with -m slow


@pytest.mark.parametrize("arch", [a if a in QUICK_ARCHS else pytest.param(a, marks=pytest.mark.slow)
                                  for a in ARCHITECTURES])
def test_every_architecture_runs_at_its_multiple(arch: str) -> None:
    spec = ModelSpec(arch=arch, encoder="resnet18", in_channels=4, classes=3)
    side = 2 * required_multiple(spec) if arch != "pixel" else 5
    model = build_model(spec).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 4, side, side + required_multiple(spec)))
    assert out.shape == (1, 3, side, side + required_multiple(spec))


def test_unknown_names_list_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown architecture 'unett'.*deeplabv3plus.*unet"):
        build_model(ModelSpec(arch="unett", in_channels=3, classes=2))
    with pytest.raises(ConfigError, match=r"unknown encoder 'resnet19'.*did you mean.*resnet18"):
        build_model(ModelSpec(encoder="resnet19", in_channels=3, classes=2))
    with pytest.raises(ConfigError, match=r"no argument.*no_such_arg.*valid.*decoder_channels"):
        build_model(ModelSpec(in_channels=3, classes=2, kwargs={"no_such_arg": 1}))
    with pytest.raises(ConfigError, match="cannot build"):
        build_model(ModelSpec(arch="deeplabv3plus", in_channels=3, classes=2,
                              kwargs={"encoder_output_stride": 4}))


def test_round_trip_keeps_weights_and_metadata(unet_bundle: Path) -> None:
    model, meta = load_bundle(unet_bundle)
    assert not model.training
    assert meta.resolution == 10.0 and meta.model.kwargs["encoder_depth"] == 3
    assert read_meta(unet_bundle) == meta
    with safetensors.safe_open(str(unet_bundle), framework="pt") as f:  # plain safetensors
        stored = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    for name, tensor in model.state_dict().items():
        assert torch.equal(stored[name], tensor)


def test_save_is_atomic_and_refuses_existing(unet_bundle: Path) -> None:
    spec = ModelSpec(arch="pixel", in_channels=3, classes=3)
    with pytest.raises(OutputError, match=r"already exists.*--overwrite"):
        save_bundle(unet_bundle, build_model(spec), _meta(spec))
    save_bundle(unet_bundle, build_model(spec), _meta(spec), overwrite=True)
    assert read_meta(unet_bundle).model.arch == "pixel"
    assert sorted(p.name for p in unet_bundle.parent.iterdir()) == ["m.rsseg"]


def test_save_refuses_weights_of_another_architecture(tmp_path: Path) -> None:
    spec = ModelSpec(arch="pixel", in_channels=3, classes=3)
    other = build_model(ModelSpec(arch="pixel", in_channels=3, classes=3, kwargs={"hidden": 4}))
    with pytest.raises(ConfigError, match="do not fit pixel"):
        save_bundle(tmp_path / "x.rsseg", other, _meta(spec))


@pytest.mark.parametrize("change, match", [
    ({"bands": [{"name": "B0", "mean": 0, "std": 1}]}, "1 bands but model.in_channels is 3"),
    ({"classes": [{"id": 1, "name": "a", "color": (0, 0, 0)},
                  {"id": 0, "name": "b", "color": (0, 0, 0)},
                  {"id": 2, "name": "c", "color": (0, 0, 0)}]}, "unique and sorted"),
    ({"nodata_id": 2}, "collide with nodata_id"),
    ({"overlap": 256}, "smaller than tile"),
])
def test_inconsistent_metadata_is_rejected(change: dict, match: str) -> None:
    raw = _meta(ModelSpec(arch="pixel", in_channels=3, classes=3)).model_dump() | change
    with pytest.raises(ValueError, match=match):
        BundleMeta.model_validate(raw)


def _corrupt(path: Path, kind: str, bundle: Path) -> Path:
    if kind == "text":
        path.write_text("not a model\n")
    elif kind == "truncated":
        path.write_bytes(bundle.read_bytes()[: bundle.stat().st_size // 2])
    elif kind == "pickle":
        torch.save({"w": torch.zeros(2)}, path)
    elif kind == "foreign-safetensors":
        safetensors.torch.save_file({"w": torch.zeros(2)}, str(path))
    elif kind == "bad-json":
        safetensors.torch.save_file({"w": torch.zeros(2)}, str(path),
                                    metadata={"rsseg_bundle": "{not json"})
    elif kind == "future-format":
        meta = json.loads(read_meta(bundle).model_dump_json()) | {"format_version": 99}
        safetensors.torch.save_file({"w": torch.zeros(2)}, str(path),
                                    metadata={"rsseg_bundle": json.dumps(meta)})
    elif kind == "wrong-weights":
        safetensors.torch.save_file({"w": torch.zeros(2)}, str(path),
                                    metadata={"rsseg_bundle": read_meta(bundle).model_dump_json()})
    return path


@pytest.mark.parametrize("kind, match", [
    ("text", "not a model bundle or corrupt"),
    ("truncated", "not a model bundle or corrupt"),
    ("pickle", "not a model bundle or corrupt"),
    ("foreign-safetensors", "without rsseg metadata"),
    ("bad-json", "corrupt bundle metadata"),
    ("future-format", "newer than this rsseg supports.*upgrade rsseg"),
    ("wrong-weights", "weights do not match"),
])
def test_bad_bundles_are_one_line_input_errors(tmp_path: Path, unet_bundle: Path, kind: str,
                                               match: str) -> None:
    path = _corrupt(tmp_path / f"{kind}.rsseg", kind, unet_bundle)
    with pytest.raises(InputError, match=match) as err:
        load_bundle(path)
    assert "\n" not in str(err.value)


def test_missing_bundle(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such model bundle"):
        load_bundle(tmp_path / "nope.rsseg")


def test_info_cli_prints_table_and_json(run_cli, unet_bundle: Path) -> None:
    table = run_cli("info", unet_bundle)
    assert table.exit_code == 0
    assert "unet / resnet18" in table.stdout and "class 2" in table.stdout
    as_json = run_cli("info", unet_bundle, "--json")
    assert as_json.exit_code == 0
    assert json.loads(as_json.stdout)["classes"][1]["name"] == "class 1"
    bad = run_cli("info", _corrupt(unet_bundle.parent / "t.rsseg", "text", unet_bundle))
    assert bad.exit_code == 1 and bad.stderr.count("\n") == 1 and "Error:" in bad.stderr


def test_unused_encoder_stages_are_dropped_and_old_bundles_still_load(unet_bundle: Path,
                                                                      tmp_path: Path) -> None:
    """encoder_depth 3 never runs resnet's layer3/layer4: they are not built nor saved; a bundle
    written with them (rsseg ≤ 0.1 before this change) loads and predicts the same."""
    net, _ = load_bundle(unet_bundle)
    keys = net.state_dict().keys()
    assert not any(k.startswith(("encoder.layer3.", "encoder.layer4.")) for k in keys)
    assert any(k.startswith("encoder.layer2.") for k in keys)
    full = build_model(ModelSpec(arch="unet", encoder="resnet18", in_channels=3, classes=3))
    stale = {k: v for k, v in full.state_dict().items()
             if k.startswith(("encoder.layer3.", "encoder.layer4."))}
    with safetensors.safe_open(unet_bundle, "pt") as f:
        header = f.metadata()
    tensors = safetensors.torch.load_file(unet_bundle)
    old = tmp_path / "old.rsseg"
    safetensors.torch.save_file({**tensors, **stale}, old, metadata=header)
    old_net, _ = load_bundle(old)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(old_net(x), net(x))
