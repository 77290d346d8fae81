"""GLCNet-init vs random-init fine-tuning on a labelled tile folder, split by tile group.

The paper's low-label protocol on a benchmark of plain image tiles (e.g. the Dubai aerial tiles in
``../shared/data/dubai``): pretrain GLCNet on ALL images without labels, fine-tune with a small
fraction of the labelled tiles of the training groups (from the GLCNet backbone and, with the same
budget, from random init), predict every held-out tile and score them together (one confusion
matrix over all held-out pixels, 255 = unlabelled ignored). Writes JSON.

    python tools/compare_init_tiles.py ../shared/data/dubai --test-groups tile6 --json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from rasterio.windows import Window

from rsseg.classes import IGNORE
from rsseg.config import FinetuneConfig, PretrainConfig, load_config
from rsseg.io.raster import open_scene
from rsseg.labels import read_tile_labels, scan_tiles
from rsseg.metrics import ConfusionAccumulator
from rsseg.pipelines.finetune import finetune
from rsseg.pipelines.predict import PredictOptions, predict_scene
from rsseg.pipelines.pretrain import pretrain
from rsseg.pipelines.tile import TileOptions, tile_scenes


def link_tiles(tiles: list, folder: Path) -> Path:
    """A tile folder (images/ + labels/) of symlinks to ``tiles``."""
    for sub in ("images", "labels"):
        (folder / sub).mkdir(parents=True)
    for t in tiles:
        (folder / "images" / t.image.name).symlink_to(t.image.resolve())
        if t.mask is not None:
            (folder / "labels" / t.mask.name).symlink_to(t.mask.resolve())
    return folder


def score(bundle: Path, tiles: list, work: Path) -> dict:
    """Predict each held-out tile and score all of them in one confusion matrix."""
    acc = ConfusionAccumulator(ignore=(IGNORE,))
    for t in tiles:
        pred = work / f"{t.stem}.tif"
        predict_scene(t.image, bundle, pred, PredictOptions(overwrite=True))
        with open_scene(pred) as p:
            predicted = p.read(Window(0, 0, p.info.width, p.info.height))[0]
        acc.update(predicted, read_tile_labels(t).labels)
    s = acc.scores()
    return {"oa": s.oa, "kappa": s.kappa, "miou": s.miou, "pixels": s.pixels}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--test-groups", default="tile6", help="comma-separated stem prefixes")
    parser.add_argument("--label-fraction", type=float, default=0.05)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--tile", type=int, default=128)
    parser.add_argument("--pretrain-set", action="append", default=[])
    parser.add_argument("--finetune-set", action="append", default=[])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message=".*no CRS/georeferencing.*")

    tiles = scan_tiles(args.folder)
    groups = tuple(args.test_groups.split(","))
    test = [t for t in tiles if t.stem.startswith(groups)]
    train = [t for t in tiles if not t.stem.startswith(groups)]
    results: dict = {"budget": {}, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        start = time.perf_counter()
        tile_scenes([t.image for t in tiles], work / "unlabelled",
                    TileOptions(size=args.tile, stride=args.tile))
        base_pre = ["model.arch=unet", "data.view_size=96", "pretext.params.patch_size=24",
                    "trainer.epochs=4", "trainer.batch_size=16", "trainer.accelerator=cpu"]
        base_ft = ["data.crop_size=96", "trainer.epochs=8", "trainer.steps_per_epoch=25",
                   "trainer.batch_size=8", "optim.lr=0.001", "optim.schedule=cosine",
                   "data.group=tile\\d+", "tile=256", "overlap=32", "trainer.accelerator=cpu"]
        pre_cfg = load_config(PretrainConfig, None, [*base_pre, *args.pretrain_set])
        ft_sets = [*base_ft, f"data.label_fraction={args.label_fraction}", *args.finetune_set]
        results["budget"] = {"pretrain": pre_cfg.model_dump(mode="json"), "finetune": ft_sets,
                             "train_tiles": len(train), "test_tiles": len(test)}
        pretrain(work / "unlabelled", work / "pre", pre_cfg)
        results["budget"]["pretrain_seconds"] = round(time.perf_counter() - start, 1)
        folder = link_tiles(train, work / "train")
        for seed in (int(s) for s in args.seeds.split(",")):
            for name, init in (("glcnet", work / "pre"), ("random", None)):
                cfg = load_config(FinetuneConfig, None, [*ft_sets, f"trainer.seed={seed}"])
                t0 = time.perf_counter()
                bundle = finetune(work / f"ft_{name}_{seed}", cfg, tiles=folder, init=init)
                run = {"init": name, "seed": seed, **score(bundle, test, work),
                       "seconds": round(time.perf_counter() - t0, 1)}
                results["runs"].append(run)
    for name in ("glcnet", "random"):
        runs = [r for r in results["runs"] if r["init"] == name]
        results[name] = {k: float(np.mean([r[k] for r in runs])) for k in ("oa", "kappa", "miou")}
    print(json.dumps(results, indent=2) if args.json else
          {k: results[k] for k in ("glcnet", "random")})


if __name__ == "__main__":
    main()
