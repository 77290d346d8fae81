"""SupCon (docs/methods.md, "SupCon"): the loss against a naive loop, anchor sampling, bank,
fine-tuning."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rsseg.config import FinetuneConfig, load_config
from rsseg.errors import ConfigError
from rsseg.models.factory import ModelSpec, build_model
from rsseg.pretexts.base import pretext_class
from rsseg.registry import describe_methods
from rsseg.regularizers.base import SegInfo, SegPart, SegStep, get_regularizer
from rsseg.regularizers.supcon import SupCon, sample_anchors, supcon_loss
from rsseg.training.modules import SegmentationModule, class_balanced_weights, focal_loss

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TINY = ["data.crop_size=32", "data.val_block=16", "trainer.batch_size=4",
        "trainer.steps_per_epoch=2", "trainer.accelerator=cpu", "tile=64", "overlap=16",
        "regularizers.supcon.anchors_per_class=8"]




def naive_supcon(z: torch.Tensor, y: torch.Tensor, tau: float, bank_z=None, bank_y=None
                 ) -> torch.Tensor:
    """Khosla et al.'s SupCon written as loops over anchors, positives and the denominator."""
    z = F.normalize(z.double(), dim=1)
    others = [(z[a], int(y[a])) for a in range(len(z))]
    if bank_z is not None:
        bank = F.normalize(bank_z.double(), dim=1)
        others += [(bank[m], int(bank_y[m])) for m in range(len(bank))]
    losses = []
    for i in range(len(z)):
        denominator = sum(torch.exp(z[i] @ v / tau) for a, (v, _) in enumerate(others) if a != i)
        positives = [v for a, (v, c) in enumerate(others) if a != i and c == int(y[i])]
        if not positives:
            continue
        terms = [torch.log(torch.exp(z[i] @ v / tau) / denominator) for v in positives]
        losses.append(-sum(terms) / len(terms))
    return sum(losses) / len(losses)


def test_supcon_loss_matches_naive_loop_with_gradients() -> None:
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(12, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 0, 1, 1, 1, 2, 2, 0, 3, 1, 2, 0])  # class 3: no positive, left out
    fast = supcon_loss(z, y, tau=0.07)
    slow = naive_supcon(z, y, tau=0.07)
    assert fast.item() == pytest.approx(slow.item(), rel=1e-5)
    g_fast, = torch.autograd.grad(fast, z)
    g_slow, = torch.autograd.grad(slow, z)
    torch.testing.assert_close(g_fast.double(), g_slow, rtol=1e-4, atol=1e-6)


def test_supcon_loss_with_bank_matches_naive_loop() -> None:
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(7, 5, generator=gen)
    y = torch.tensor([0, 1, 1, 2, 2, 2, 4])  # class 4 finds its positives in the bank only
    bank_z = torch.randn(9, 5, generator=gen)
    bank_y = torch.tensor([0, 0, 1, 3, 3, 4, 4, 2, 1])
    fast = supcon_loss(z, y, 0.1, bank_z, bank_y)
    assert fast.item() == pytest.approx(naive_supcon(z, y, 0.1, bank_z, bank_y).item(),
                                        rel=1e-5)
    lonely = supcon_loss(z[:1], y[:1])  # no positive anywhere: zero, still differentiable
    assert lonely.item() == 0.0


def test_anchors_are_class_balanced_and_half_hard() -> None:
    labels = torch.full((400,), 255)
    labels[:200] = 0  # plenty
    labels[200:230] = 1  # fewer than asked
    labels[230:300] = 2
    pred = labels.clone()
    pred[:50] = 1  # 50 hard pixels of class 0
    pred[230:235] = 0  # only 5 hard pixels of class 2: easy ones fill in
    pred[labels == 255] = 0
    index = sample_anchors(labels, pred, per_class=20, hard_fraction=0.5,
                           generator=torch.Generator().manual_seed(0))
    chosen = labels[index]
    assert {c: int((chosen == c).sum()) for c in (0, 1, 2)} == {0: 20, 1: 20, 2: 20}
    assert not (chosen == 255).any() and len(set(index.tolist())) == len(index)
    hard = pred[index] != chosen
    assert int(hard[chosen == 0].sum()) == 10
    assert int(hard[chosen == 2].sum()) == 5


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelSpec(arch="unet", encoder="resnet18", in_channels=4, classes=3))


def test_supcon_regularizer_step_and_bank_fifo() -> None:
    model = tiny_model()
    reg = get_regularizer("supcon", model, SegInfo((3,)), anchors_per_class=6, bank_size=4,
                          proj_dim=16)
    assert reg.stateful and reg.head[0].in_channels == 16  # U-Net decoder output channels
    x = torch.randn(2, 4, 32, 32)
    y = torch.randint(0, 3, (2, 32, 32))
    y[:, :8] = 255
    from rsseg.regularizers.base import capture

    with capture(model, reg.taps) as feats:
        logits = model(x)
    step = SegStep([SegPart(0, x, y, logits, dict(feats))])
    loss, logs = reg(step)
    assert loss.ndim == 0 and torch.isfinite(loss) and logs["supcon_anchors"] == 18
    loss.backward()
    assert reg.head[0].weight.grad is not None
    assert next(model.encoder.parameters()).grad is not None
    assert reg.bank_count.tolist() == [4, 4, 4]  # FIFO holds the last 4 anchors per class
    before = reg.bank.clone()
    reg(step)
    assert not torch.equal(before, reg.bank)


def test_registry_and_data_needs() -> None:
    record = next(r for r in describe_methods() if r["name"] == "supcon")
    assert record["kind"] == "regularizer" and record["needs"] == ["labels"]
    assert record["config"]["tau"] == 0.07
    with pytest.raises(ConfigError, match="needs labels"):
        SupCon.check_data({"two_views"})  # e.g. a pretraining run: refused before training
    with pytest.raises(ConfigError, match="is a regularizer, not a pretext"):
        pretext_class("supcon")
    with pytest.raises(ConfigError, match=r"tau=0 is invalid.*0 < x"):
        get_regularizer("supcon", tiny_model(), SegInfo((3,)), tau=0)


def test_two_stage_schedule_freezes_all_but_the_head(monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_model()
    reg = get_regularizer("supcon", model, SegInfo((3,), epochs=4), two_stage=True,
                          anchors_per_class=4, classifier_loss="focal")
    assert [reg.stage(e).supervised for e in range(4)] == [0.0, 0.0, 1.0, 1.0]
    assert reg.stage(3).head_only and reg.stage(3).loss == "focal" and reg.stage(3).weight == 0
    module = SegmentationModule(model, 3, 255, load_config(FinetuneConfig).optim, 4, [reg],
                                class_counts=[[100, 10, 1]])
    batch = [torch.randn(2, 4, 32, 32), torch.randint(0, 3, (2, 32, 32))]
    monkeypatch.setattr(SegmentationModule, "current_epoch", property(lambda self: 3))
    with pytest.warns(UserWarning):
        module.training_step(batch, 0).backward()
    assert model.segmentation_head[0].weight.grad is not None
    assert all(p.grad is None for p in model.encoder.parameters())
    assert not model.encoder.training and model.segmentation_head.training
    assert reg.head[0].weight.grad is None  # stage 2: no contrastive term


def test_imbalance_aware_losses() -> None:
    w = class_balanced_weights([1000, 10, 0], beta=0.99)
    assert w.mean().item() == pytest.approx(1.0) and w[1] > w[0] and w[2] == w[1]
    logits = torch.randn(2, 3, 4, 4)
    target = torch.randint(0, 3, (2, 4, 4))
    target[0, 0] = 255
    assert focal_loss(logits, target, 0.0, 255).item() == pytest.approx(
        F.cross_entropy(logits, target, ignore_index=255).item(), rel=1e-5)
    keep = target != 255
    p = F.softmax(logits, 1).gather(1, target.clamp(max=2)[:, None])[:, 0][keep]
    naive = sum(-(1 - q) ** 2 * math.log(q) for q in p.tolist()) / len(p)
    assert focal_loss(logits, target, 2.0, 255).item() == pytest.approx(naive, rel=1e-5)


@pytest.fixture
def labelled_scene(geotiff_factory) -> tuple[Path, Path]:
    """A 4-band scene of three stripe classes and every 5th pixel labelled (class 3 rare)."""
    rng = np.random.default_rng(0)
    ids = np.ones((64, 96), dtype=np.uint8)
    ids[:, 40:] = 2
    ids[:, 84:] = 3
    spectra = np.array([[300, 900, 400, 2000], [800, 700, 900, 600], [200, 300, 250, 100]])
    pixels = (spectra[ids - 1].transpose(2, 0, 1) + rng.integers(0, 60, (4, *ids.shape)))
    scene = geotiff_factory("scene.tif", pixels.astype(np.uint16))
    sparse = np.zeros_like(ids)
    sparse[::5, ::5] = ids[::5, ::5]
    return scene, geotiff_factory("labels.tif", sparse, nodata=0)


def test_finetune_with_supcon_from_cli(labelled_scene: tuple[Path, Path], tmp_path: Path,
                                       run_cli) -> None:
    scene, labels = labelled_scene
    sets = [a for item in [*TINY, "trainer.epochs=1"] for a in ("--set", item)]
    result = run_cli("finetune", "--scene", scene, "--labels", labels, "--method", "supcon",
                     "--out", tmp_path / "ft", *sets)
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "ft" / "model.rsseg").is_file()
    with (tmp_path / "ft" / "metrics.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r.get("loss_supcon_epoch") or r.get("loss_supcon")]
    assert rows and all(math.isfinite(float(r.get("loss_supcon") or r["loss_supcon_epoch"]))
                        for r in rows)
    assert "supcon" in (tmp_path / "ft" / "config.yaml").read_text()


def test_finetune_config_runs_two_stages(labelled_scene: tuple[Path, Path],
                                         tmp_path: Path) -> None:
    from rsseg.models.bundle import load_bundle
    from rsseg.pipelines.finetune import finetune

    scene, labels = labelled_scene
    cfg = load_config(FinetuneConfig, CONFIGS / "finetune_supcon_cpu.yaml",
                      [*TINY, "trainer.epochs=2", "model.encoder=resnet18",
                       "regularizers.supcon.two_stage=true"])
    assert set(cfg.regularizers) == {"supcon"}
    _, meta = load_bundle(finetune(tmp_path / "ft", cfg, scenes=[scene], labels=labels))
    assert [c.id for c in meta.classes] == [1, 2, 3]


def test_bad_methods_are_one_line_errors(labelled_scene: tuple[Path, Path], tmp_path: Path,
                                         run_cli) -> None:
    scene, labels = labelled_scene
    for extra, message in ((["--method", "nope"], "valid methods: "),
                           (["--method", "glcnet"], "is a pretext, not a fine-tuning"),
                           (["--method", "supcon", "--set", "regularizers.supcon.tau=-1"],
                            "allowed: 0 < x"),
                           (["--method", "multidomain"], "has one")):
        result = run_cli("finetune", "--scene", scene, "--labels", labels, "--out",
                         tmp_path / "ft", *extra)
        assert result.exit_code == 1, (extra, result)
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "ft").exists()
