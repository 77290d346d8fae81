"""Build the aerial demo set bundled in ``rsseg/data/dubai_aerial`` from the CC0 Dubai tiles.

Run once (its output is committed): ``python tools/bundle_aerial_demo.py [DUBAI_FOLDER]``.
Training images get ``POINTS`` labelled pixels each, drawn uniformly among their labelled pixels
with a fixed seed (the clicks an analyst would make); the held-out images keep their dense labels
in ``reference/``, which training never reads. All images are pretraining input.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "rsseg" / "data" / "dubai_aerial"
TRAIN = ("tile1_image_part_008", "tile1_image_part_009", "tile2_image_part_001",
         "tile2_image_part_005", "tile2_image_part_007", "tile3_image_part_003",
         "tile3_image_part_006", "tile4_image_part_003")
TEST = ("tile2_image_part_002", "tile2_image_part_009", "tile4_image_part_001",
        "tile6_image_part_004")
POINTS, SEED, IGNORE = 20, 0, 255


def main(source: Path) -> None:
    rng = np.random.default_rng(SEED)
    for sub in ("images", "points", "reference"):
        shutil.rmtree(OUT / sub, ignore_errors=True)
        (OUT / sub).mkdir(parents=True)
    for stem in (*TRAIN, *TEST):
        shutil.copy(source / "images" / f"{stem}.jpg", OUT / "images" / f"{stem}.jpg")
        labels = np.array(Image.open(source / "labels" / f"{stem}.png"))
        if stem in TEST:
            Image.fromarray(labels).save(OUT / "reference" / f"{stem}.png")
            continue
        labelled = np.flatnonzero(labels != IGNORE)
        keep = rng.choice(labelled, POINTS, replace=False)
        points = np.full(labels.shape, IGNORE, np.uint8)
        points.flat[keep] = labels.flat[keep]
        Image.fromarray(points).save(OUT / "points" / f"{stem}.png")
    classes = (ROOT / "configs" / "classes_dubai.yaml").read_text().splitlines()
    header = "# Classes of the bundled Dubai aerial images (see ATTRIBUTION.md); 255 = unlabelled."
    (OUT / "classes_dubai.yaml").write_text("\n".join([header, *classes[1:]]) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared" / "data" / "dubai")
