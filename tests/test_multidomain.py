"""Multi-domain fine-tuning (docs/methods.md, "Multi-domain"): loss against a naive loop,
domain BN and heads, bundles per domain, ``predict --domain``, bad input; and the contract
every registered fine-tuning regularizer keeps (supcon, multidomain, ...)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from rsseg.config import FinetuneConfig, load_config
from rsseg.errors import ConfigError, InputError
from rsseg.models.bundle import load_bundle, read_meta
from rsseg.models.factory import ModelSpec, build_model
from rsseg.regularizers.base import (
    SegInfo,
    SegPart,
    SegStep,
    capture,
    get_regularizer,
    regularizer_class,
    regularizer_names,
)
from rsseg.regularizers.multidomain import (
    DomainBatchNorm2d,
    MultiDomain,
    MultiDomainModel,
    domain_bundle,
    domain_contrast_loss,
)

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning",
                               "ignore:.*no CRS/georeferencing"),
]
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TINY = ["data.crop_size=32", "data.val_fraction=0.3", "trainer.batch_size=2",
        "trainer.steps_per_epoch=2", "trainer.accelerator=cpu", "trainer.epochs=1", "tile=32",
        "overlap=8"]




def naive_domain_contrast(z: torch.Tensor, d: torch.Tensor, margin: float) -> float:
    z = torch.nn.functional.normalize(z.detach().double(), dim=1)
    total, pairs = 0.0, 0
    for i in range(len(z)):
        for j in range(i + 1, len(z)):
            dist = float(torch.linalg.vector_norm(z[i] - z[j]))
            total += 0.5 * (dist ** 2 if d[i] == d[j] else max(0.0, margin - dist) ** 2)
            pairs += 1
    return total / pairs


def test_domain_contrast_matches_naive_loop() -> None:
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(9, 7, generator=gen, requires_grad=True)
    d = torch.tensor([0, 0, 1, 2, 1, 0, 2, 2, 1])
    for margin in (0.5, 1.0, 1.9):
        loss = domain_contrast_loss(z, d, margin)
        assert loss.item() == pytest.approx(naive_domain_contrast(z, d, margin), rel=1e-5)
    loss.backward()
    assert torch.isfinite(z.grad).all()
    same = torch.zeros(4, dtype=torch.long)
    assert domain_contrast_loss(torch.ones(4, 3), same).item() == pytest.approx(0.0, abs=1e-9)


def two_models(classes: tuple[int, int] = (2, 3)) -> tuple[MultiDomainModel, list[ModelSpec]]:
    torch.manual_seed(0)
    specs = [ModelSpec(arch="unet", encoder="resnet18", in_channels=4, classes=k)
             for k in classes]
    return MultiDomainModel([build_model(s) for s in specs]), specs


def test_domain_batch_norm_heads_and_export() -> None:
    model, specs = two_models()
    bns = [m for m in model.modules() if isinstance(m, DomainBatchNorm2d)]
    plain_bns = [m for m in build_model(specs[0]).modules()
                 if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == len(plain_bns) and all(len(b.bns) == 2 for b in bns)
    x = torch.randn(2, 4, 32, 32)
    model.train()
    assert model(x, 0).shape == (2, 2, 32, 32)
    assert model(x + 3, 1).shape == (2, 3, 32, 32)
    first = bns[0].bns  # each domain's statistics came from its own batches
    assert not torch.allclose(first[0].running_mean, first[1].running_mean)
    model.eval()
    for d, spec in enumerate(specs):
        plain = model.export(d, spec)
        torch.testing.assert_close(plain(x), model(x, d))
    with capture(model, ["decoder", "bottleneck"]) as feats:
        model(x, 1)
    assert feats["decoder"].shape == (2, 16, 32, 32) and feats["bottleneck"].shape[1] == 512


def test_regularizer_step_reaches_shared_encoder() -> None:
    model, _ = two_models()
    reg = get_regularizer("multidomain", model, SegInfo((2, 3), ("a", "b")), weight=1.0)
    parts = []
    for d in (0, 1):
        x = torch.randn(3, 4, 32, 32) + 2 * d
        with capture(model, reg.taps) as feats:
            logits = model(x, d)
        parts.append(SegPart(d, x, torch.zeros(3, 32, 32, dtype=torch.long), logits,
                             dict(feats)))
    loss, logs = reg(SegStep(parts))
    assert torch.isfinite(loss) and "loss_domain" in logs
    loss.backward()
    assert model.encoder.conv1.weight.grad.abs().sum() > 0


def test_needs_two_domains_and_an_encoder() -> None:
    with pytest.raises(ConfigError, match="but this run has one"):
        MultiDomain.check_data({"labels"})
    MultiDomain.check_data({"labels", "domains"})
    pixel = build_model(ModelSpec(arch="pixel", in_channels=4, classes=2))
    with pytest.raises(ConfigError, match="encoder-decoder"):
        MultiDomainModel([pixel, build_model(ModelSpec(arch="pixel", in_channels=4,
                                                       classes=3))])


def tile_folder(root: Path, classes: int, shift: int, seed: int) -> Path:
    """Six 48×48 4-band GeoTIFF tiles with masks of ``classes`` ids in vertical bands."""
    rng = np.random.default_rng(seed)
    for sub in ("images", "labels"):
        (root / sub).mkdir(parents=True)
    for i in range(6):
        ids = (np.arange(48)[None, :].repeat(48, 0) * classes // 48 + i) % classes
        pixels = (ids[None] * 300 + shift + rng.integers(0, 50, (4, 48, 48))).astype(np.uint16)
        profile = {"driver": "GTiff", "width": 48, "height": 48, "dtype": "uint16"}
        with rasterio.open(root / "images" / f"t{i}.tif", "w", count=4, **profile) as dst:
            dst.write(pixels)
        mask = np.full((48, 48), 255, dtype=np.uint8)
        mask[::3, ::3] = ids[::3, ::3]
        with rasterio.open(root / "labels" / f"t{i}.tif", "w", count=1,
                           **{**profile, "dtype": "uint8"}) as dst:
            dst.write(mask[None])
    return root


@pytest.fixture(scope="module")
def domains(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("domains")
    return (tile_folder(root / "city", 2, 100, 0), tile_folder(root / "coast", 3, 900, 1))


def test_finetune_two_domains_writes_one_bundle_each(domains: tuple[Path, Path],
                                                     tmp_path: Path, run_cli,
                                                     geotiff_factory) -> None:
    city, coast = domains
    sets = [a for item in TINY for a in ("--set", item)]
    run = tmp_path / "md"
    result = run_cli("finetune", "--tiles", city, "--tiles", coast, "--method", "multidomain",
                     "--method", "supcon", "--set", "regularizers.supcon.anchors_per_class=4",
                     "--out", run, *sets)
    assert result.exit_code == 0, result.stderr
    assert "model.coast.rsseg" in result.stdout
    first, second = read_meta(run / "model.rsseg"), read_meta(run / "model.coast.rsseg")
    assert first.domain == {"name": "city", "domains": ["city", "coast"],
                            "bundles": {"city": "model.rsseg", "coast": "model.coast.rsseg"}}
    assert second.domain["name"] == "coast"
    assert (first.model.classes, second.model.classes) == (2, 3)
    assert second.bands[0].mean > first.bands[0].mean  # each domain keeps its normalisation
    load_bundle(run / "model.coast.rsseg")  # an ordinary bundle
    header = (run / "metrics.csv").read_text().splitlines()[0]
    assert "loss_domain" in header and "val_oa_city" in header and "val_oa_coast" in header

    assert domain_bundle(run / "model.rsseg", "coast") == run / "model.coast.rsseg"
    assert domain_bundle(run / "model.rsseg", None) == run / "model.rsseg"
    with pytest.raises(InputError, match="its domains: city, coast"):
        domain_bundle(run / "model.rsseg", "desert")

    scene = geotiff_factory("scene.tif", np.full((4, 40, 40), 1200, dtype=np.uint16))
    out = tmp_path / "coast.tif"
    done = run_cli("predict", scene, "--model", run / "model.rsseg", "--domain", "coast",
                   "--out", out)
    assert done.exit_code == 0, done.stderr
    with rasterio.open(out) as src:
        assert set(np.unique(src.read(1))) <= {0, 1, 2}
        assert json.loads(src.tags()["CLASSES"])[-1]["id"] == 2  # the coast classes
    bad = run_cli("predict", scene, "--model", run / "model.rsseg", "--domain", "desert",
                  "--out", tmp_path / "x.tif")
    assert bad.exit_code == 1 and "its domains: city, coast" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_bad_domain_input_is_one_line(domains: tuple[Path, Path], tmp_path: Path,
                                      run_cli) -> None:
    city, coast = domains
    sets = [a for item in TINY for a in ("--set", item)]
    for args, message in (
            (["--tiles", city, "--method", "multidomain"], "has one"),
            (["--tiles", city, "--tiles", coast], "is the multidomain method"),
            (["--tiles", city, "--tiles", coast, "--method", "multidomain", "--set",
              "model.arch=pixel"], "encoder-decoder")):
        result = run_cli("finetune", *args, "--out", tmp_path / "run", *sets)
        assert result.exit_code in (1, 2), (args, result)
        assert message in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "run").exists()


def test_domains_config_section(domains: tuple[Path, Path]) -> None:
    city, coast = domains
    cfg = load_config(FinetuneConfig, CONFIGS / "finetune_multidomain_cpu.yaml", [
        f"domains=[{{name: a, tiles: {city}}}, {{name: b, tiles: {coast}}}]"])
    assert [d.name for d in cfg.domains] == ["a", "b"] and "multidomain" in cfg.regularizers
    with pytest.raises(ConfigError, match="domains"):
        load_config(FinetuneConfig, None, ["domains=[{name: 'a b', tiles: x}]"])


# --- the contract every registered fine-tuning regularizer keeps ------------------------------

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "nc_landsat"


def real_crops(items: int = 4, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """``items`` normalised 6-band crops of the NC Landsat scene and every 3rd pixel of its
    land-cover map as sparse labels (indexes 0..6, 255 elsewhere); synthetic without the data."""
    scene = SHARED / "landsat7_2000_6band_uint8.tif"
    classes = SHARED / "landclass96_labels_uint8.tif"
    if scene.is_file() and classes.is_file():
        from rasterio.windows import Window

        windows = [Window(60 + 90 * i, 80 + 70 * i, size, size) for i in range(items)]
        with rasterio.open(scene) as src:
            x = np.stack([src.read(window=w) for w in windows]).astype(np.float32)
        with rasterio.open(classes) as src:
            y = np.stack([src.read(1, window=w) for w in windows]).astype(np.int64)
        y = np.where(y == 255, 255, y - 1)
    else:
        rng = np.random.default_rng(0)
        y = rng.integers(0, 7, (items, size, size))
        x = (y[:, None] * 20 + rng.normal(0, 5, (items, 6, size, size))).astype(np.float32)
    x = (x - x.mean(axis=(0, 2, 3), keepdims=True)) / (x.std(axis=(0, 2, 3), keepdims=True) + 1e-6)
    sparse = np.full_like(y, 255)
    sparse[:, ::3, ::3] = y[:, ::3, ::3]
    return torch.from_numpy(x), torch.from_numpy(sparse)


@pytest.mark.parametrize("name", regularizer_names())
def test_regularizer_contract(name: str) -> None:
    """Builds from configs/finetune_<name>_cpu.yaml, finite loss, gradient to the encoder and
    every head, a few Adam steps lower the loss on a fixed batch (state held fixed)."""
    path = CONFIGS / f"finetune_{name}_cpu.yaml"
    assert path.is_file(), f"regularizer {name!r} has no {path.name} in configs/"
    cfg = load_config(FinetuneConfig, path)
    params = dict(cfg.regularizers[name])
    params.pop("bank_size", None)  # state such as a memory bank is not part of the contract
    x, y = real_crops()
    domains = 2 if "domains" in regularizer_class(name).needs else 1
    torch.manual_seed(0)
    specs = [ModelSpec(arch=cfg.model.arch, encoder=cfg.model.encoder, in_channels=6,
                       classes=7, kwargs=cfg.model.kwargs) for _ in range(domains)]
    model = build_model(specs[0]) if domains == 1 else MultiDomainModel(
        [build_model(s) for s in specs])
    reg = get_regularizer(name, model, SegInfo((7,) * domains, ("a", "b")[:domains]), **params)
    reg.check_data({"labels", "domains"} if domains > 1 else {"labels"})
    model.train()
    optimizer = torch.optim.Adam([*model.parameters(), *reg.parameters()], lr=1e-3)
    halves = [(0, slice(None))] if domains == 1 else [(0, slice(0, 2)), (1, slice(2, 4))]
    losses = []
    for step in range(4):
        torch.manual_seed(1)  # same anchors every step
        parts = []
        for d, rows in halves:
            with capture(model, reg.taps) as feats:
                logits = model(x[rows], d) if domains > 1 else model(x[rows])
            parts.append(SegPart(d, x[rows], y[rows], logits, dict(feats)))
        optimizer.zero_grad()
        loss, logs = reg(SegStep(parts))
        assert loss.ndim == 0 and torch.isfinite(loss), f"{name}: {loss}"
        assert all(torch.isfinite(v) and v.ndim == 0 for v in logs.values())
        loss.backward()
        if step == 0:
            assert model.encoder.conv1.weight.grad.abs().sum() > 0, f"{name}: no encoder grad"
            missing = [n for n, p in reg.named_parameters() if p.grad is None]
            assert not missing, f"{name}: no gradient for {missing}"
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], f"{name}: loss did not go down: {losses}"
