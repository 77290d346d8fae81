"""Active-learning simulation: do the points ``rsseg suggest`` picks buy more than random ones?

An oracle answers every point asked from a dense reference, as an analyst would in QGIS:

- ``nc``: the bundled Landsat-7 scene, answered by its dense 1996 land-cover map; scored on the
  same map, every point asked and nodata excluded;
- ``dubai``: the Dubai aerial tiles (``--data DIR`` holding ``dubai/``: tile folders with
  ``images/`` and ``labels/``), images of tiles 1–5 answered by their masks, the nine images of
  tile 6 scored.

Protocol, the same for every arm: ``start`` points drawn uniformly over the valid pixels of the
training images (one draw per seed, shared by the arms), then ``step`` points per round up to
``max``, each round chosen by the arm — ``random``, ``uncertainty`` or ``hybrid``, i.e.
``rsseg suggest --strategy ARM`` with the previous round's model (:func:`rsseg.pipelines.suggest.
suggest_points`, the points asked so far excluded, 5 px apart) — and every round fine-tuned
from the same initialisation (random init with the seed, or ``--init RUN``'s backbone) on every
answer so far. A point whose reference has no class (nodata, Dubai's unlabelled 255) costs its
place in the budget and gives no label, for every arm alike.

Figure to reach: hybrid reaches the mIoU random points reach at ``max`` with at most
half as many points. ``OUT.md`` says whether it does, per dataset, and shows what may limit it:
the points without an answer, the classes collected per arm, and how many of an arm's points lie
on a class edge of the reference (another class among the 8 neighbours: mixed pixels, the least
reliable answers), beside the share of edge pixels in the training images.

    python tools/active_learning.py --dataset nc --dataset dubai --data DIR \
        --out docs/active_learning
    python tools/active_learning.py --dataset nc --seeds 0 --max-points 100 \
        --out docs/active_learning   # reduced: NC, one seed, 10 rounds (~12-40 min, 2 cores)
    python tools/active_learning.py --dataset nc --budget tiny --out /tmp/al   # smoke test

Budgets (``--budget``): ``full`` (25 + 25 per round up to 200, seeds 0–2, the shallow U-Net of
``rsseg demo``'s NC case with 40 fine-tuning steps of 8 crops: 2 datasets × 3 seeds × 22 fine-tunes,
a few hours on 2 CPU cores), ``pretrained`` (the same rounds, every one fine-tuned with ``--config``
as it is — by default configs/finetune_cpu.yaml, the DeepLabV3+ ResNet-18 of the CPU pretraining
configs, 200 steps of 8 crops — for ``--init RUN``) and ``tiny`` (4 + 4 up to 8 points, one seed,
the central 128 px of two training images, 2 steps: a smoke test). ``--seeds`` and ``--max-points``
(a round's size: ``start`` + k × ``step``) cut a budget down, keeping its protocol and recipe, and
``--resume`` grows a cut run later (more seeds, more points): its rounds are replayed. The reduced
study above (NC, seed 0, 25 + 25 per round to 100: the start and 3 rounds of 3 arms) asks whether
hybrid reaches random's 100-point mIoU with 50 points. Writes ``OUT.json`` (every round: scores, the
points asked), ``OUT.md`` and ``OUT.png`` (mIoU against points per arm), rewritten after every
round; ``--resume`` replays the rounds of ``OUT.json`` and runs the rest, and ``--merge A.json
--merge B.json`` adds the rounds of runs made apart (one process per seed, side by side) to those
replayed; a file whose rounds were fine-tuned another way (budget, ``--init``, its decoder,
``--set``) is refused. ``--repeats K`` fine-tunes every round K times on its points (the
fine-tuning seeds differ; the first run's model suggests the next round) and scores their mean:
one fine-tune's spread (±5–8 mIoU points on Dubai) is as large as what 175 points add, and with
``--resume`` the repeats a replayed round lacks are trained on its recorded points.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from PIL import Image as PILImage
from rasterio.windows import Window

from rsseg.classes import IGNORE, read_classes
from rsseg.config import FinetuneConfig, load_config
from rsseg.errors import RssegError
from rsseg.io.raster import NoGeoreferencing, SceneInfo, open_scene
from rsseg.labels import read_tile_labels, scan_tiles
from rsseg.metrics import ConfusionAccumulator
from rsseg.models.backbone import read_backbone
from rsseg.pipelines.finetune import finetune
from rsseg.pipelines.predict import PredictOptions, predict_scene
from rsseg.pipelines.suggest import SuggestOptions, suggest_points

ROOT = Path(__file__).resolve().parents[1]
NC = ROOT / "rsseg" / "data" / "nc_landsat"
ARMS = ("random", "uncertainty", "hybrid")

MODEL = ["model.arch=unet", "model.encoder=resnet18",
         'model.kwargs={"encoder_depth": 3, "decoder_channels": [64, 32, 16]}']
BUDGETS: dict[str, dict] = {
    "full": {"start": 25, "step": 25, "max": 200, "seeds": [0, 1, 2], "images": None,
             "crop": None, "model": MODEL,
             "finetune": ["data.crop_size=64", "trainer.epochs=4", "trainer.steps_per_epoch=10",
                          "trainer.batch_size=8", "optim.lr=0.001", "optim.schedule=cosine",
                          "optim.min_lr=1.0e-5", "tile=128", "overlap=32"]},
    "pretrained": {"start": 25, "step": 25, "max": 200, "seeds": [0, 1, 2], "images": None,
                   "crop": None, "model": [], "finetune": []},
    "tiny": {"start": 4, "step": 4, "max": 8, "seeds": [0], "images": 2, "crop": 128,
             "model": MODEL,
             "finetune": ["data.crop_size=32", "trainer.epochs=1", "trainer.steps_per_epoch=2",
                          "trainer.batch_size=4", "tile=64", "overlap=16"]},
}
COMMON = ["data.val_fraction=0", "trainer.accelerator=cpu", "trainer.num_workers=0"]


@dataclass(frozen=True)
class Image:
    """One image: its pixels, dense reference (IGNORE: no class) and valid pixels."""

    path: Path
    reference: np.ndarray  # (H, W) uint8 class ids
    valid: np.ndarray  # (H, W) bool


@dataclass(frozen=True)
class Dataset:
    name: str
    train: list[Image]
    test: list[Image]
    classes: Path
    same_scene: bool  # scored on the training scene: the points asked are never scored
    georeferenced: bool


def load_dataset(name: str, data: Path | None, images: int | None = None, crop: int | None = None,
                 work: Path = Path(".")) -> Dataset:
    """``nc`` or ``dubai``; ``images`` keeps the first training and test images only, ``crop``
    their central ``crop`` × ``crop`` pixels (copies in ``work``)."""
    if name == "nc":
        scene = NC / "landsat7_2000_6band_uint8.tif"
        image = Image(scene, _band(NC / "landclass96_labels_uint8.tif"), _valid(scene))
        if crop:
            image = _crop(image, crop, work / "data")
        return Dataset("nc", [image], [image], NC / "classes_nc_landcover.yaml", True, True)
    if data is None:
        raise SystemExit("error: --dataset dubai needs --data DIR (the folder holding dubai/)")
    folder = data / "dubai"
    if not folder.is_dir():
        raise SystemExit(f"error: {folder} not found (--data)")
    tiles = scan_tiles(folder)
    train = [_tile(t) for t in tiles if not t.stem.startswith("tile6")]
    test = [_tile(t) for t in tiles if t.stem.startswith("tile6")]
    if images:
        train, test = train[:images], test[:1]
    if crop:
        train = [_crop(im, crop, work / "data") for im in train]
        test = [_crop(im, crop, work / "data") for im in test]
    return Dataset("dubai", train, test, ROOT / "configs" / "classes_dubai.yaml", False, False)


def _crop(image: Image, size: int, folder: Path) -> Image:
    """The central ``size`` × ``size`` pixels of ``image``, written as a GeoTIFF in ``folder``."""
    h, w = image.reference.shape
    window = Window(max(0, (w - size) // 2), max(0, (h - size) // 2), min(size, w),
                    min(size, h))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{image.path.stem}_crop.tif"
    with open_scene(image.path) as src:
        pixels = src.read(window)
        profile = {"driver": "GTiff", "width": pixels.shape[2], "height": pixels.shape[1],
                   "count": pixels.shape[0], "dtype": pixels.dtype, "nodata": src.info.nodata}
        if src.info.georeferenced:
            profile.update(crs=src.info.crs, transform=src.src.window_transform(window))
        names = src.band_names
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(pixels)
        for i, name in enumerate(names, start=1):
            dst.set_band_description(i, name)
    rows, cols = window.toslices()
    return Image(path, image.reference[rows, cols], image.valid[rows, cols])


def _band(path: Path) -> np.ndarray:
    with open_scene(path) as src:
        return src.src.read(1)


def _valid(path: Path) -> np.ndarray:
    with open_scene(path) as src:
        return src.valid_mask(src.read(Window(0, 0, src.info.width, src.info.height)))


def _tile(tile) -> Image:
    reference = read_tile_labels(tile).labels.astype(np.uint8)
    return Image(tile.image, reference, np.ones(reference.shape, dtype=bool))


class State:
    """The points asked so far per training image, and the answers."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self.asked = [np.zeros(im.reference.shape, dtype=bool) for im in dataset.train]
        self.labels = [np.full(im.reference.shape, IGNORE, np.uint8) for im in dataset.train]
        self.index = {im.path.resolve(): i for i, im in enumerate(dataset.train)}

    def ask(self, points: list[list[int]]) -> None:
        """The oracle answers ``[image, row, col]`` points from the reference."""
        for i, r, c in points:
            self.asked[i][r, c] = True
            self.labels[i][r, c] = self.dataset.train[i].reference[r, c]

    def mask(self, info: SceneInfo) -> np.ndarray:
        return self.asked[self.index[info.path.resolve()]]

    @property
    def points(self) -> int:
        return int(sum(a.sum() for a in self.asked))

    def answered(self) -> dict[str, int]:
        """Labels collected per class name."""
        counts = np.bincount(np.concatenate([lab[lab != IGNORE] for lab in self.labels]),
                             minlength=1)
        table = read_classes(self.dataset.classes)
        return {table.name_of(i): int(n) for i, n in enumerate(counts) if n}


def edge_mask(reference: np.ndarray) -> np.ndarray:
    """``(H, W)`` class ids → ``(H, W)`` bool: a class pixel with another class (not ``IGNORE``)
    among its 8 neighbours."""
    h, w = reference.shape
    padded = np.pad(reference, 1, constant_values=IGNORE)
    edge = np.zeros((h, w), dtype=bool)
    for dr in range(3):
        for dc in range(3):
            near = padded[dr:dr + h, dc:dc + w]
            edge |= (near != reference) & (near != IGNORE)
    return edge & (reference != IGNORE)


def on_edges(edges: list[np.ndarray], points: list[list[int]]) -> int:
    """How many ``[image, row, col]`` points lie on a class edge (:func:`edge_mask` per image)."""
    return sum(int(edges[i][r, c]) for i, r, c in points)


def edge_share(dataset: Dataset) -> float:
    """The share of the training images' valid class pixels that lie on a class edge."""
    edges = sum(int((edge_mask(im.reference) & im.valid).sum()) for im in dataset.train)
    pixels = sum(int((im.valid & (im.reference != IGNORE)).sum()) for im in dataset.train)
    return edges / pixels


def start_points(dataset: Dataset, n: int, seed: int) -> list[list[int]]:
    """``n`` pixels drawn uniformly over the valid pixels of the training images."""
    sizes = [int(im.valid.sum()) for im in dataset.train]
    picks = np.sort(np.random.default_rng(seed).choice(sum(sizes), n, replace=False))
    offsets = np.cumsum([0, *sizes])
    points = []
    for p in picks:
        i = int(np.searchsorted(offsets, p, side="right") - 1)
        r, c = np.argwhere(dataset.train[i].valid)[p - offsets[i]]
        points.append([i, int(r), int(c)])
    return points


def suggested(dataset: Dataset, state: State, bundle: Path, arm: str, n: int,
              seed: int) -> list[list[int]]:
    """The ``n`` points ``rsseg suggest --strategy ARM`` picks with ``bundle``."""
    picked = suggest_points([im.path for im in dataset.train], bundle,
                            SuggestOptions(n=n, strategy=arm, seed=seed, device="cpu"),
                            labelled=state.mask).points
    return [[int(i), int(r), int(c)] for i, r, c in zip(picked.scene, picked.row, picked.col,
                                                        strict=True)]


def train_and_score(dataset: Dataset, state: State, config: FinetuneConfig,
                    init: Path | None, work: Path) -> tuple[Path, dict]:
    """Fine-tune on the answers so far (same initialisation every round), score the test set."""
    shutil.rmtree(work, ignore_errors=True)
    inputs = write_labels(dataset, state, work / "labels")
    bundle = finetune(work / "ft", config, init=init, classes_file=dataset.classes,
                      overwrite=True, **inputs)
    acc = ConfusionAccumulator(ignore=(IGNORE,))
    for k, im in enumerate(dataset.test):
        pred = work / f"pred_{k}.tif"
        predict_scene(im.path, bundle, pred, PredictOptions(overwrite=True, device="cpu"))
        valid = ~state.asked[0] if dataset.same_scene else None
        acc.update(_band(pred), im.reference, valid)
    ids = read_classes(dataset.classes).ids
    s = acc.scores(ids)
    iou = {str(i): None if not np.isfinite(v) else round(float(v), 4)
           for i, v in zip(s.class_ids, s.iou, strict=True)}
    return bundle, {"miou": float(s.miou), "kappa": float(s.kappa), "oa": float(s.oa),
                    "iou": iou}


def repeat_scores(dataset: Dataset, state: State, config: FinetuneConfig, init: Path | None,
                  work: Path, record: dict, repeats: int) -> None:
    """Fine-tune the round of ``record`` (the points in ``state``) until it has ``repeats``
    runs, the k-th with fine-tuning seed ``seed + 1000·k``; ``record["repeats"]`` keeps every
    run's scores and mIoU, Kappa, OA and per-class IoU become their means."""
    runs = record.setdefault("repeats", [{k: record[k] for k in ("miou", "kappa", "oa", "iou")}])
    while len(runs) < repeats:
        cfg = config.model_copy(deep=True)
        cfg.trainer.seed = config.trainer.seed + 1000 * len(runs)
        _, scores = train_and_score(dataset, state, cfg, init, work / f"repeat_{len(runs)}")
        runs.append(scores)
    record.update({k: float(np.mean([r[k] for r in runs])) for k in ("miou", "kappa", "oa")})
    record["iou"] = {c: _mean_finite([r["iou"][c] for r in runs]) for c in runs[0]["iou"]}


def _mean_finite(values: list) -> float | None:
    kept = [v for v in values if v is not None]
    return round(float(np.mean(kept)), 4) if kept else None


def write_labels(dataset: Dataset, state: State, folder: Path) -> dict:
    """The answers as fine-tuning inputs: a label raster on the scene grid (georeferenced
    scene), else a tile folder of the images that have answers."""
    if dataset.georeferenced:
        folder.mkdir(parents=True)
        scene = dataset.train[0].path
        with rasterio.open(scene) as src:
            profile = src.profile | {"count": 1, "dtype": "uint8", "nodata": IGNORE}
        path = folder / "labels.tif"
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(state.labels[0][None])
        return {"scenes": [scene], "labels": path}
    for sub in ("images", "labels"):
        (folder / sub).mkdir(parents=True)
    for im, labels in zip(dataset.train, state.labels, strict=True):
        if (labels != IGNORE).any():
            (folder / "images" / im.path.name).symlink_to(im.path.resolve())
            PILImage.fromarray(labels).save(folder / "labels" / f"{im.path.stem}.png")
    return {"tiles": folder}


def run_arm(dataset: Dataset, arm: str, seed: int, budget: dict, config: FinetuneConfig,
            init: Path | None, work: Path, results: dict, out: Path, repeats: int = 1) -> None:
    """Every round of one arm and seed, each fine-tuned ``repeats`` times; rounds in
    ``results`` are replayed, not rerun (only the repeats they lack are trained)."""
    state = State(dataset)
    edges = [edge_mask(im.reference) for im in dataset.train]
    done = {r["points"]: r for r in results["runs"]
            if (r["dataset"], r["seed"]) == (dataset.name, seed) and r["arm"] in ("start", arm)}
    sizes = range(budget["start"], budget["max"] + 1, budget["step"])
    bundle = None
    for size in sizes:
        if size in done:
            done[size].setdefault("on_edge", on_edges(edges, done[size]["new"]))
            state.ask(done[size]["new"])
            folder = _round(work, dataset, done[size]["arm"], seed, size)
            bundle = folder / "ft" / "model.rsseg"
            if len(done[size].get("repeats", [None])) < repeats:
                print(f"{dataset.name} {done[size]['arm']} seed {seed}: {size} points, "
                      f"repeats to {repeats}", flush=True)
                repeat_scores(dataset, state, config, init, folder, done[size], repeats)
                write_outputs(results, out)
            continue
        start = time.perf_counter()
        if size == budget["start"]:
            new, label = start_points(dataset, size, seed), "start"
        else:
            if bundle is None or not bundle.is_file():  # replayed, its model since removed
                bundle, _ = train_and_score(dataset, state, config, init, work / "replay")
            new, label = suggested(dataset, state, bundle, arm, budget["step"], seed), arm
        state.ask(new)
        print(f"{dataset.name} {label} seed {seed}: {state.points} points", flush=True)
        bundle, scores = train_and_score(dataset, state, config, init,
                                         _round(work, dataset, label, seed, size))
        unanswered = sum(int(dataset.train[i].reference[r, c] == IGNORE) for i, r, c in new)
        on_edge = on_edges(edges, new)
        record = {"dataset": dataset.name, "arm": label, "seed": seed, "points": size,
                  "unanswered": unanswered, "on_edge": on_edge, "answered": state.answered(),
                  **scores, "new": new}
        if repeats > 1:
            repeat_scores(dataset, state, config, init, _round(work, dataset, label, seed, size),
                          record, repeats)
        results["runs"].append({**record, "seconds": round(time.perf_counter() - start, 1)})
        print(f"  -> mIoU {record['miou']:.3f}", flush=True)
        write_outputs(results, out)


def _round(work: Path, dataset: Dataset, label: str, seed: int, size: int) -> Path:
    """The work folder of one round (its labels, model and predictions)."""
    return work / f"{dataset.name}_{label}_{seed}_{size}"


def curve(runs: list[dict], dataset: str, arm: str) -> dict[int, list[float]]:
    """mIoU per seed at each size: the shared start, then the arm's rounds."""
    out: dict[int, list[float]] = {}
    for r in runs:
        if r["dataset"] == dataset and r["arm"] in ("start", arm):
            out.setdefault(r["points"], []).append(r["miou"])
    return dict(sorted(out.items()))


def summarise(results: dict) -> list[dict]:
    """Per dataset: mean ± sd per arm and size, points each arm needs to reach random's score
    at the largest size, and the verdict on the issue's figure."""
    rows = []
    for dataset in dict.fromkeys(r["dataset"] for r in results["runs"]):
        curves = {arm: curve(results["runs"], dataset, arm) for arm in results["arms"]}
        top = results["budget_sets"]["max"]
        base = curves.get("random", {}).get(top)
        row: dict = {"dataset": dataset, "curves": {
            arm: {str(k): [float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0,
                           len(v)] for k, v in c.items()} for arm, c in curves.items()}}
        row["edge_share"] = results.get("edge_share", {}).get(dataset)
        row["paired"] = {arm: paired(results["runs"], dataset, arm) for arm in curves
                         if arm != "random" and "random" in curves}
        if base:
            target = float(np.mean(base))
            reach = {arm: next((k for k, v in c.items() if np.mean(v) >= target), None)
                     for arm, c in curves.items()}
            row.update(target=target, reach=reach, verdict=verdict(dataset, target, reach, top))
        rows.append(row)
    return rows


def paired(runs: list[dict], dataset: str, arm: str) -> list[float] | None:
    """``arm`` − random in mIoU points over every (seed, round) both ran after the shared
    start: ``[mean, sd, pairs]``, or None without a pair. Uses every round, where the figure
    uses one point of a noisy curve."""
    scores = {(r["seed"], r["points"], r["arm"]): r["miou"] for r in runs
              if r["dataset"] == dataset}
    diffs = [100 * (m - scores[(seed, size, "random")])
             for (seed, size, name), m in scores.items()
             if name == arm and (seed, size, "random") in scores]
    if not diffs:
        return None
    return [float(np.mean(diffs)), float(np.std(diffs, ddof=1)) if len(diffs) > 1 else 0.0,
            len(diffs)]


def verdict(dataset: str, target: float, reach: dict, top: int) -> str:
    """One line: does hybrid reach random's score at ``top`` points with half as many? Not
    measurable where random's own mean curve already reaches it with half as many (a curve
    that does not rise: any arm "reaches" it)."""
    if "hybrid" not in reach:
        return f"{dataset}: no hybrid arm in this run, so the figure is not measured"
    points = reach.get("hybrid")
    own = reach.get("random")
    if own is not None and own <= top // 2:
        return (f"{dataset}: random points already reach their own {top}-point mIoU "
                f"({100 * target:.1f}) with {own} points (their curve is flat from there), so "
                "the figure cannot be measured here (not reached)")
    if points is None:
        return (f"{dataset}: hybrid does not reach random's {top}-point mIoU "
                f"({100 * target:.1f}) within {top} points: figure not reached")
    word = "reached" if points <= top // 2 else "not reached"
    return (f"{dataset}: hybrid reaches random's {top}-point mIoU ({100 * target:.1f}) with "
            f"{points} points ({top / points:.1f}x label efficiency): figure {word}")


def write_outputs(results: dict, out: Path) -> None:
    """``OUT.json``, ``OUT.md`` and ``OUT.png``."""
    results["summary"] = summarise(results)
    out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    lines = ["# Active learning: `rsseg suggest` against random points", "",
             *(__doc__ or "").split("\n\n")[1:5], "",
             f"Budget `{results['budget']}`: {results['budget_sets']}; seeds "
             f"{results['seeds']}; init {results['init'] or 'random'}"
             f"{' (backbone and decoder)' if results.get('init_decoder') else ''}; "
             f"overrides {results.get('sets') or 'none'}; fine-tunes per round "
             f"{results.get('repeats', 1)} (scored by their mean).", "",
             f"![mIoU against labelled points]({out.with_suffix('.png').name})", ""]
    for row in results["summary"]:
        lines += _dataset_lines(row, [r for r in results["runs"]
                                      if r["dataset"] == row["dataset"]])
    out.with_suffix(".md").write_text("\n".join(lines))
    _plot(results, out.with_suffix(".png"))


def _dataset_lines(row: dict, runs: list[dict]) -> list[str]:
    """One dataset's section of ``OUT.md``: verdict, points to reach, table, what was asked."""
    arms = list(row["curves"])
    reach = ", ".join(f"{a} {row['reach'][a] or 'not within the budget'}" for a in arms) \
        if "reach" in row else "random's last round not run yet"
    pairs = "; ".join(f"{arm} {v[0]:+.1f} ± {v[1]:.1f} over {v[2]} (seed, round) pairs"
                      for arm, v in row.get("paired", {}).items() if v)
    lines = [f"## {row['dataset']}", "", row.get("verdict", ""), "",
             f"Points each arm needed to reach random's last-round mIoU: {reach}.", "",
             *([f"mIoU points above random, paired by seed and round (every round after the "
                f"shared start): {pairs}.", ""] if pairs else []),
             "mIoU (%), mean ± sd over seeds:", "",
             "| points | " + " | ".join(arms) + " |", "|---" * (len(arms) + 1) + "|"]
    for size in sorted({int(k) for c in row["curves"].values() for k in c}):
        cells = [f"{100 * v[0]:.1f} ± {100 * v[1]:.1f}" if (v := row["curves"][a].get(str(size)))
                 else "—" for a in arms]
        lines.append(f"| {size} | " + " | ".join(cells) + " |")
    share = row.get("edge_share")
    lines += ["", "What each arm asked, over the seeds: points without an answer (no class in "
              "the reference), points of its own rounds (the shared start left out) on a class "
              "edge of the reference"
              + (f" ({100 * share:.0f} % of the training pixels are)" if share else "")
              + ", and the labels per class at its last round:", ""]
    for arm in arms:
        mine = [r for r in runs if r["arm"] in ("start", arm)]
        last = max(r["points"] for r in mine)
        classes: dict[str, int] = {}
        for r in mine:
            if r["points"] == last:
                for name, count in r["answered"].items():
                    classes[name] = classes.get(name, 0) + count
        own = [r for r in mine if r["arm"] == arm and "on_edge" in r]
        edge = (f"{sum(r['on_edge'] for r in own)} of {sum(len(r['new']) for r in own)} "
                "on a class edge; " if own else "")
        lines.append(f"- {arm}: {sum(r['unanswered'] for r in mine)} of "
                     f"{sum(len(r['new']) for r in mine)} points unanswered; {edge}labels "
                     + ", ".join(f"{n} {c}" for n, c in sorted(classes.items())))
    return [*lines, ""]


def _plot(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["summary"]
    fig, axes = plt.subplots(1, max(len(rows), 1), figsize=(5.5 * max(len(rows), 1), 4.2),
                             squeeze=False)
    for ax, row in zip(axes[0], rows, strict=False):
        for arm, c in row["curves"].items():
            xs = sorted(int(k) for k in c)
            mean = np.array([100 * c[str(x)][0] for x in xs])
            sd = np.array([100 * c[str(x)][1] for x in xs])
            ax.plot(xs, mean, marker="o", label=arm)
            ax.fill_between(xs, mean - sd, mean + sd, alpha=0.15)
        if "target" in row:
            ax.axhline(100 * row["target"], color="grey", linestyle="--", linewidth=1,
                       label=f"random at {results['budget_sets']['max']}")
        ax.set_title(row["dataset"])
        ax.set_xlabel("labelled points (asked)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("mIoU (%) on held-out pixels, mean ± sd over seeds")
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def with_max_points(budget: dict, max_points: int | None) -> dict:
    """``budget`` whose last round has ``max_points`` points (a round's size), or as is."""
    if max_points is None:
        return budget
    start, step = budget["start"], budget["step"]
    if max_points < start + step or (max_points - start) % step:
        raise SystemExit(f"error: --max-points {max_points} is not a round's size: use "
                         f"{start} + k x {step} with k >= 1 (e.g. {start + 3 * step})")
    return {**budget, "max": max_points}


def check_same_recipe(previous: dict, results: dict, path: Path) -> None:
    """SystemExit unless the rounds of ``previous`` (an earlier OUT.json) were fine-tuned as
    this run's are: the same budget, ``--init`` (and whether its decoder was loaded) and
    ``--set`` overrides (files from before these were recorded: no overrides, no decoder)."""
    for key, default in (("budget", None), ("init", None), ("init_decoder", False),
                         ("sets", [])):
        if previous.get(key, default) != results[key]:
            raise SystemExit(f"error: {path} ran {key} {previous.get(key, default)!r}, this run "
                             f"{results[key]!r}: --resume and --merge need the same recipe")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--dataset", action="append", choices=("nc", "dubai"), required=True)
    parser.add_argument("--arm", action="append", choices=ARMS,
                        help="arms to run (repeatable) [default: all three]")
    parser.add_argument("--budget", choices=tuple(BUDGETS), default="full")
    parser.add_argument("--seeds", help="comma-separated [default: the budget's]")
    parser.add_argument("--init", type=Path, help="pretraining run: every round starts from "
                        "its backbone [default: random init with the seed]")
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "finetune_cpu.yaml")
    parser.add_argument("--set", dest="sets", action="append", default=[])
    parser.add_argument("--max-points", type=int, help="last round's size, start + k x step "
                        "[default: the budget's max]")
    parser.add_argument("--data", type=Path, help="folder holding dubai/ (--dataset dubai)")
    parser.add_argument("--work", type=Path, default=Path("active_learning_work"))
    parser.add_argument("--out", type=Path, required=True, help="OUT.json/.md/.png")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--repeats", type=int, default=1,
                        help="fine-tunes per round (other fine-tuning seeds), scored by their "
                        "mean [default: 1]")
    parser.add_argument("--merge", type=Path, action="append", default=[],
                        help="OUT.json of runs made apart (e.g. one process per seed), replayed "
                        "with --resume's (repeatable; same --budget, --init, --set)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        raise SystemExit(f"error: --repeats {args.repeats}: give 1 or more fine-tunes per round")

    budget = with_max_points(BUDGETS[args.budget], args.max_points)
    arms = list(dict.fromkeys(args.arm or ARMS))
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else budget["seeds"]
    try:  # a bad --config, --set or --init: one line before any round runs
        recipe = load_config(FinetuneConfig, args.config, [*budget["model"], *budget["finetune"],
                                                           *COMMON, *args.sets])
        init_meta = read_backbone(args.init)[1] if args.init else None
    except RssegError as err:
        raise SystemExit(f"error: {err}") from None
    results: dict = {"budget": args.budget, "budget_sets": budget, "arms": arms,
                     "seeds": seeds, "init": str(args.init) if args.init else None,
                     "init_decoder": bool(init_meta and recipe.init_decoder and init_meta.decoder),
                     "sets": args.sets, "repeats": args.repeats, "runs": []}
    out = args.out
    earlier = [out.with_suffix(".json")] if args.resume else []
    for path in [*earlier, *args.merge]:
        if not path.is_file():
            if path in args.merge:
                raise SystemExit(f"error: --merge {path}: no such file")
            continue
        previous = json.loads(path.read_text())
        check_same_recipe(previous, results, path)
        known = {(r["dataset"], r["arm"], r["seed"], r["points"]) for r in results["runs"]}
        results["runs"] += [r for r in previous["runs"]
                            if (r["dataset"], r["arm"], r["seed"], r["points"]) not in known]
        results["arms"] = list(dict.fromkeys([*previous["arms"], *results["arms"]]))
    out.parent.mkdir(parents=True, exist_ok=True)
    warnings.simplefilter("ignore", NoGeoreferencing)
    for name in dict.fromkeys(args.dataset):
        dataset = load_dataset(name, args.data, budget["images"], budget["crop"], args.work)
        results.setdefault("edge_share", {})[name] = edge_share(dataset)
        for seed in seeds:
            config = recipe.model_copy(deep=True)
            config.trainer.seed = seed
            for arm in arms:
                run_arm(dataset, arm, seed, budget, config, args.init, args.work, results, out,
                        args.repeats)
    write_outputs(results, out)
    spent = sum(r["seconds"] for r in results["runs"])
    print(f"{len(results['runs'])} rounds, {spent / 60:.1f} min of rounds; {out}.md", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
