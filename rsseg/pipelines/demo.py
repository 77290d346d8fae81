"""``rsseg demo``: the whole chain on bundled real imagery, GLCNet against random init.

Two cases, each: tile → GLCNet pretraining on the unlabelled imagery → fine-tuning on sparse
labels from the GLCNet backbone and from random init **with the same recipe** → predict →
score on pixels no training step saw.

- ``aerial``: twelve RGB aerial images of Dubai (CC0, ``rsseg/data/dubai_aerial``); fine-tuning
  reads 20 labelled points on each of eight images (the clicks an analyst makes); scored on the
  dense labels of the four other images. Buildings and roads are shapes, not colours: where
  pretraining should matter.
  The case ends by asking the GLCNet model which points of the training images to label next
  (:func:`suggest_next`: ``suggest.gpkg`` for QGIS, and the ``rsseg finetune`` line that reads
  it).
- ``nc``: the North Carolina Landsat-7 scene (GRASS GIS sample dataset, CC BY-SA 3.0,
  ``rsseg/data/nc_landsat``); fine-tuning reads its 2,872 sparse pixels; scored against the dense
  1996 map (training pixels and nodata excluded). At 28.5 m the classes are mostly spectral.

The fine-tuning recipe of the aerial case is ``configs/finetune_cpu.yaml`` with fewer steps; its
pretraining is ``configs/pretrain_glcnet_cpu.yaml`` at a demo budget (``max_time`` spends a longer
one). Sized to finish both cases within 10 minutes on 2 CPU cores.
"""

from __future__ import annotations

import json
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path

import numpy as np
from affine import Affine

from rsseg.classes import IGNORE, ClassTable, read_classes
from rsseg.config import FinetuneConfig, PretrainConfig
from rsseg.errors import InputError
from rsseg.io.atomic import check_output
from rsseg.io.owned import DEMO, check_replaceable
from rsseg.io.raster import NoGeoreferencing, open_scene, write_plain_tile
from rsseg.metrics import ConfusionAccumulator, Scores
from rsseg.pipelines.evaluate import evaluate
from rsseg.pipelines.finetune import finetune
from rsseg.pipelines.outputs import OutputOptions
from rsseg.pipelines.predict import PredictOptions, predict_scene
from rsseg.pipelines.pretrain import pretrain
from rsseg.pipelines.suggest import SuggestOptions, suggest
from rsseg.pipelines.tile import TileOptions, tile_scenes

CASES = ("aerial", "nc")
ARMS = ("glcnet", "random")

# --- aerial: the CPU recipe (configs/pretrain_glcnet_cpu.yaml, configs/finetune_cpu.yaml) ---
DEEPLAB = {"arch": "deeplabv3plus", "encoder": "resnet18",
           "kwargs": {"encoder_output_stride": 16, "decoder_atrous_rates": [6, 12, 18],
                      "decoder_aspp_separable": False}}
AERIAL_TILE = {"size": 160, "stride": 160, "max_nodata": 0.5}
AERIAL_PRETRAIN = {
    "model": DEEPLAB,
    "pretext": {"name": "glcnet", "params": {"patch_size": 28, "patch_num": 4}},
    "data": {"view_size": 128, "diagnostic_samples": 32},
    "optim": {"lr": 1e-3, "min_lr": 1e-5},
    # 4 passes over the 290 tiles: 72 steps of 16 (~2-3 min on 2 cores)
    "trainer": {"epochs": 4, "batch_size": 16, "num_workers": 1, "accelerator": "cpu"},
}
AERIAL_FINETUNE = {
    "model": DEEPLAB,
    # no validation split: 160 points are all the labels there are
    "data": {"crop_size": 96, "val_fraction": 0.0, "balance": 0.5, "jitter": 0.05},
    "optim": {"lr": 1e-3, "schedule": "cosine", "min_lr": 1e-5, "weight_decay": 1e-4},
    "trainer": {"epochs": 8, "batch_size": 8, "steps_per_epoch": 25, "accelerator": "cpu"},
    "encoder_lr_scale": 1.0,
    "init_decoder": True,  # GLCNet's arm also starts from the decoder its local branch trained
    "ema": 0.99,
    "tile": 256,
    "overlap": 64,
}

# --- nc: a shallow U-Net (3 encoder stages, receptive field ~100 px): at 28.5 m the classes are
# mostly spectral, and it scored higher than the 5-stage U-Net in less time ---
NC_MODEL = {"arch": "unet", "encoder": "resnet18",
            "kwargs": {"encoder_depth": 3, "decoder_channels": [64, 32, 16]}}
NC_TILE = {"size": 64, "stride": 32, "max_nodata": 0.5}
NC_PRETRAIN = {
    "model": NC_MODEL,
    "pretext": {"name": "glcnet", "params": {"patch_size": 16, "patch_num": 4}},
    "data": {"view_size": 64, "diagnostic_samples": 64},
    "optim": {"lr": 1e-3, "min_lr": 1e-5},
    "trainer": {"epochs": 8, "batch_size": 32, "accelerator": "cpu"},
}
# Fine-tuning on 2,872 pixels memorises them within a few epochs, so the case regularises, for
# both arms alike: band_dropout (one band of half the crops missing, at its mean: this scene's
# band 7 ends ~30 px before the other five, a ~22% frame of the valid pixels), jitter (per-band
# gain/offset noise), ema (the exported weights are a moving average).
NC_FINETUNE = {
    "model": NC_MODEL,
    "data": {"crop_size": 64, "val_fraction": 0.1, "val_block": 32, "jitter": 0.05,
             "band_dropout": 0.5},
    "optim": {"lr": 1e-3, "schedule": "cosine", "min_lr": 1e-5, "weight_decay": 1e-4},
    "trainer": {"epochs": 10, "batch_size": 16, "steps_per_epoch": 30, "accelerator": "cpu"},
    "encoder_lr_scale": 1.0,
    "ema": 0.99,
    "tile": 128,
    "overlap": 32,
}

SUGGEST_POINTS = 20  # the points the aerial case asks for next (about one per image and class)
MOSAIC_GAP = 16  # nodata pixels between the training images laid side by side

NC_SCENE = "landsat7_2000_6band_uint8.tif"
NC_SPARSE = "landsat96_sparse_training_pixels_uint8.tif"
NC_DENSE = "landclass96_labels_uint8.tif"
NC_CLASSES = "classes_nc_landcover.yaml"
AERIAL_CLASSES = "classes_dubai.yaml"


def bundled(folder: str) -> Path:
    """A data folder shipped inside the package (``nc_landsat``, ``dubai_aerial``)."""
    return Path(str(resources.files("rsseg") / "data" / folder))


def bundled_scene() -> Path:
    """Folder of the NC demo scene shipped inside the package."""
    return bundled("nc_landsat")


def check_cases(cases: Sequence[str]) -> tuple[str, ...]:
    """The cases asked for, in order; ``InputError`` naming the valid ones for an unknown one."""
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        raise InputError(f"unknown demo case {unknown[0]!r}", f"choose from {', '.join(CASES)}")
    return tuple(dict.fromkeys(cases)) or CASES


def run_demo(out: str | Path, seed: int = 0, overwrite: bool = False,
             cases: Sequence[str] = (), max_time: float | None = None,
             say: Callable[[str], None] = print) -> dict:
    """Run the demo cases into ``out``; return the metrics written to ``out/metrics.json``.

    ``max_time``: seconds of GLCNet pretraining per case (default: the cases' step budgets).
    """
    chosen = check_cases(cases)
    out = check_output(out, overwrite)
    if out.exists():
        check_replaceable(out, DEMO)  # only a folder an earlier demo wrote
        shutil.rmtree(out)
    out.mkdir(parents=True)
    start = time.perf_counter()
    results: dict = {"seed": seed, "max_time": max_time}
    (out / "metrics.json").write_text(json.dumps(results, indent=2))
    for case in chosen:
        say(f"== {case} case ==")
        runner = run_aerial if case == "aerial" else run_nc
        with warnings.catch_warnings():  # the aerial images are plain JPEG/PNG, as documented
            warnings.simplefilter("ignore", NoGeoreferencing)
            results[case] = runner(out / case, seed, max_time, say)
        (out / "metrics.json").write_text(json.dumps(results, indent=2))
    results["seconds"] = round(time.perf_counter() - start, 1)
    (out / "metrics.json").write_text(json.dumps(results, indent=2))
    return results


def _pretrain_config(recipe: dict, seed: int, max_time: float | None) -> PretrainConfig:
    cfg = PretrainConfig.model_validate(recipe)
    cfg.trainer.seed = seed
    if max_time is not None:  # the schedule ends at the budget; epochs only bound it
        cfg.trainer.max_time = max_time
        cfg.trainer.epochs = 10_000
    return cfg


def _finetune_config(recipe: dict, seed: int) -> FinetuneConfig:
    cfg = FinetuneConfig.model_validate(recipe)
    cfg.trainer.seed = seed
    return cfg


def run_aerial(out: Path, seed: int, max_time: float | None,
               say: Callable[[str], None]) -> dict:
    """Aerial case: pretrain on all twelve images, fine-tune on points, score four held out."""
    data = out / "data"
    shutil.copytree(bundled("dubai_aerial"), data)
    start = time.perf_counter()
    held_out = sorted(p.stem for p in (data / "reference").glob("*.png"))
    say("1/4 tiling the twelve aerial images (unlabelled)")
    tile_scenes(sorted((data / "images").glob("*.jpg")), out / "tiles",
                TileOptions(**AERIAL_TILE))
    say("2/4 GLCNet pretraining on the unlabelled tiles")
    pretrain(out / "tiles", out / "pretrain", _pretrain_config(AERIAL_PRETRAIN, seed, max_time))
    train = out / "train"  # the points of the eight training images, as a tile folder
    for sub in ("images", "labels"):
        (train / sub).mkdir(parents=True)
    for points in sorted((data / "points").glob("*.png")):
        shutil.copy(data / "images" / f"{points.stem}.jpg", train / "images")
        shutil.copy(points, train / "labels")
    classes = read_classes(data / AERIAL_CLASSES)
    results: dict = {}
    bundles: dict[str, Path] = {}
    for step, arm in enumerate(ARMS, 3):
        say(f"{step}/4 fine-tuning on {_points(train)} points from {arm} init, predicting "
            f"{len(held_out)} held-out images")
        init = out / "pretrain" if arm == "glcnet" else None
        bundle = bundles[arm] = finetune(
            out / f"finetune_{arm}", _finetune_config(AERIAL_FINETUNE, seed), tiles=train,
            classes_file=data / AERIAL_CLASSES, init=init)
        acc = ConfusionAccumulator(ignore=(IGNORE,))
        for stem in held_out:
            pred = out / f"prediction_{arm}" / f"{stem}.tif"
            pred.parent.mkdir(exist_ok=True)
            predict_scene(data / "images" / f"{stem}.jpg", bundle, pred, PredictOptions())
            acc.update(_read(pred), _read(data / "reference" / f"{stem}.png"))
        results[arm] = score_record(acc.scores(classes.ids), classes)
    results["verdict"] = verdict(results, "aerial")
    results["figure"] = str(comparison_figure(out, held_out, classes))
    say(f"then: the {SUGGEST_POINTS} points of the training images worth labelling next")
    results["suggest"] = suggest_next(out, data, classes, bundles["glcnet"], seed)
    results["seconds"] = round(time.perf_counter() - start, 1)
    return results


def suggest_next(out: Path, data: Path, classes: ClassTable, bundle: Path, seed: int) -> dict:
    """``out/suggest.gpkg`` (+ ``.qml``): the points of the training images the model
    ``bundle`` needs most, away from their labelled points, and the line that uses it.

    The eight images have no georeferencing, so they are laid side by side in one raster,
    ``training_images.tif`` (pixel units from its top-left corner, rows going down, where QGIS
    shows a plain image; :data:`MOSAIC_GAP` nodata pixels between the images, their zeros raised
    to 1), with their points on its grid in
    ``training_points.tif``: QGIS shows the three together and ``rsseg finetune`` reads them as
    they are.
    """
    stems = sorted(p.stem for p in (data / "points").glob("*.png"))
    images, names = [], ()
    for stem in stems:
        with open_scene(data / "images" / f"{stem}.jpg") as scene:
            images.append(scene.src.read())
            names = scene.band_names
    height = max(im.shape[1] for im in images)
    width = sum(im.shape[2] for im in images) + MOSAIC_GAP * (len(images) - 1)
    mosaic = np.zeros((images[0].shape[0], height, width), np.uint8)  # 0: nodata
    labels = np.full((height, width), IGNORE, np.uint8)
    col = 0
    for stem, image in zip(stems, images, strict=True):
        h, w = image.shape[1:]
        mosaic[:, :h, col:col + w] = np.maximum(image, 1)
        labels[:h, col:col + w] = _read(data / "points" / f"{stem}.png")
        col += w + MOSAIC_GAP
    scene, points, gpkg = (out / "training_images.tif", out / "training_points.tif",
                           out / "suggest.gpkg")
    pixels = Affine(1, 0, 0, 0, -1, 0)
    write_plain_tile(scene, mosaic, band_names=names, nodata=0, transform=pixels)
    write_plain_tile(points, labels[None], nodata=IGNORE, legend=classes, transform=pixels)
    summary = suggest([scene], bundle, gpkg, SuggestOptions(n=SUGGEST_POINTS, labels=(points,),
                                                            seed=seed))
    line = (f"Label where it matters: open {scene} and {gpkg} in QGIS, pick a label for each "
            f"point (rank 1 first), save, then: rsseg finetune --scene {scene} --labels {points} "
            f"--labels {gpkg} --label-column label --classes {data / AERIAL_CLASSES} --init "
            f"{out / 'pretrain'} --config {bundle.parent / 'config.yaml'} --out "
            f"{out / 'finetune_more'}")
    return {"points": summary.points, "per_class": summary.per_class, "gpkg": str(gpkg),
            "style": str(summary.style), "scene": str(scene), "labels": str(points),
            "next": line}


def run_nc(out: Path, seed: int, max_time: float | None, say: Callable[[str], None]) -> dict:
    """NC case: pretrain on the scene's tiles, fine-tune on its sparse pixels, score the map."""
    data = out / "data"
    shutil.copytree(bundled("nc_landsat"), data)
    start = time.perf_counter()
    say("1/4 tiling the Landsat scene")
    tile_scenes([data / NC_SCENE], out / "tiles", TileOptions(**NC_TILE))
    say("2/4 GLCNet pretraining on the unlabelled tiles")
    pretrain(out / "tiles", out / "pretrain", _pretrain_config(NC_PRETRAIN, seed, max_time))
    classes = read_classes(data / NC_CLASSES)
    results: dict = {}
    for step, arm in enumerate(ARMS, 3):
        say(f"{step}/4 fine-tuning on the 2,872 sparse pixels from {arm} init, predicting")
        init = out / "pretrain" if arm == "glcnet" else None
        bundle = finetune(out / f"finetune_{arm}", _finetune_config(NC_FINETUNE, seed),
                          scenes=[data / NC_SCENE], labels=data / NC_SPARSE,
                          classes_file=data / NC_CLASSES, init=init)
        pred = out / f"prediction_{arm}.tif"
        outputs = OutputOptions(preview=out / f"preview_{arm}.png",
                                preview_bands="B3_red,B2_green,B1_blue")
        predict_scene(data / NC_SCENE, bundle, pred, PredictOptions(outputs=outputs))
        scores = evaluate(pred, data / NC_DENSE, exclude=data / NC_SPARSE).scores
        results[arm] = score_record(scores, classes)
    results["verdict"] = verdict(results, "nc")
    results["seconds"] = round(time.perf_counter() - start, 1)
    return results


def score_record(scores: Scores, classes: ClassTable) -> dict:
    """OA, Kappa, mIoU and IoU per class name (null where a class is in neither map)."""
    iou = {classes.name_of(i): (None if not np.isfinite(v) else round(float(v), 4))
           for i, v in zip(scores.class_ids, scores.iou, strict=True) if i in classes.ids}
    return {"oa": float(scores.oa), "kappa": float(scores.kappa), "miou": float(scores.miou),
            "iou": iou}


def verdict(results: dict, case: str) -> str:
    """One line, whatever the numbers: what pretraining added (mIoU points)."""
    gain = 100 * (results["glcnet"]["miou"] - results["random"]["miou"])
    word = "added" if gain >= 0 else "cost"
    return f"GLCNet pretraining {word} {abs(gain):.1f} mIoU points on the {case} case " \
           f"({100 * results['glcnet']['miou']:.1f} vs {100 * results['random']['miou']:.1f})"


def _points(train: Path) -> int:
    return sum(int((_read(p) != IGNORE).sum()) for p in (train / "labels").glob("*.png"))


def _read(path: Path) -> np.ndarray:
    """Band 1 of a raster or PNG as an array (no georeferencing needed)."""
    with open_scene(path) as scene:
        return scene.src.read(1)


def comparison_figure(out: Path, stems: Sequence[str], classes: ClassTable) -> Path:
    """``out/comparison.png``: per held-out image, the image, the reference, random, GLCNet."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    palette = np.zeros((256, 3))
    for c in classes.classes:
        palette[c.id] = np.array(c.color) / 255
    palette[IGNORE] = (1, 1, 1)
    cmap = ListedColormap(palette)
    columns = ("image", "reference", "random init", "GLCNet")
    fig, axes = plt.subplots(len(stems), 4, figsize=(12, 3 * len(stems)), squeeze=False)
    for row, stem in zip(axes, stems, strict=True):
        with open_scene(out / "data" / "images" / f"{stem}.jpg") as scene:
            rgb = scene.src.read().transpose(1, 2, 0)
        maps = [_read(out / "data" / "reference" / f"{stem}.png"),
                _read(out / "prediction_random" / f"{stem}.tif"),
                _read(out / "prediction_glcnet" / f"{stem}.tif")]
        row[0].imshow(rgb)
        for ax, labels in zip(row[1:], maps, strict=True):
            ax.imshow(labels, cmap=cmap, vmin=0, vmax=255, interpolation="nearest")
        for ax, title in zip(row, columns, strict=True):
            ax.set_axis_off()
            ax.set_title(title if stem == stems[0] else "")
    handles = [Patch(color=palette[c.id], label=c.name) for c in classes.classes]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    path = out / "comparison.png"
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
