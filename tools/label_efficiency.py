"""Label-efficiency study: score against the number of labels, one curve per pretraining arm.

Every arm (random init, or a pretraining run: SimCLR, GLCNet at several budgets, ...) is
fine-tuned with exactly the same recipe (``configs/finetune_cpu.yaml`` unless ``--config``) on
exactly the same labels, drawn once per (setting, seed), and scored on held-out data; each arm is
also scored by a frozen-encoder linear probe on the same labels. Paired differences (arm − the
first arm, per seed) come with mean ± sd.

Datasets and label settings:

- ``dubai``: train on tiles 1–5, score on tile 6 (the development split). ``points:N``: N random
  labelled pixels per training image (uniform over its labelled pixels); ``images:F``: a
  fraction F of the training images, densely labelled.
- ``nc``: the bundled Landsat scene; ``pixels:F``: a fraction F of its 2,872 sparse labelled
  pixels; scored on the dense 1996 map (training pixels and nodata excluded).

Linear probe: the frozen (eval-mode) network's global feature map (ASPP output for DeepLabV3+,
deepest encoder stage otherwise) at the labelled pixels (bilinear), a linear classifier trained
with Adam on them (cross-entropy, 300 full-batch steps); test logits on the coarse map upsampled
bilinearly (a linear map commutes with bilinear upsampling).

    python tools/label_efficiency.py --dataset dubai --data DATA --arm random \\
        --arm simclr=runs/pre_simclr --arm glcnet=runs/pre_glcnet \\
        --settings points:5,points:20,points:100,images:0.05,images:0.2 --seeds 0,1,2 \\
        --out docs/label_efficiency_dubai

Each pretraining arm's method and length are read from its run folder (``config.yaml``'s pretext,
``metrics.csv``'s last step), so arms of one method at several budgets form a curve.

Fine-tuned models predict the test images with their own window (the training tile) unless
``--window auto``; ``--rescore`` scores finished runs again from their bundles in ``--work``
(e.g. with the other window) without training. ``--pair A:B`` adds paired differences between
two arms; ``--merge JSON`` adds the runs of a study split across processes.

Writes ``OUT.json`` (every run), ``OUT.md`` (tables) and ``OUT.png`` (mIoU against labels per
arm, full fine-tuning and linear probe; mIoU against pretraining steps per method), rewritten
after every run; ``--resume`` keeps finished
runs of ``OUT.json`` (same dataset) and runs the rest.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import shutil
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import torch
import torch.nn.functional as F
import yaml
from PIL import Image
from rasterio.windows import Window

from rsseg.classes import IGNORE
from rsseg.config import FinetuneConfig, load_config
from rsseg.errors import RssegError
from rsseg.io.raster import NoGeoreferencing, open_scene
from rsseg.labels import Tile, read_tile_labels, scan_tiles
from rsseg.metrics import ConfusionAccumulator
from rsseg.models.backbone import load_backbone, read_backbone
from rsseg.models.bundle import read_meta
from rsseg.models.factory import ModelSpec, build_model
from rsseg.pipelines.finetune import finetune
from rsseg.pipelines.predict import PredictOptions, predict_scene
from rsseg.pretexts.features import global_features

ROOT = Path(__file__).resolve().parents[1]
NC = ROOT / "rsseg" / "data" / "nc_landsat"


@dataclass(frozen=True)
class Labelled:
    """One training or test image: pixels path and dense (or sparse) label array."""

    path: Path
    labels: np.ndarray  # (H, W) uint8 class ids, IGNORE = unlabelled


class Study:
    """A dataset's training images (with all their labels) and its scorer."""

    def __init__(self, name: str, data: Path) -> None:
        self.name = name
        if name == "dubai":
            tiles = scan_tiles(data / "dubai")
            self.classes = ROOT / "configs" / "classes_dubai.yaml"
            self.train = [_tile(t) for t in tiles if not t.stem.startswith("tile6")]
            self.test = [_tile(t) for t in tiles if t.stem.startswith("tile6")]
            self.exclude = None
        else:
            scene = NC / "landsat7_2000_6band_uint8.tif"
            self.classes = NC / "classes_nc_landcover.yaml"
            sparse = _read(NC / "landsat96_sparse_training_pixels_uint8.tif")
            sparse = np.where(sparse == 0, IGNORE, sparse).astype(np.uint8)
            dense = _read(NC / "landclass96_labels_uint8.tif")
            self.train = [Labelled(scene, sparse)]
            self.test = [Labelled(scene, dense)]
            self.exclude = sparse != IGNORE  # training pixels are never scored

    def labels(self, setting: str, seed: int) -> list[Labelled]:
        """The training labels of ``setting`` drawn with ``seed`` (the same for every arm)."""
        kind, _, value = setting.partition(":")
        rng = np.random.default_rng(seed)
        if kind == "points" and self.name == "dubai":
            return [Labelled(im.path, _points(im.labels, int(value), rng)) for im in self.train]
        if kind == "images" and self.name == "dubai":
            count = max(1, round(float(value) * len(self.train)))
            picks = sorted(rng.choice(len(self.train), count, replace=False))
            return [self.train[i] for i in picks]
        if kind == "pixels" and self.name == "nc":
            im = self.train[0]
            labelled = np.flatnonzero(im.labels != IGNORE)
            keep = rng.choice(labelled, max(1, round(float(value) * labelled.size)),
                              replace=False)
            out = np.full(im.labels.shape, IGNORE, np.uint8)
            out.flat[keep] = im.labels.flat[keep]
            return [Labelled(im.path, out)]
        raise SystemExit(f"error: setting {setting!r} does not exist for {self.name} "
                         "(dubai: points:N, images:F; nc: pixels:F)")

    def write(self, labels: list[Labelled], folder: Path) -> dict:
        """Fine-tuning inputs of ``labels`` under ``folder`` → keyword arguments of finetune()."""
        shutil.rmtree(folder, ignore_errors=True)
        if self.name == "nc":
            folder.mkdir(parents=True)
            with rasterio.open(labels[0].path) as src:
                profile = src.profile | {"count": 1, "dtype": "uint8", "nodata": 0}
            path = folder / "labels.tif"
            with rasterio.open(path, "w", **profile) as dst:
                dst.write(np.where(labels[0].labels == IGNORE, 0, labels[0].labels)[None])
            return {"scenes": [labels[0].path], "labels": path, "classes_file": self.classes}
        for sub in ("images", "labels"):
            (folder / sub).mkdir(parents=True)
        for im in labels:
            (folder / "images" / im.path.name).symlink_to(im.path.resolve())
            Image.fromarray(im.labels).save(folder / "labels" / f"{im.path.stem}.png")
        return {"tiles": folder, "classes_file": self.classes}

    def score(self, predict: Callable[[Labelled], np.ndarray]) -> dict:
        """Scores of ``predict(image) → (H, W) class ids`` over the test images."""
        acc = ConfusionAccumulator(ignore=(IGNORE,))
        for im in self.test:
            valid = None if self.exclude is None else ~self.exclude
            acc.update(predict(im), im.labels, valid)
        s = acc.scores()
        return {"oa": s.oa, "kappa": s.kappa, "miou": s.miou,
                "iou": {str(c): _num(v) for c, v in zip(s.class_ids, s.iou, strict=True)}}


def _tile(tile: Tile) -> Labelled:
    return Labelled(tile.image, read_tile_labels(tile).labels.astype(np.uint8))


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


def _points(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` pixels drawn uniformly among the labelled ones; the rest IGNORE."""
    labelled = np.flatnonzero(labels != IGNORE)
    keep = rng.choice(labelled, min(n, labelled.size), replace=False)
    out = np.full(labels.shape, IGNORE, np.uint8)
    out.flat[keep] = labels.flat[keep]
    return out


def _num(value: float) -> float | None:
    return None if value is None or not math.isfinite(float(value)) else float(value)


def full_finetune(study: Study, inputs: dict, init: Path | None, config: FinetuneConfig,
                  out: Path, window: str = "bundle") -> dict:
    """Fine-tune with the recipe, then score the bundle (:func:`score_bundle`)."""
    return score_bundle(study, finetune(out, config, init=init, overwrite=True, **inputs),
                        window)


def score_bundle(study: Study, bundle: Path, window: str = "bundle") -> dict:
    """Predict every test image with ``bundle`` and score. ``window``: ``"bundle"`` predicts
    with the bundle's own window (its training tile: the study's protocol), ``"auto"`` with
    ``--tile auto``'s larger one — which changes what DeepLabV3+'s image-pooling branch sees,
    so the two are not interchangeable in a comparison."""
    tile = read_meta(bundle).tile if window == "bundle" else "auto"

    def predict(im: Labelled) -> np.ndarray:
        pred = bundle.parent / f"pred_{im.path.stem}.tif"
        predict_scene(im.path, bundle, pred,
                      PredictOptions(overwrite=True, device="cpu", tile=tile))
        return _read(pred)

    return study.score(predict)


def linear_probe(study: Study, labels: list[Labelled], init: Path | None,
                 config: FinetuneConfig, seed: int, steps: int = 300) -> dict:
    """Frozen global features at the labelled pixels → a linear classifier → test scores."""
    torch.manual_seed(seed)
    bands = _band_count(study.train[0].path)
    spec = ModelSpec(arch=config.model.arch, encoder=config.model.encoder, in_channels=bands,
                     classes=1, kwargs=config.model.kwargs)
    model = build_model(spec)
    mean, std = _stats([im.path for im in study.train])
    if init is not None:  # the normalisation the backbone was pretrained with
        meta = load_backbone(model, spec, init)
        mean = np.array([b.mean for b in meta.bands], dtype=np.float32)
        std = np.array([b.std for b in meta.bands], dtype=np.float32)
    model.eval()
    feats, targets = [], []
    for im in labels:
        rows, cols = np.nonzero(im.labels != IGNORE)
        coarse, shape = _features(model, im.path, mean, std)
        feats.append(_sample(coarse, shape, rows, cols))
        targets.append(torch.from_numpy(im.labels[rows, cols].astype(np.int64)))
    x, y = torch.cat(feats), torch.cat(targets)
    mu, sigma = x.mean(0), x.std(0).clamp(min=1e-6)
    classes = int(max(int(y.max()), *(int(im.labels[im.labels != IGNORE].max(initial=0))
                                       for im in study.test))) + 1
    head = torch.nn.Linear(x.shape[1], classes)
    opt = torch.optim.Adam(head.parameters(), lr=1e-2, weight_decay=1e-4)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(head((x - mu) / sigma), y).backward()
        opt.step()

    def predict(im: Labelled) -> np.ndarray:
        coarse, shape = _features(model, im.path, mean, std)
        with torch.no_grad():
            logits = torch.einsum("chw,kc->khw", (coarse - mu[:, None, None]) /
                                  sigma[:, None, None], head.weight) + head.bias[:, None, None]
            up = F.interpolate(logits[None], size=shape, mode="bilinear", align_corners=False)
        return up[0].argmax(0).numpy().astype(np.uint8)

    return study.score(predict)


def _band_count(path: Path) -> int:
    with rasterio.open(path) as src:
        return src.count


def _stats(paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    pixels = np.concatenate([_pixels(p).reshape(_band_count(p), -1) for p in paths], axis=1)
    return pixels.mean(axis=1), pixels.std(axis=1).clip(min=1e-6)


def _pixels(path: Path) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoGeoreferencing)
        with open_scene(path) as scene:
            window = Window(0, 0, scene.info.width, scene.info.height)
            return scene.read(window).astype(np.float32)


def _features(model: torch.nn.Module, path: Path, mean: np.ndarray, std: np.ndarray
              ) -> tuple[torch.Tensor, tuple[int, int]]:
    """The global feature map ``(C, h, w)`` of a whole image (padded to a multiple of 32)."""
    x = (_pixels(path) - mean[:, None, None]) / std[:, None, None]
    h, w = x.shape[1:]
    ph, pw = -h % 32, -w % 32
    x = np.pad(x, ((0, 0), (0, ph), (0, pw)), mode="reflect")
    with torch.no_grad():
        coarse = global_features(model, torch.from_numpy(np.ascontiguousarray(x))[None])[0]
    # crop the padding's share of the coarse map, so coarse pixels map onto (h, w)
    ch = round(coarse.shape[1] * h / (h + ph))
    cw = round(coarse.shape[2] * w / (w + pw))
    return coarse[:, :ch, :cw], (h, w)


def _sample(coarse: torch.Tensor, shape: tuple[int, int], rows: np.ndarray,
            cols: np.ndarray) -> torch.Tensor:
    """Bilinear samples ``(N, C)`` of ``coarse`` at full-resolution pixel centres."""
    h, w = shape
    gx = torch.from_numpy((cols + 0.5) / w * 2 - 1).float()
    gy = torch.from_numpy((rows + 0.5) / h * 2 - 1).float()
    grid = torch.stack([gx, gy], dim=1)[None, None]  # (1, 1, N, 2)
    out = F.grid_sample(coarse[None], grid, mode="bilinear", align_corners=False)
    return out[0, :, 0].T


def pretraining(run: Path | None, decoder: bool = False) -> dict:
    """``{"method": pretext name, "steps": optimizer steps, "seed": trainer seed}`` of a
    pretraining run folder (``{"method": "random", "steps": 0}`` for random init); the method is
    ``NAME+decoder`` when fine-tuning loads the decoder the run trained (``init_decoder``)."""
    if run is None:
        return {"method": "random", "steps": 0}
    config = yaml.safe_load((run / "config.yaml").read_text())
    with (run / "metrics.csv").open() as f:
        steps = [int(row["step"]) for row in csv.DictReader(f) if row.get("step")]
    suffix = "+decoder" if decoder and read_backbone(run)[1].decoder else ""
    return {"method": config["pretext"]["name"] + suffix, "steps": max(steps) + 1 if steps else 0,
            "seed": int((config.get("trainer") or {}).get("seed", 0))}


def _order(method: str) -> tuple[str, bool]:
    """Sort key of methods: by name, ``NAME+decoder`` before ``NAME``."""
    return method.removesuffix("+decoder"), not method.endswith("+decoder")


def paired_deltas(runs: list[dict], protocol: str, setting: str, arm: str,
                  base: str) -> list[float]:
    """mIoU points of ``arm`` − ``base`` per fine-tuning seed both ran (same labels), in seed
    order (merged result files may hold the runs in any order)."""
    def scores(name: str) -> dict[int, float]:
        return {r["seed"]: r["miou"] for r in runs if "error" not in r and
                (r["protocol"], r["setting"], r["arm"]) == (protocol, setting, name)}
    theirs = scores(base)
    return [100 * (m - theirs[seed]) for seed, m in sorted(scores(arm).items())
            if seed in theirs]


def summarise(runs: list[dict], arms: list[str]) -> list[dict]:
    """Per (protocol, setting, arm): mean ± sd of each score, and paired Δ vs the first arm."""
    rows = []
    for protocol in ("finetune", "probe"):
        for setting in dict.fromkeys(r["setting"] for r in runs):
            for arm in arms:
                mine = [r for r in runs if (r["protocol"], r["setting"], r["arm"]) ==
                        (protocol, setting, arm) and "error" not in r]
                if not mine:
                    continue
                row = {"protocol": protocol, "setting": setting, "arm": arm, "runs": len(mine)}
                for key in ("miou", "kappa", "oa"):
                    row[key] = _mean_sd([r[key] for r in mine])
                deltas = [] if arm == arms[0] else \
                    paired_deltas(runs, protocol, setting, arm, arms[0])
                row["delta_miou_points"] = _mean_sd(deltas) if arm != arms[0] else None
                row["delta_per_seed"] = [round(d, 2) for d in deltas]
                rows.append(row)
    return rows


def summarise_pairs(runs: list[dict], pairs: list[tuple[str, str]]) -> list[dict]:
    """Per (protocol, setting, pair A − B) with runs of both: paired Δ mIoU per seed, mean ± sd."""
    rows = []
    for protocol in ("finetune", "probe"):
        for setting in dict.fromkeys(r["setting"] for r in runs):
            for arm, base in pairs:
                deltas = paired_deltas(runs, protocol, setting, arm, base)
                if deltas:
                    rows.append({"protocol": protocol, "setting": setting, "arm": arm,
                                 "base": base, "delta_miou_points": _mean_sd(deltas),
                                 "delta_per_seed": [round(d, 2) for d in deltas]})
    return rows


def summarise_methods(runs: list[dict], info: dict[str, dict]) -> list[dict]:
    """Per (protocol, setting, method A − method B, pretraining steps): the paired differences of
    every pretraining seed both methods ran (each against the other's run of the same seed and
    steps; against random init, every run of A), pooled over seeds and fine-tuning seeds:
    mean ± sd, and how many are at least 0, +2 and +5 points. Two pretraining methods are
    compared in the order of their names (``glcnet − simclr``), a method with its pretrained
    decoder before the same without (``glcnet+decoder − glcnet``)."""
    runs_of: dict[tuple[str, int], dict[int, str]] = {}
    for arm, pre in info.items():
        runs_of.setdefault((pre["method"], pre["steps"]), {})[pre.get("seed", 0)] = arm
    random_arms = [arm for arm, pre in info.items() if pre["method"] == "random"]
    comparisons = []
    for (method, steps), seeds in runs_of.items():
        if method == "random":
            continue
        comparisons += [(method, "random", steps, [(a, base) for a in seeds.values()])
                        for base in random_arms]
        for (other, other_steps), other_seeds in runs_of.items():
            if (other_steps == steps and other not in ("random", method)
                    and _order(method) < _order(other)):
                comparisons.append((method, other, steps, [(seeds[k], other_seeds[k])
                                                           for k in seeds if k in other_seeds]))
    rows = []
    for protocol in ("finetune", "probe"):
        for setting in dict.fromkeys(r["setting"] for r in runs):
            for method, base, steps, pairs in comparisons:
                per_run = [d for d in (paired_deltas(runs, protocol, setting, a, b)
                                       for a, b in pairs) if d]
                deltas = [d for run in per_run for d in run]
                if len(per_run) > 1:  # one run: the arm tables show it
                    rows.append({"protocol": protocol, "setting": setting, "method": method,
                                 "base": base, "steps": steps, "runs": len(per_run),
                                 "delta_miou_points": _mean_sd(deltas), "n": len(deltas),
                                 "at_least": {str(t): sum(d >= t for d in deltas)
                                              for t in (0, 2, 5)}})
    return rows


def _mean_sd(values: list[float]) -> list[float] | None:
    if not values:
        return None
    return [float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0]


def write_outputs(results: dict, out: Path) -> None:
    """``OUT.json``, ``OUT.md`` and ``OUT.png``."""
    results["summary"] = summarise(results["runs"], results["arms"])
    results["pair_summary"] = summarise_pairs(results["runs"],
                                              [tuple(p) for p in results.get("pairs", [])])
    results["method_summary"] = summarise_methods(results["runs"], results["pretraining"])
    out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    lines = [f"# Label efficiency — {results['dataset']}", "", results["notes"], "",
             "| protocol | labels | arm | pretraining steps | pretraining seed | runs | mIoU | "
             f"Kappa | OA | Δ mIoU vs {results['arms'][0]} (points) | Δ per seed |",
             "|---" * 11 + "|"]
    info = results["pretraining"]

    def delta(r: dict) -> str:
        d = r["delta_miou_points"]
        return "—" if d is None else f"{d[0]:+.1f} ± {d[1]:.1f}"

    def per_seed(r: dict) -> str:
        return ", ".join(f"{d:+.1f}" for d in r["delta_per_seed"])

    for r in results["summary"]:
        def fmt(v: list[float] | None, scale: float = 1.0) -> str:
            return "—" if v is None else f"{scale * v[0]:.3f} ± {scale * v[1]:.3f}"
        lines.append(f"| {r['protocol']} | {r['setting']} | {r['arm']} | "
                     f"{info[r['arm']]['steps']} | {info[r['arm']].get('seed', '—')} | "
                     f"{r['runs']} | {fmt(r['miou'])} | {fmt(r['kappa'])} | {fmt(r['oa'])} | "
                     f"{delta(r)} | {per_seed(r)} |")
    if results["pair_summary"]:
        lines += ["", "Paired differences between arms (same labels, same fine-tuning seed):",
                  "", "| protocol | labels | arm − arm | Δ mIoU (points) | Δ per seed |",
                  "|---" * 5 + "|"]
        lines += [f"| {r['protocol']} | {r['setting']} | {r['arm']} − {r['base']} | "
                  f"{delta(r)} | {per_seed(r)} |" for r in results["pair_summary"]]
    if results["method_summary"]:
        lines += ["", "Methods, pooled over their pretraining seeds (each pair: same pretraining "
                  "steps and seed, same labels, same fine-tuning seed):", "",
                  "| protocol | labels | method − method | pretraining steps | pretraining runs "
                  "| Δ mIoU (points) | pairs ≥ 0 / ≥ +2 / ≥ +5 |", "|---" * 7 + "|"]
        lines += [f"| {r['protocol']} | {r['setting']} | {r['method']} − {r['base']} | "
                  f"{r['steps']} | {r['runs']} | {delta(r)} | "
                  f"{' / '.join(str(v) for v in r['at_least'].values())} of {r['n']} |"
                  for r in results["method_summary"]]
    errors = [r for r in results["runs"] if "error" in r]
    lines += ["", *(f"- error: {r['arm']} {r['setting']} seed {r['seed']}: {r['error']}"
                    for r in errors)]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    _plot(results, out.with_suffix(".png"))


def _plot(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2), sharey=True)
    settings = sorted(dict.fromkeys(r["setting"] for r in results["summary"]),
                      key=lambda s: (s.partition(":")[0], float(s.partition(":")[2])))
    palette = plt.get_cmap("tab10" if len(results["arms"]) <= 10 else "tab20")
    colors = {arm: palette(i % palette.N) for i, arm in enumerate(results["arms"])}  # every panel
    for ax, protocol in zip(axes, ("finetune", "probe"), strict=False):
        for arm in results["arms"]:
            rows = {r["setting"]: r for r in results["summary"]
                    if r["protocol"] == protocol and r["arm"] == arm and r["miou"]}
            xs = [i for i, s in enumerate(settings) if s in rows]
            if xs:
                means = [100 * rows[settings[i]]["miou"][0] for i in xs]
                sds = [100 * rows[settings[i]]["miou"][1] for i in xs]
                ax.errorbar(xs, means, yerr=sds, marker="o", capsize=3, label=arm,
                            color=colors[arm])
        ax.set_xticks(range(len(settings)), settings, rotation=20)
        title = "full fine-tuning" if protocol == "finetune" else "linear probe (frozen)"
        ax.set_title(f"{results['dataset']}: {title}")
        ax.set_xlabel("labels")
    arms_at = {s: sum(r["setting"] == s for r in results["summary"]) for s in settings}
    _plot_budget(results, max(settings, key=arms_at.get) if settings else "", axes[2], colors)
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mIoU (%) on the test pixels, mean ± sd over seeds")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_budget(results: dict, setting: str, ax, colors: dict[str, tuple]) -> None:
    """Full fine-tuning mIoU at ``setting`` against pretraining steps, one curve per method
    and pretraining seed, in the colour of its first arm (random init is every method's step
    0)."""
    info = results["pretraining"]
    rows = {r["arm"]: r for r in results["summary"]
            if r["protocol"] == "finetune" and r["setting"] == setting and r["miou"]}
    start = [(0, rows[a]["miou"]) for a in rows if info[a]["method"] == "random"]
    curves = dict.fromkeys((info[a]["method"], info[a].get("seed", 0)) for a in rows)
    for method, seed in curves:
        if method == "random":
            continue
        arms = [a for a in rows if (info[a]["method"], info[a].get("seed", 0)) == (method, seed)]
        points = sorted(start + [(info[a]["steps"], rows[a]["miou"]) for a in arms])
        ax.errorbar([s for s, _ in points], [100 * m[0] for _, m in points],
                    yerr=[100 * m[1] for _, m in points], marker="o", capsize=3,
                    label=f"{method} (pretraining seed {seed})", color=colors[arms[0]])
    ax.set_title(f"{results['dataset']}: full fine-tuning at {setting}")
    ax.set_xlabel("pretraining steps (0 = random init)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend()


def merge_results(results: dict, other: dict, source: Path) -> None:
    """Add ``other``'s finished runs (those ``results`` lacks), arms and pretraining info."""
    if other["dataset"] != results["dataset"]:
        raise SystemExit(f"error: {source} is a {other['dataset']} study, not "
                         f"{results['dataset']}")
    have = {(r["protocol"], r["setting"], r["arm"], r["seed"]) for r in results["runs"]}
    results["runs"] += [r for r in other["runs"] if "error" not in r and
                        (r["protocol"], r["setting"], r["arm"], r["seed"]) not in have]
    results["arms"] = list(dict.fromkeys([*results["arms"], *other["arms"]]))  # baseline kept
    results["arm_runs"] = other["arm_runs"] | results["arm_runs"]
    results["pretraining"] = other.get("pretraining", {}) | results["pretraining"]
    results["pretraining"] |= {k: pretraining(Path(results["arm_runs"][k])
                                              if results["arm_runs"][k] else None)
                               for k in results["arms"] if k not in results["pretraining"]}
    results["pairs"] = [list(p) for p in dict.fromkeys(
        tuple(p) for p in [*other.get("pairs", []), *results.get("pairs", [])])]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=("dubai", "nc"), required=True)
    parser.add_argument("--arm", action="append", required=True,
                        help="'random' or NAME=PRETRAINING_RUN; the first arm is the baseline")
    parser.add_argument("--settings", required=True, help="comma-separated, e.g. points:20")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--protocols", default="finetune,probe")
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "finetune_cpu.yaml")
    parser.add_argument("--set", dest="sets", action="append", default=[])
    parser.add_argument("--data", type=Path, help="the folder holding dubai/ (--dataset dubai)")
    parser.add_argument("--work", type=Path, default=Path("label_efficiency_work"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--pair", action="append", default=[], metavar="A:B",
                        help="also report the paired difference arm A − arm B, e.g. "
                             "glcnet:simclr (repeatable)")
    parser.add_argument("--window", choices=("bundle", "auto"), default="bundle",
                        help="prediction window of the fine-tuned models: the bundle's "
                             "training tile (default, every run alike) or --tile auto")
    parser.add_argument("--rescore", action="store_true",
                        help="score the finished fine-tuning runs again from their bundles in "
                             "--work with --window (no training), then run the rest")
    parser.add_argument("--merge", action="append", default=[], type=Path, metavar="JSON",
                        help="add the finished runs of another result file of the same "
                             "dataset (a study split across processes); repeatable")
    args = parser.parse_args(argv)

    arms: dict[str, Path | None] = {}
    for item in args.arm:
        name, _, run = item.partition("=")
        if run and not (Path(run) / "backbone.safetensors").is_file():
            raise SystemExit(f"error: arm {name}: {run} has no backbone.safetensors")
        arms[name] = Path(run) if run else None
    if args.dataset == "dubai" and (args.data is None or not (args.data / "dubai").is_dir()):
        raise SystemExit("error: --dataset dubai needs --data DIR, the folder holding dubai/"
                         + (f" ({args.data / 'dubai'} not found)" if args.data else ""))
    study = Study(args.dataset, args.data)
    settings = args.settings.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    protocols = args.protocols.split(",")
    for setting in settings:  # refuse settings that do not exist, before any work
        try:
            study.labels(setting, 0)
        except ValueError:
            raise SystemExit(f"error: setting {setting!r}: not a number after the colon "
                             "(e.g. points:20, images:0.2, pixels:0.25)") from None
    try:
        config = load_config(FinetuneConfig, args.config,
                             ["data.val_fraction=0", "trainer.accelerator=cpu", *args.sets])
    except RssegError as err:
        raise SystemExit(f"error: {err}") from None
    results = {"dataset": args.dataset, "arms": list(arms), "runs": [],
               "config": config.model_dump(mode="json"),
               "arm_runs": {k: str(v) if v else None for k, v in arms.items()},
               "pretraining": {k: pretraining(v, config.init_decoder) for k, v in arms.items()},
               "notes": ("dubai: train tiles 1–5 (45 images), test tile 6 (9 images)"
                         if args.dataset == "dubai" else
                         "nc: sparse pixels of the bundled scene; test: the dense 1996 map, "
                         "training pixels and nodata excluded") +
                        "; every arm fine-tunes with the same recipe on the same labels per "
                        "seed; no validation split (the last / EMA weights are kept)."}
    out = args.out
    previous_files = [out.with_suffix(".json")] if args.resume else []
    for path in [*previous_files, *args.merge]:
        if path.is_file():
            merge_results(results, json.loads(path.read_text()), path)
        elif path in args.merge:
            raise SystemExit(f"error: --merge {path}: no such result file")
    for item in args.pair:
        pair = item.split(":")
        if len(pair) != 2 or not set(pair) <= set(results["arms"]):
            raise SystemExit(f"error: --pair {item!r}: give two arms as A:B, among "
                             f"{', '.join(results['arms'])}")
        if pair not in results.setdefault("pairs", []):
            results["pairs"].append(pair)
    for record in results["runs"] if args.rescore else []:
        bundle = args.work / (f"ft_{record['arm']}_{record['setting'].replace(':', '_')}_"
                              f"{record['seed']}") / "model.rsseg"
        if record["protocol"] == "finetune" and bundle.is_file():
            print(f"rescore {record['arm']} {record['setting']} seed {record['seed']}",
                  flush=True)
            record.update(score_bundle(study, bundle, args.window), window=args.window)
    done = {(r["protocol"], r["setting"], r["arm"], r["seed"]) for r in results["runs"]}
    out.parent.mkdir(parents=True, exist_ok=True)
    warnings.simplefilter("ignore", NoGeoreferencing)
    for setting in settings:
        for seed in seeds:
            labels = study.labels(setting, seed)
            folder = args.work / f"labels_{setting.replace(':', '_')}_{seed}"
            inputs = study.write(labels, folder)
            for arm, init in arms.items():
                for protocol in protocols:
                    if (protocol, setting, arm, seed) in done:
                        continue
                    print(f"{protocol} {arm} {setting} seed {seed}", flush=True)
                    start = time.perf_counter()
                    record: dict = {"protocol": protocol, "setting": setting, "arm": arm,
                                    "seed": seed}
                    try:
                        if protocol == "finetune":
                            cfg = config.model_copy(deep=True)
                            cfg.trainer.seed = seed
                            run = args.work / f"ft_{arm}_{setting.replace(':', '_')}_{seed}"
                            record.update(full_finetune(study, inputs, init, cfg, run,
                                                        args.window), window=args.window)
                        else:
                            record.update(linear_probe(study, labels, init, config, seed))
                    except (RssegError, RuntimeError, ValueError) as err:
                        record["error"] = f"{type(err).__name__}: {str(err).splitlines()[0]}"
                    record["seconds"] = round(time.perf_counter() - start, 1)
                    print(f"  -> mIoU {record.get('miou', float('nan')):.3f} "
                          f"({record['seconds']} s)", flush=True)
                    results["runs"].append(record)
                    write_outputs(results, out)
    write_outputs(results, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
