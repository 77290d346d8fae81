"""Accuracy where a scene misses some of its bands, against where it holds all of them.

Nodata is per band (README): a pixel missing only some bands (past the edge of one band's
footprint, like Landsat 7's band 7 frame) is still predicted. This scores a class raster
separately on those pixels and on the complete ones, against a reference map::

    python tools/eval_partial_nodata.py PRED.tif SCENE.tif REFERENCE.tif --min-col 244 --json

``--min-col``/``--exclude`` restrict the scoring to a test area (e.g. the demo's right half) and
drop training pixels. Reads whole rasters: meant for scenes that fit in memory.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from rasterio.windows import Window

from rsseg.io.raster import open_scene
from rsseg.metrics import ConfusionAccumulator


def _read(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """All pixels ``(C, H, W)`` and where each band value is missing."""
    with open_scene(path) as scene:
        info = scene.info
        pixels = scene.read(Window(0, 0, info.width, info.height))
        return pixels, scene.band_missing(pixels)


def scores(pred: Path, scene: Path, reference: Path, min_col: int = 0,
           exclude: Path | None = None) -> dict[str, dict[str, float]]:
    """OA/Kappa/mIoU on pixels missing some bands (``partial``) and on complete ones."""
    _, scene_missing = _read(scene)
    (pred_ids,), pred_missing = _read(pred)
    (ref_ids,), ref_missing = _read(reference)
    area = ~pred_missing[0] & ~ref_missing[0]
    area[:, :min_col] = False
    if exclude is not None:
        (labelled,), unlabelled = _read(exclude)
        area &= unlabelled[0] | (labelled == 0)
    result = {}
    for name, mask in (("partial", scene_missing.any(0) & ~scene_missing.all(0)),
                       ("complete", ~scene_missing.any(0))):
        acc = ConfusionAccumulator()
        acc.update(pred_ids, ref_ids, area & mask)
        s = acc.scores()
        result[name] = {"pixels": s.pixels, "oa": round(s.oa, 4), "kappa": round(s.kappa, 4),
                        "miou": round(s.miou, 4)}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pred", type=Path)
    parser.add_argument("scene", type=Path)
    parser.add_argument("reference", type=Path)
    parser.add_argument("--min-col", type=int, default=0, help="score columns >= this only")
    parser.add_argument("--exclude", type=Path, help="raster of training pixels to leave out")
    parser.add_argument("--json", action="store_true", help="print JSON only")
    args = parser.parse_args()
    result = scores(args.pred, args.scene, args.reference, args.min_col, args.exclude)
    if args.json:
        print(json.dumps(result))
        return
    for name, s in result.items():
        print(f"{name:9s} pixels {s['pixels']:8d}  OA {s['oa']:.3f}  Kappa {s['kappa']:.3f}  "
              f"mIoU {s['miou']:.3f}")


if __name__ == "__main__":
    main()
