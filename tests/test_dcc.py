"""DCC (docs/methods.md, "DCC"): the matching distance and joint loss against naive code,
warm-up, and ``rsseg condense`` → ``rsseg finetune --tiles`` end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rsseg.models.bundle import read_meta
from rsseg.pipelines import condense as condense_module
from rsseg.regularizers import dcc
from rsseg.regularizers.dcc import (
    ConvNet,
    DCCConfig,
    gradient,
    gradient_distance,
    masked_ce,
    matched_parameters,
    matching_loss,
    mean_real_gradient,
    real_gradient,
    train_net,
)

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["per_class=2", "size=16", "iterations=3", "batch_real=8", "real_pool=12",
        "net_width=8", "inner_loop=2", "net_steps=1", "outer_warmup=1", "inner_warmup=1",
        "device=cpu"]




def naive_distance(gw_syn, gw_real) -> float:
    """DC's distance_wb summed over layers, unit by unit in plain Python."""
    total = 0.0
    for gs, gr in zip(gw_syn, gw_real, strict=True):
        if gr.ndim == 1:
            continue  # bias / norm: not matched
        for unit in range(gr.shape[0]):
            a = gs[unit].flatten().tolist()
            b = gr[unit].flatten().tolist()
            dot = sum(x * y for x, y in zip(a, b, strict=True))
            norm_a = sum(x * x for x in a) ** 0.5
            norm_b = sum(y * y for y in b) ** 0.5
            total += 1 - dot / (norm_a * norm_b + 1e-6)
    return total


def test_gradient_distance_matches_naive_per_unit_cosine() -> None:
    gen = torch.Generator().manual_seed(0)
    shapes = [(5, 3, 3, 3), (5,), (4, 5), (4,), (2, 4, 1, 1)]
    gs = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
    gr = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
    assert gradient_distance(gs, gr).item() == pytest.approx(naive_distance(gs, gr), rel=1e-9)
    assert gradient_distance(gr, gr).item() == pytest.approx(0.0, abs=1e-5)
    flipped = [-g for g in gr]  # opposite gradients: 2 per unit of every matched layer
    assert gradient_distance(flipped, gr).item() == pytest.approx(2 * (5 + 4 + 2), rel=1e-5)


def test_bias_and_norm_parameters_are_not_matched() -> None:
    net = ConvNet(3, 4, width=8, depth=2)
    params = matched_parameters(net)
    assert [tuple(p.shape) for p in params] == [(8, 3, 3, 3), (8, 8, 3, 3), (4, 8, 1, 1)]


def tiny_problem(labels: str = "uniform"):
    torch.manual_seed(0)
    net = ConvNet(3, 3, width=6, depth=2)
    real = {c: (torch.randn(4, 3, 8, 8) + c, torch.where(torch.rand(4, 8, 8) < 0.5, c, 255))
            for c in (0, 2)}
    present = [0, 2]
    syn = torch.randn(4, 3, 8, 8, requires_grad=True)
    owner = torch.tensor([0, 0, 2, 2])
    syn_labels = owner[:, None, None].expand(4, 8, 8).clone()
    cfg = DCCConfig(per_class=2, batch_real=100, labels=labels)
    return net, real, present, syn, syn_labels, owner, cfg


def test_joint_matching_is_all_synthetic_classes_vs_mean_real_gradient() -> None:
    net, real, present, syn, syn_labels, owner, cfg = tiny_problem()
    params = matched_parameters(net)
    gen = torch.Generator().manual_seed(0)
    loss = matching_loss(net, params, syn, syn_labels, owner, real, present, cfg, True, gen)
    # naive: per-class real gradients of the CE over that class's pixels, averaged
    grads = []
    for c in present:
        x, y = real[c]
        logits = net(x).permute(0, 2, 3, 1)[y == c]
        grads.append(torch.autograd.grad(F.cross_entropy(logits, y[y == c]), params))
    mean_real = [sum(g[i] for g in grads) / len(grads) for i in range(len(params))]
    joint = F.cross_entropy(net(syn), syn_labels)  # one loss over every synthetic class
    gw_syn = torch.autograd.grad(joint, params)
    assert loss.item() == pytest.approx(naive_distance(gw_syn, mean_real), rel=1e-4)
    loss.backward()
    assert syn.grad is not None and syn.grad.abs().sum() > 0


def test_classwise_matching_sums_per_class_distances() -> None:
    net, real, present, syn, syn_labels, owner, cfg = tiny_problem()
    params = matched_parameters(net)
    loss = matching_loss(net, params, syn, syn_labels, owner, real, present, cfg, False,
                          torch.Generator().manual_seed(0))
    expected = 0.0
    for c in present:
        x, y = real[c]
        gr = torch.autograd.grad(masked_ce(net(x), y, c), params)
        mine = owner == c
        gs = torch.autograd.grad(F.cross_entropy(net(syn[mine]), syn_labels[mine]), params)
        expected += naive_distance(gs, gr)
    assert loss.item() == pytest.approx(expected, rel=1e-4)


def test_matching_steps_lower_the_distance_on_a_fixed_network() -> None:
    net, real, present, syn, syn_labels, owner, cfg = tiny_problem()
    params = matched_parameters(net)
    optimizer = torch.optim.SGD([syn], lr=1.0, momentum=0.5)
    losses = []
    for _ in range(15):
        loss = matching_loss(net, params, syn, syn_labels, owner, real, present, cfg, True,
                              torch.Generator().manual_seed(0))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


@pytest.fixture
def labelled(geotiff_factory) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    ids = np.ones((48, 64), dtype=np.uint8)
    ids[:, 24:] = 2
    ids[30:, 50:] = 4
    spectra = np.array([[300, 900, 400], [800, 700, 900], [0, 0, 0], [200, 300, 250]])
    pixels = spectra[ids - 1].transpose(2, 0, 1) + rng.integers(0, 60, (3, *ids.shape))
    scene = geotiff_factory("scene.tif", pixels.astype(np.uint16))
    sparse = np.zeros_like(ids)
    sparse[::3, ::3] = ids[::3, ::3]
    return scene, geotiff_factory("labels.tif", sparse, nodata=0)


def test_warm_up_then_joint_matching(labelled: tuple[Path, Path], tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = dcc.matching_loss

    def spy(*args, **kwargs):
        calls.append(args[8])
        return real(*args, **kwargs)

    monkeypatch.setattr(dcc, "matching_loss", spy)
    scene, labels = labelled
    cfg = DCCConfig.model_validate({"per_class": 1, "size": 16, "iterations": 2,
                                    "inner_loop": 3, "net_steps": 1, "outer_warmup": 1,
                                    "inner_warmup": 2, "batch_real": 4, "real_pool": 4,
                                    "net_width": 4, "device": "cpu"})
    condense_module.condense(tmp_path / "syn", cfg, scenes=[scene], labels=labels)
    # outer 0: DC for inner < 2, then DCC; outer 1 (≥ outer_warmup): DCC throughout
    assert calls == [False, False, True, True, True, True]


def test_condense_then_finetune_on_the_synthetic_tiles(labelled: tuple[Path, Path],
                                                       tmp_path: Path, run_cli) -> None:
    scene, labels = labelled
    syn = tmp_path / "syn"
    sets = [a for item in TINY for a in ("--set", item)]
    result = run_cli("condense", "--scene", scene, "--labels", labels, "--out", syn, *sets)
    assert result.exit_code == 0, result.stderr
    stems = sorted(p.stem for p in (syn / "images").iterdir())
    assert stems == ["syn_001_0000", "syn_001_0001", "syn_002_0000", "syn_002_0001",
                     "syn_004_0000", "syn_004_0001"]
    assert sorted(p.stem for p in (syn / "labels").iterdir()) == stems
    report = json.loads((syn / "condense.json").read_text())
    assert len(report["loss"]) == 3 and report["tiles"] == 6
    ft = tmp_path / "ft"
    done = run_cli("finetune", "--tiles", syn, "--out", ft, "--set", "data.crop_size=32",
                   "--set", "data.val_fraction=0", "--set", "trainer.batch_size=2",
                   "--set", "trainer.steps_per_epoch=1", "--set", "trainer.epochs=1",
                   "--set", "trainer.accelerator=cpu", "--set", "tile=32", "--set", "overlap=8")
    assert done.exit_code == 0, done.stderr
    meta = read_meta(ft / "model.rsseg")
    assert [c.id for c in meta.classes] == [1, 2, 4]
    bands = json.loads((syn / "bands.json").read_text())["bands"]
    assert [b.mean for b in meta.bands] == pytest.approx([b["mean"] for b in bands])
    import rasterio

    for stem in stems:  # uniform label maps: every pixel of a class-c tile is c
        with rasterio.open(syn / "labels" / f"{stem}.tif") as src:
            assert np.unique(src.read(1)).tolist() == [int(stem.split("_")[1])]
    assert "Warning" not in done.stderr  # synthetic tiles carry no CRS: not worth a warning


def test_condense_bad_input_is_one_line(labelled: tuple[Path, Path], tmp_path: Path,
                                        run_cli) -> None:
    scene, labels = labelled
    unlabelled = tmp_path / "tiles"
    (unlabelled / "images").mkdir(parents=True)
    (unlabelled / "images" / "a.tif").write_bytes(scene.read_bytes())
    for args, message in ((["--tiles", unlabelled], "no tile has a mask"),
                          (["--scene", scene], "--scene needs --labels"),
                          (["--scene", scene, "--labels", labels, "--set", "per_class=0"],
                           "per_class")):
        result = run_cli("condense", *args, "--out", tmp_path / "syn")
        assert result.exit_code in (1, 2), (args, result)
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "syn").exists()


def test_random_subset_baseline_has_the_same_size(labelled: tuple[Path, Path],
                                                  tmp_path: Path, run_cli) -> None:
    scene, labels = labelled
    sets = [a for item in TINY for a in ("--set", item)]
    result = run_cli("condense", "--scene", scene, "--labels", labels, "--random-subset",
                     "--out", tmp_path / "rnd", *sets)
    assert result.exit_code == 0, result.stderr
    report = json.loads((tmp_path / "rnd" / "condense.json").read_text())
    assert report["method"] == "random-subset" and report["tiles"] == 6 and not report["loss"]
    import rasterio

    with rasterio.open(next((tmp_path / "rnd" / "labels").iterdir())) as src:
        assert 255 in src.read(1)  # real crops keep their sparse labels


def test_mean_real_gradient_is_the_mean_of_per_class_gradients() -> None:
    net, real, present, *_ = tiny_problem()
    real[1] = (torch.randn(3, 3, 8, 8), torch.full((3, 8, 8), 255))  # no class-1 pixel: 0
    present = [0, 1, 2]
    params = matched_parameters(net)
    cfg = DCCConfig(per_class=2, batch_real=3)  # fewer than the pool: a random draw
    expected = [torch.zeros_like(p) for p in params]
    gen = torch.Generator().manual_seed(3)
    for c in present:
        for e, g in zip(expected, real_gradient(net, params, real, c, cfg, gen), strict=True):
            e += g / len(present)
    got = mean_real_gradient(net, params, real, present, cfg, torch.Generator().manual_seed(3))
    for e, g in zip(expected, got, strict=True):
        assert torch.allclose(g, e, rtol=1e-4, atol=1e-7)
    assert all(not g.requires_grad for g in got)


def test_condense_records_its_time(labelled: tuple[Path, Path], tmp_path: Path) -> None:
    scene, labels = labelled
    cfg = DCCConfig.model_validate({"per_class": 1, "size": 16, "iterations": 1,
                                    "inner_loop": 2, "net_steps": 1, "batch_real": 4,
                                    "real_pool": 4, "net_width": 4, "device": "cpu"})
    condense_module.condense(tmp_path / "syn", cfg, scenes=[scene], labels=labels)
    report = json.loads((tmp_path / "syn" / "condense.json").read_text())
    assert report["seconds"] >= 0 and report["threads"] >= 1 and len(report["loss"]) == 1


def test_chunked_gradients_equal_the_whole_batch_gradient() -> None:
    """:func:`gradient` and :func:`train_net` take ``CHUNK`` tiles per pass: the same
    gradients (and their gradients w.r.t. the tiles) as one pass over the whole batch."""
    torch.manual_seed(0)
    n = dcc.CHUNK * 2 + 3  # two full chunks and a remainder
    net = ConvNet(3, 3, width=6, depth=2)
    params = matched_parameters(net)
    x = torch.randn(n, 3, 8, 8, requires_grad=True)
    y = torch.where(torch.rand(n, 8, 8) < 0.3, torch.randint(0, 3, (n, 8, 8)), 255)
    y[:dcc.CHUNK] = 255  # a chunk without a labelled pixel
    for c in (None, 1):
        whole = torch.autograd.grad(masked_ce(net(x), y, c), params, create_graph=True)
        chunked = gradient(net, params, x, y, c, create_graph=True)
        for a, b in zip(whole, chunked, strict=True):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)
        # the matching's second-order path: d(distance)/d(tiles)
        target = [torch.randn_like(p) for p in params]
        ga, = torch.autograd.grad(gradient_distance(whole, target), x)
        gb, = torch.autograd.grad(gradient_distance(chunked, target), x)
        assert torch.allclose(ga, gb, rtol=1e-4, atol=1e-7)
    nothing = gradient(net, params, x, torch.full_like(y, 255), None)  # no labelled pixel
    assert all(not g.any() for g in nothing)
    # one network step on the whole batch, accumulated over chunks
    reference = ConvNet(3, 3, width=6, depth=2)
    reference.load_state_dict(net.state_dict())
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.1)
    train_net(net, opt, x.detach(), y, 1, n, torch.Generator().manual_seed(0))
    ref_opt.zero_grad()
    masked_ce(reference(x.detach()), y).backward()
    ref_opt.step()
    for a, b in zip(net.parameters(), reference.parameters(), strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)
