"""Compare every registered method on real data under one budget.

For one dataset (``nc``: the NC Landsat scene, trained on the sparse pixels of its left half and
scored against the dense 1996 map on its right half; ``dubai``: the Dubai tiles split by tile
group, a fraction of the training tiles labelled):

1. every pretext of the registry pretrains once on the same unlabelled tiles (all imagery) under
   the same budget (its ``configs/pretrain_<name>_cpu.yaml`` with the budget's sizes);
2. each pretrained backbone, and random init, fine-tunes with the same sparse labels, model and
   budget for every seed;
3. fine-tuning methods run from random init: ``supcon`` (CE + w·L_supcon), ``supcon-2stage``
   (SupCon first, then an imbalance-aware classifier stage: class-balanced CE); ``dcc`` fine-tunes
   on a DCC condensed set, ``random-subset`` on as many real crops chosen at random,
   ``dcc-real`` on a DCC set whose tiles keep the real label maps of the crops they start
   from (``labels=real``): it starts from exactly the random subset, so it measures what the
   gradient matching itself adds;
4. every model predicts the held-out data, scored in one confusion matrix (OA, Kappa, mIoU,
   per-class IoU; the rarest reference class's IoU shown apart).

Writes ``OUT.json`` (budget, every run, summaries) and ``OUT.md`` (one row per method: mean ± std
over seeds, wall time = pretraining + mean fine-tuning, and the final effective rank of the
pretraining embeddings, global / local). A method that fails (e.g. a band it needs is missing)
is reported with its error and the rest go on.

    python tools/compare_methods.py --dataset nc --out docs/methods_nc --seeds 0,1,2
    python tools/compare_methods.py --dataset dubai --out docs/methods_dubai --seeds 0,1,2
    python tools/compare_methods.py --dataset nc --out /tmp/smoke --budget tiny \\
        --methods simclr,random,supcon,dcc,random-subset --seeds 0

Budgets (``--budget``): ``cpu`` (about an hour per dataset and seed), ``cpu-small`` (the one of
docs/methods_comparison.md: ~30 min per dataset for a few rows and 2 seeds on a busy 2-core
machine), ``tiny`` (smoke test). ``--methods glcnet+claws`` compares a combined pretext
(``rsseg pretrain --method glcnet --method claws``). OUT.json/OUT.md are rewritten after every
run; ``--resume --work DIR`` continues an interrupted comparison (finished runs and pretrained
backbones are kept), also with more seeds or methods.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import shutil
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

from rsseg.classes import IGNORE
from rsseg.config import FinetuneConfig, PretrainConfig, load_config
from rsseg.errors import RssegError, Stopped, stop_signals_raise
from rsseg.io.raster import open_scene
from rsseg.labels import read_tile_labels, scan_tiles
from rsseg.metrics import ConfusionAccumulator
from rsseg.pipelines.condense import condense
from rsseg.pipelines.finetune import finetune
from rsseg.pipelines.predict import PredictOptions, predict_scene
from rsseg.pipelines.pretrain import pretrain
from rsseg.pipelines.tile import TileOptions, tile_scenes
from rsseg.pretexts.base import pretext_names
from rsseg.pretexts.compose import compose_pretext
from rsseg.regularizers.dcc import DCCConfig

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
BASELINES = ("random", "supcon", "supcon-2stage", "dcc", "dcc-real", "random-subset")

# Budgets: the same for every method. "cpu" is sized for a 2-core machine (about an hour per
# dataset and seed); "tiny" only checks that the tool runs end to end.
BUDGETS: dict[str, dict] = {
    "tiny": {
        "tile": 64, "patch": 8,
        "pretrain": ["data.view_size=32", "data.diagnostic_samples=8", "trainer.epochs=1",
                     "trainer.batch_size=4", "trainer.steps_per_epoch=2",
                     "trainer.num_workers=0"],
        "finetune": ["data.crop_size=32", "trainer.epochs=1", "trainer.steps_per_epoch=2",
                     "trainer.batch_size=4", "data.val_fraction=0", "tile=256",
                     "overlap=32"],
        "supcon": ["regularizers.supcon.anchors_per_class=16"],
        "dcc": ["per_class=2", "size=32", "iterations=2", "batch_real=8", "real_pool=16",
                "net_width=8", "inner_loop=2", "net_steps=1", "outer_warmup=1"],
    },
    "cpu": {
        "tile": 128, "patch": 24,
        "pretrain": ["data.view_size=96", "data.diagnostic_samples=64", "trainer.epochs=4",
                     "trainer.batch_size=8", "trainer.num_workers=0"],
        "finetune": ["data.crop_size=64", "trainer.epochs=8", "trainer.steps_per_epoch=25",
                     "trainer.batch_size=8", "optim.lr=0.001", "optim.schedule=cosine",
                     "optim.min_lr=1.0e-5", "tile=128", "overlap=32"],
        "supcon": ["regularizers.supcon.anchors_per_class=64",
                   "regularizers.supcon.bank_size=256"],
        "dcc": ["per_class=10", "size=64", "iterations=200", "outer_warmup=50",
                "batch_real=64", "real_pool=256", "net_width=64"],
    },
    # The demo's shallow U-Net (3 encoder stages; GLCNet's global branch on its deepest stage)
    # for pretraining and fine-tuning alike, 64 px views/crops, 24 pretraining steps of 8 tiles
    # and 40 fine-tuning steps of 8 crops per run; NC tiled like the demo (64 px, stride 32).
    # Measured on a 2-core machine shared with other jobs (load 3-7): pretraining 0.5-3 min per
    # pretext (adversarial ~9), fine-tuning + scoring 1-2 min per run (docs/methods_comparison.md).
    "cpu-small": {
        "tile": 128, "patch": 16, "tiling": {"nc": [64, 32], "dubai": [128, 128]},
        "model": ["model.arch=unet", "model.encoder=resnet18",
                  'model.kwargs={"encoder_depth": 3, "decoder_channels": [64, 32, 16]}'],
        "pretrain": ["data.view_size=64", "data.diagnostic_samples=32", "trainer.epochs=3",
                     "trainer.batch_size=8", "trainer.steps_per_epoch=8",
                     "trainer.num_workers=0", "optim.min_lr=1.0e-5"],
        "finetune": ["data.crop_size=64", "trainer.epochs=4", "trainer.steps_per_epoch=10",
                     "trainer.batch_size=8", "optim.lr=0.001", "optim.schedule=cosine",
                     "optim.min_lr=1.0e-5", "optim.weight_decay=1.0e-4", "tile=128",
                     "overlap=32"],
        "supcon": ["regularizers.supcon.anchors_per_class=32",
                   "regularizers.supcon.bank_size=128"],
        # DC's loops for 10 per class (10 matching steps × 50 network steps per iteration)
        # take hours here, so 4 matching × 4 network epochs. One outer iteration on NC (7
        # classes: 70 synthetic 64 px tiles, 16 real crops per class per matching step) took
        # 17-26 s on the quiet 2-core machine before the condense speed-ups (chunked passes, no
        # second-order parameter gradients) and 10-11 s after (DC warm-up iterations 16 → 11
        # s); 30-60 s while the machine is busy. 20 iterations would still be 4-20 min per
        # condense, longer than the rest of a seed, so 10 iterations, the first 3 DC warm-up
        # (DCC's 1/4 ratio, rounded up): ~2-10 min per condense. Far below DCC's 1000
        # iterations: the rows measure this small budget, not the paper's.
        "dcc": ["per_class=10", "size=64", "iterations=10", "outer_warmup=3", "inner_loop=4",
                "net_steps=4", "batch_real=16", "batch_train=64", "real_pool=64",
                "net_width=32"],
    },
}


@dataclass
class Dataset:
    """What every method trains and is scored on."""

    name: str
    unlabelled: list[Path]  # images to tile for pretraining
    finetune_args: dict  # keyword arguments of finetune()/condense() for the labels
    finetune_sets: list[str]  # dataset-specific config overrides
    score: Callable[[Path, Path], dict]  # (bundle, work folder) → scores
    pretext_sets: dict[str, list[str]] = field(default_factory=dict)
    notes: str = ""


def nc_dataset(data: Path, work: Path) -> Dataset:
    """NC Landsat: sparse pixels of the left half train, the dense map's right half scores."""
    folder = data / "nc_landsat"
    scene = folder / "landsat7_2000_6band_uint8.tif"
    with rasterio.open(folder / "landsat96_sparse_training_pixels_uint8.tif") as src:
        sparse, profile = src.read(1), src.profile
    split = sparse.shape[1] // 2
    sparse[:, split:] = 0
    train_labels = work / "nc_train_labels.tif"
    with rasterio.open(train_labels, "w", **profile) as dst:
        dst.write(sparse[None])

    def score(bundle: Path, tmp: Path) -> dict:
        pred = tmp / "pred.tif"
        predict_scene(scene, bundle, pred, PredictOptions(overwrite=True, device="cpu"))
        with rasterio.open(pred) as p, rasterio.open(folder / "landclass96_labels_uint8.tif") as r:
            predicted, reference = p.read(1), r.read(1)
        acc = ConfusionAccumulator(ignore=(IGNORE,))
        acc.update(predicted[:, split:], reference[:, split:])
        return _scores(acc)

    return Dataset(
        "nc", [scene],
        {"scenes": [scene], "labels": train_labels,
         "classes_file": ROOT / "rsseg/data/nc_landsat/classes_nc_landcover.yaml"},
        ["data.val_block=16"], score,
        notes=f"train: {int((sparse > 0).sum())} sparse pixels of columns < {split}; test: the "
              f"1996 map on columns >= {split} (nodata excluded)")


def dubai_dataset(data: Path, work: Path, test_groups: tuple[str, ...],
                  label_fraction: float) -> Dataset:
    """Dubai tiles: train on a fraction of the labelled tiles outside ``test_groups``."""
    tiles = scan_tiles(data / "dubai")
    test = [t for t in tiles if t.stem.startswith(test_groups)]
    train = [t for t in tiles if not t.stem.startswith(test_groups)]
    folder = work / "dubai_train"
    shutil.rmtree(folder, ignore_errors=True)  # (a resumed comparison re-links)
    for sub in ("images", "labels"):
        (folder / sub).mkdir(parents=True)
    for t in train:
        (folder / "images" / t.image.name).symlink_to(t.image.resolve())
        if t.mask is not None:
            (folder / "labels" / t.mask.name).symlink_to(t.mask.resolve())

    def score(bundle: Path, tmp: Path) -> dict:
        acc = ConfusionAccumulator(ignore=(IGNORE,))
        for t in test:
            pred = tmp / f"{t.stem}.tif"
            predict_scene(t.image, bundle, pred, PredictOptions(overwrite=True, device="cpu"))
            with open_scene(pred) as p:
                predicted = p.read(Window(0, 0, p.info.width, p.info.height))[0]
            acc.update(predicted, read_tile_labels(t).labels)
        return _scores(acc)

    return Dataset(
        "dubai", [t.image for t in tiles],
        {"tiles": folder, "classes_file": CONFIGS / "classes_dubai.yaml"},
        # No validation split: at 5% the labelled images are a handful (2 of 45), and holding
        # one out would halve the labels (or fail when they share a tile group).
        # Predicted in 256 px windows (the images are 644×797; fewer, larger windows).
        [f"data.label_fraction={label_fraction}", "data.group=tile\\d+",
         "data.val_fraction=0", "tile=256"], score,
        pretext_sets={"claws": ["pretext.params.mask=none"]},  # RGB: no NIR for NDVI
        notes=f"train: {label_fraction:.0%} of the labelled tiles of {len(train)} images outside "
              f"{', '.join(test_groups)} (chosen per seed; no validation split, the last "
              f"weights are kept); test: {len(test)} images of {', '.join(test_groups)}")


def _scores(acc: ConfusionAccumulator) -> dict:
    s = acc.scores()
    reference = s.confusion.sum(axis=1)
    present = [k for k in range(len(s.class_ids)) if reference[k] > 0]
    rare = min(present, key=lambda k: reference[k]) if present else None
    share = reference / max(float(reference.sum()), 1.0)
    return {"oa": s.oa, "kappa": s.kappa, "miou": s.miou, "pixels": s.pixels,
            "iou": {str(i): _num(v) for i, v in zip(s.class_ids, s.iou, strict=True)},
            "share": {str(i): float(v) for i, v in zip(s.class_ids, share, strict=True)},
            "rare_class": s.class_ids[rare] if rare is not None else None,
            "rare_iou": _num(s.iou[rare]) if rare is not None else None}


def _num(value: float) -> float | None:
    return None if value is None or not math.isfinite(float(value)) else float(value)


def shrink_patches(params: dict, patch: int) -> dict:
    """Copy of pretext params with every ``patch_size`` (nested ``*params`` too) ≤ ``patch``."""
    out = {}
    for key, value in params.items():
        if key == "patch_size":
            value = min(int(value), patch)
        elif isinstance(value, dict) and key.endswith("params"):
            value = shrink_patches(value, patch)
        out[key] = value
    return out


def effective_ranks(run: Path) -> dict:
    """Final-epoch effective rank per kind (global/local) from ``RUN/spectrum.csv``."""
    path = run / "spectrum.csv"
    if not path.is_file():
        return {}
    with path.open() as f:
        rows = list(csv.DictReader(f))
    last = max(int(r["epoch"]) for r in rows)
    return {r["kind"]: float(r["effective_rank"]) for r in rows if int(r["epoch"]) == last}


def pretrain_config(name: str, dataset: Dataset, budget: dict) -> PretrainConfig:
    """The budget's config of pretext ``name``; ``a+b`` combines pretexts (``--method a
    --method b``) from the first one's CPU config, the dataset's sets going to the outer one."""
    parts = name.split("+")
    sets = [*budget.get("model", []), *budget["pretrain"]]
    base = load_config(PretrainConfig, CONFIGS / f"pretrain_{parts[0]}_cpu.yaml", sets)
    if len(parts) > 1:
        outer, params = compose_pretext(parts, base.pretext.name, base.pretext.params)
        flags = {"pretext.name": outer, "pretext.params": params}
        base = load_config(PretrainConfig, CONFIGS / f"pretrain_{parts[0]}_cpu.yaml",
                           [*sets, *dataset.pretext_sets.get(outer, [])], flags=flags)
    elif dataset.pretext_sets.get(name):
        base = load_config(PretrainConfig, CONFIGS / f"pretrain_{name}_cpu.yaml",
                           [*sets, *dataset.pretext_sets[name]])
    params = shrink_patches(dict(base.pretext.params), budget["patch"])
    return base.model_copy(update={"pretext": base.pretext.model_copy(
        update={"params": params})})


def model_sets(budget: dict) -> list[str]:
    """The fine-tuning model, for every row: the pretraining one (the budget's ``model`` sets on
    the pretraining configs' DeepLabV3+ ResNet-18)."""
    model = load_config(PretrainConfig, CONFIGS / "pretrain_glcnet_cpu.yaml",
                        budget.get("model", [])).model
    return [f"model.arch={model.arch}", f"model.encoder={model.encoder}",
            f"model.kwargs={json.dumps(model.kwargs)}"]


def run_all(dataset: Dataset, methods: list[str], seeds: list[int], budget_name: str,
            work: Path, log: Callable[[str], None],
            checkpoint: Callable[[dict], None] | None = None,
            previous: dict | None = None) -> dict:
    """Every pretraining and fine-tuning run; ``checkpoint(results)`` after each (partial
    tables survive an interrupted comparison). ``previous``: the results of an interrupted
    comparison with the same dataset, budget and work folder; its finished runs are kept."""
    budget = BUDGETS[budget_name]
    results: dict = {"dataset": dataset.name, "notes": dataset.notes, "budget": budget_name,
                     "budget_sets": budget, "seeds": seeds, "pretraining": {}, "runs": []}
    if previous is not None:
        if (previous["dataset"], previous["budget"]) != (dataset.name, budget_name):
            raise ValueError("--resume needs the same dataset and budget")
        results["pretraining"] = {k: v for k, v in previous["pretraining"].items()
                                  if "error" not in v and (work / f"pre_{k}").is_dir()}
        results["runs"] = [r for r in previous["runs"] if "error" not in r]
        results["seeds"] = sorted({*previous["seeds"], *seeds})
        if "tiles" in previous:
            results["tiles"] = previous["tiles"]
    # The table: the earlier rows, then the requested ones (only these run).
    shown = [*dict.fromkeys([*(r["method"] for r in results["runs"]), *methods])]
    done = {(r["method"], r["seed"]) for r in results["runs"]}
    tiles = work / "unlabelled"
    if any(name not in BASELINES and name not in results["pretraining"] for name in methods) \
            and not (tiles / "manifest.csv").is_file():  # a resumed comparison keeps its tiles
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*no CRS/georeferencing.*")
            size, stride = budget.get("tiling", {}).get(dataset.name,
                                                        [budget["tile"], budget["tile"]])
            tile_scenes(dataset.unlabelled, tiles, TileOptions(size=size, stride=stride))
        results["tiles"] = len(list((tiles / "tiles").glob("*.tif")))
    inits: dict[str, Path | None] = {k: work / f"pre_{k}" for k in results["pretraining"]}
    for name in methods:
        if name in BASELINES or name in inits:
            continue
        log(f"pretrain {name}")
        start = time.perf_counter()
        try:
            run = work / f"pre_{name}"
            pretrain(tiles, run, pretrain_config(name, dataset, budget))
            inits[name] = run
            results["pretraining"][name] = {"seconds": round(time.perf_counter() - start, 1),
                                            "effective_rank": effective_ranks(run)}
        except (RssegError, RuntimeError, ValueError) as err:
            results["pretraining"][name] = {"error": _error(err)}
        if checkpoint:
            checkpoint(results)
    ft_base = [*budget["finetune"], *model_sets(budget), *dataset.finetune_sets,
               "trainer.accelerator=cpu"]
    for seed in seeds:
        for name in methods:
            if (name not in BASELINES and name not in inits) or (name, seed) in done:
                continue
            log(f"fine-tune {name}, seed {seed}")
            start = time.perf_counter()
            record = {"method": name, "seed": seed}
            try:
                bundle = _finetune_one(name, seed, inits.get(name), dataset, budget, ft_base,
                                       work)
                record["seconds"] = round(time.perf_counter() - start, 1)
                with tempfile.TemporaryDirectory(dir=work) as tmp:
                    record.update(dataset.score(bundle, Path(tmp)))
            except (RssegError, RuntimeError, ValueError) as err:
                record["error"] = _error(err)
            record["total_seconds"] = round(time.perf_counter() - start, 1)
            results["runs"].append(record)
            if checkpoint:
                results["summary"] = summarise(results, shown)
                checkpoint(results)
    results["summary"] = summarise(results, shown)
    return results


def _finetune_one(name: str, seed: int, init: Path | None, dataset: Dataset, budget: dict,
                  ft_base: list[str], work: Path) -> Path:
    out = work / f"ft_{name}_{seed}"
    sets = [*ft_base, f"trainer.seed={seed}"]
    args = dict(dataset.finetune_args)
    if name in ("supcon", "supcon-2stage"):
        sets += [*budget["supcon"], f"regularizers.supcon.two_stage={name == 'supcon-2stage'}"]
        return finetune(out, load_config(FinetuneConfig, None, sets), methods=["supcon"],
                        overwrite=True, **args)
    if name in ("dcc", "dcc-real", "random-subset"):
        fraction = next((float(s.split("=")[1]) for s in dataset.finetune_sets
                         if s.startswith("data.label_fraction=")), 1.0)
        labels = "real" if name == "dcc-real" else "uniform"
        dcc = load_config(DCCConfig, None, [*budget["dcc"], f"seed={seed}", "device=cpu",
                                            f"label_fraction={fraction}", f"labels={labels}"])
        folder = condense(work / f"{name}_{seed}", dcc, overwrite=True,
                          random_subset=name == "random-subset", **args)
        sets = [s for s in sets if not s.startswith(("data.label_fraction", "data.group"))]
        sets += ["data.val_fraction=0", f"data.crop_size={dcc.size}"]
        return finetune(out, load_config(FinetuneConfig, None, sets), tiles=folder,
                        overwrite=True)
    return finetune(out, load_config(FinetuneConfig, None, sets), init=init, overwrite=True,
                    **args)


def _error(err: Exception) -> str:
    line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return f"{type(err).__name__}: {line}"[:300]


RARE_SHARE = 0.05  # "rare classes": under 5% of the reference pixels of the test data


def rare_classes(results: dict) -> list[str]:
    """Classes present in the test reference below ``RARE_SHARE`` of its pixels."""
    share = next((r["share"] for r in results["runs"] if r.get("share")), {})
    return sorted((c for c, v in share.items() if 0 < v < RARE_SHARE), key=int)


def summarise(results: dict, methods: list[str]) -> list[dict]:
    rare = rare_classes(results)
    for r in results["runs"]:
        values = [r["iou"][c] for c in rare if r.get("iou", {}).get(c) is not None]
        if values:
            r["rare_miou"] = float(np.mean(values))
    rows = []
    for name in methods:
        runs = [r for r in results["runs"] if r["method"] == name and "error" not in r]
        errors = [r["error"] for r in results["runs"] if r["method"] == name and "error" in r]
        pre = results["pretraining"].get(name, {})
        row: dict = {"method": name, "init": "pretrained" if name not in BASELINES else
                     "random", "runs": len(runs)}
        if pre.get("error") or errors:
            row["error"] = pre.get("error") or errors[0]
        for key in ("kappa", "oa", "miou", "rare_miou", "rare_iou"):
            values = [r[key] for r in runs if r.get(key) is not None]
            row[key] = ([float(np.mean(values)), float(np.std(values, ddof=1))
                         if len(values) > 1 else 0.0] if values else None)
        row["rare_class"] = runs[0]["rare_class"] if runs else None
        finetune_seconds = float(np.mean([r["seconds"] for r in runs])) if runs else 0.0
        row["seconds"] = round(pre.get("seconds", 0.0) + finetune_seconds, 1)
        row["effective_rank"] = pre.get("effective_rank", {})
        row["delta_kappa"] = paired_delta(results["runs"], name, "kappa")
        rows.append(row)
    return rows


def paired_delta(runs: list[dict], method: str, key: str) -> list[float] | None:
    """``[mean, sd, n]`` of ``method − random`` in ``key`` over the seeds both finished (the same
    labels and fine-tuning seed: a paired difference), or None."""
    def by_seed(name: str) -> dict[int, float]:
        return {r["seed"]: r[key] for r in runs if r["method"] == name and r.get(key) is not None}
    mine, base = by_seed(method), by_seed("random")
    deltas = [mine[s] - base[s] for s in sorted(mine.keys() & base.keys())]
    if method == "random" or not deltas:
        return None
    sd = float(np.std(deltas, ddof=1)) if len(deltas) > 1 else 0.0
    return [float(np.mean(deltas)), sd, len(deltas)]


def compute_minutes(results: dict) -> float:
    """Minutes spent on every pretraining and every fine-tuning + scoring run (also across
    ``--resume``)."""
    pre = sum(v.get("seconds", 0.0) for v in results["pretraining"].values())
    return (pre + sum(r.get("total_seconds", 0.0) for r in results["runs"])) / 60


def markdown(results: dict) -> str:
    def pm(value: list | None) -> str:
        return "–" if not value else f"{value[0]:.3f} ± {value[1]:.3f}"

    lines = [f"# Method comparison: {results['dataset']} ({results['budget']} budget)", "",
             results["notes"], "",
             f"Seeds: {', '.join(map(str, results['seeds']))} (n: the runs that finished). "
             "Mean ± sample std over seeds. Wall time = pretraining (once) + mean fine-tuning, "
             "seconds (scoring not included). Effective rank: final epoch of pretraining, "
             "global / local embeddings."
             + (f" Tiles for pretraining: {results['tiles']}." if "tiles" in results else "")
             + f" Compute: {compute_minutes(results):.0f} min (pretraining + fine-tuning "
               "and scoring, all runs)."
             + ("" if "seconds" in results
                else " (partial results: the comparison is still running or was stopped)"),
             "",
             f"Rare classes (each under {RARE_SHARE:.0%} of the test reference): "
             f"{', '.join(rare_classes(results)) or 'none'}; their mean IoU is shown apart.",
             "",
             "Δ Kappa: the paired difference to random init (same labels and fine-tuning seed), "
             "mean ± sd over the seeds both finished.",
             "",
             "| method | init | n | Kappa | Δ Kappa vs random | OA | mIoU | rare-class mIoU | "
             "rarest-class IoU | wall time (s) | eff. rank (g / l) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in results.get("summary", []):
        rank = row["effective_rank"]
        ranks = " / ".join(f"{rank[k]:.1f}" for k in ("global", "local") if k in rank) or "–"
        rare = f"{pm(row['rare_iou'])} (class {row['rare_class']})" if row["rare_iou"] else "–"
        delta = row.get("delta_kappa")
        paired = "–" if not delta else f"{delta[0]:+.3f} ± {delta[1]:.3f}"
        lines.append(f"| {row['method']} | {row['init']} | {row['runs']} | {pm(row['kappa'])} | "
                     f"{paired} | {pm(row['oa'])} | {pm(row['miou'])} | "
                     f"{pm(row['rare_miou'])} | {rare} | {row['seconds']} | {ranks} |")
    failed = [r for r in results.get("summary", []) if r.get("error")]
    if failed:
        lines += ["", "Failed:"] + [f"- {r['method']}: {r['error']}" for r in failed]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=("nc", "dubai"), required=True)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, required=True, help="writes OUT.json and OUT.md")
    parser.add_argument("--methods", default="all",
                        help=f"comma-separated pretexts (a+b: combined, e.g. glcnet+claws) "
                             f"and/or {', '.join(BASELINES)} (default: every pretext and "
                             "baseline)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="cpu")
    parser.add_argument("--label-fraction", type=float, default=0.05, help="dubai only")
    parser.add_argument("--test-groups", default="tile6", help="dubai only: stem prefixes")
    parser.add_argument("--work", type=Path, help="keep intermediate runs here")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted comparison: keep the finished runs of "
                             "OUT.json and the pretrained backbones in --work")
    args = parser.parse_args()
    methods = ([*pretext_names(), *BASELINES] if args.methods == "all"
               else [m.strip() for m in args.methods.split(",") if m.strip()])
    unknown = sorted({m for m in methods if m not in BASELINES
                      and not set(m.split("+")) <= set(pretext_names())})
    if unknown:
        parser.error(f"unknown method(s) {', '.join(unknown)}; valid: "
                     f"{', '.join([*pretext_names(), *BASELINES])}")
    seeds = [int(s) for s in args.seeds.split(",")]
    previous = None
    if args.resume:
        if args.work is None or not args.out.with_suffix(".json").is_file():
            parser.error("--resume needs --work and an existing OUT.json")
        previous = json.loads(args.out.with_suffix(".json").read_text())
    work = args.work or Path(tempfile.mkdtemp(prefix="compare_methods_"))
    work.mkdir(parents=True, exist_ok=True)
    warnings.filterwarnings("ignore", message=".*no CRS/georeferencing.*")
    start = time.perf_counter()
    try:
        with stop_signals_raise():  # Ctrl-C / SIGTERM stop the tool (Lightning alone would
            # turn SIGTERM into a SystemExit(None), i.e. exit status 0)
            dataset = (nc_dataset(args.data, work) if args.dataset == "nc" else
                       dubai_dataset(args.data, work, tuple(args.test_groups.split(",")),
                                     args.label_fraction))
            results = run_all(dataset, methods, seeds, args.budget, work,
                              lambda msg: print(f"[compare_methods] {msg}", flush=True),
                              checkpoint=lambda partial: write(args.out, partial),
                              previous=previous)
    except Stopped as stop:
        print(f"[compare_methods] stopped by signal {stop.signum}; finished runs are in "
              f"{args.out.with_suffix('.json')}"
              + (f" (continue with --resume --work {work})" if args.work else ""),
              file=sys.stderr)
        sys.exit(stop.exit_code)
    except Exception:
        traceback.print_exc()
        raise
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    results["seconds"] = round(time.perf_counter() - start, 1)
    write(args.out, results)
    print(markdown(results))


def write(out: Path, results: dict) -> None:
    """``OUT.json`` and ``OUT.md``, each replaced atomically (also for partial results)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    for suffix, text in ((".json", json.dumps(results, indent=2)), (".md", markdown(results))):
        path = out.with_suffix(suffix)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)


if __name__ == "__main__":
    main()
