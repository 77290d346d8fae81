"""Benchmark ``rsseg predict`` against the bare model on the same windows, and its peak memory.

    python tools/bench_predict.py --size 4096 --sizes 4096,8192 --json

Generates a 3-band uint8 scene (tiled, DEFLATE) and a randomly initialised bundle (resnet18 U-Net
by default), then in one run measures:

- ``bare_mpx_s``: the model alone on in-memory batches with exactly the shapes predict feeds it
  (window pixels per second);
- ``predict_mpx_s``: end-to-end ``predict_scene`` (bundle loading, reading, blending, writing the
  COG), counting each scene pixel once; ``ratio`` = predict / bare;
- ``rss_mb``: peak RSS of ``rsseg predict`` run as a subprocess, for each size of ``--sizes``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.transform import from_origin
from rasterio.windows import Window

from rsseg.models.bundle import BundleMeta, load_bundle, save_bundle
from rsseg.models.factory import ModelSpec, build_model, required_multiple
from rsseg.pipelines.predict import PredictOptions, predict_scene
from rsseg.tiling.blend import layout

BANDS = 3
CLASSES = 6


def make_scene(path: Path, size: int, seed: int = 0) -> Path:
    """A ``size`` × ``size`` 3-band uint8 GeoTIFF (256² tiles, DEFLATE), written block row by
    block row: smooth structure plus noise."""
    rng = np.random.default_rng(seed)
    profile = {"driver": "GTiff", "width": size, "height": size, "count": BANDS,
               "dtype": "uint8", "crs": "EPSG:32633", "transform": from_origin(0, 0, 10, 10),
               "nodata": 0, "tiled": True, "blockxsize": 256, "blockysize": 256,
               "compress": "deflate"}
    cols = np.arange(size)
    with rasterio.open(path, "w", **profile) as dst:
        for top in range(0, size, 256):
            rows = np.arange(top, min(top + 256, size))[:, None]
            base = 100 + 60 * np.sin(rows / 97.0) * np.cos(cols / 131.0)
            noise = rng.normal(0, 20, (BANDS, len(rows), size))
            block = np.clip(base + noise + np.arange(BANDS)[:, None, None] * 10, 1, 255)
            dst.write(block.astype(np.uint8), window=Window(0, top, size, len(rows)))
    return path


def make_bundle(path: Path, arch: str, encoder: str, tile: int, overlap: int) -> Path:
    """A randomly initialised (seeded) 3-band, 6-class bundle."""
    torch.manual_seed(0)
    spec = ModelSpec(arch=arch, encoder=encoder, in_channels=BANDS, classes=CLASSES)
    meta = BundleMeta(
        model=spec, tile=tile, overlap=overlap,
        bands=[{"name": f"B{i + 1}", "mean": 110.0, "std": 45.0} for i in range(BANDS)],
        classes=[{"id": i, "name": f"class {i}", "color": (40 * i, 200 - 30 * i, 90)}
                 for i in range(CLASSES)])
    return save_bundle(path, build_model(spec), meta)


@torch.inference_mode()
def bare_model_seconds(bundle: Path, size: int, tile: int, overlap: int,
                       batch_size: int) -> tuple[float, int]:
    """Seconds for the model alone over the batch shapes predict uses; window pixels done."""
    model, meta = load_bundle(bundle)
    lay = layout(size, size, tile, overlap, required_multiple(meta.model))
    per_row = [min(batch_size, len(lay.cols) - s) for s in range(0, len(lay.cols), batch_size)]
    batches = per_row * len(lay.rows)
    inputs = {n: torch.randn(n, BANDS, lay.win_h, lay.win_w) for n in set(batches)}
    model(inputs[batches[0]])  # warm-up (oneDNN primitive creation)
    start = time.perf_counter()
    for n in batches:
        model(inputs[n])
    return time.perf_counter() - start, sum(batches) * lay.win_h * lay.win_w


# Runs ``rsseg predict`` and, at exit, prints the process's peak RSS (Linux VmHWM). Unlike
# getrusage, VmHWM belongs to the new process image, so the bench's own (large) memory at fork
# time does not leak into the figure.
_CHILD = """
import atexit, sys
def report():
    hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0]
    sys.stderr.write("PEAK_RSS_KB " + hwm.split()[1] + "\\n")
atexit.register(report)
from rsseg.cli import main
main()
"""


def peak_rss_mb(scene: Path, bundle: Path, out: Path, options: PredictOptions) -> float:
    """Peak RSS in MB of ``rsseg predict`` run in a fresh subprocess."""
    cmd = [sys.executable, "-c", _CHILD, "predict", str(scene), "--model", str(bundle),
           "--out", str(out), "--overwrite", "--tile", str(options.tile),
           "--overlap", str(options.overlap), "--batch-size", str(options.batch_size),
           "--device", options.device]
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          check=False)
    peak = [line for line in proc.stderr.splitlines() if line.startswith("PEAK_RSS_KB ")]
    if proc.returncode or not peak:
        raise SystemExit(f"rsseg predict failed: {proc.stderr.strip()}")
    return int(peak[-1].split()[1]) / 1024


def run(args: argparse.Namespace) -> dict:
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else [args.size]
    options = PredictOptions(tile=args.tile, overlap=args.overlap, batch_size=args.batch_size,
                             device="cpu", overwrite=True)
    with tempfile.TemporaryDirectory(prefix="rsseg-bench-") as tmp:
        folder = Path(tmp)
        bundle = make_bundle(folder / "model.rsseg", args.arch, args.encoder, args.tile,
                             args.overlap)
        scenes = {n: make_scene(folder / f"scene_{n}.tif", n) for n in {args.size, *sizes}}
        bare_s, predict_s = float("inf"), float("inf")
        for _ in range(args.repeat):
            seconds, window_px = bare_model_seconds(bundle, args.size, args.tile, args.overlap,
                                                    args.batch_size)
            bare_s = min(bare_s, seconds)
            start = time.perf_counter()
            summary = predict_scene(scenes[args.size], bundle, folder / "pred.tif", options)
            predict_s = min(predict_s, time.perf_counter() - start)
        rss = {str(n): round(peak_rss_mb(scenes[n], bundle, folder / f"pred_{n}.tif", options), 1)
               for n in sizes}
    bare = window_px / 1e6 / bare_s
    end_to_end = args.size**2 / 1e6 / predict_s
    result = {
        "size": args.size, "arch": args.arch, "encoder": args.encoder, "tile": args.tile,
        "overlap": args.overlap, "batch_size": args.batch_size, "threads": torch.get_num_threads(),
        "windows": summary.windows, "bare_s": round(bare_s, 2), "predict_s": round(predict_s, 2),
        "bare_mpx_s": round(bare, 4), "predict_mpx_s": round(end_to_end, 4),
        "ratio": round(end_to_end / bare, 3), "rss_mb": rss,
    }
    if len(sizes) > 1:
        result["rss_growth"] = round(rss[str(sizes[-1])] / rss[str(sizes[0])] - 1, 3)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096, help="side of the timed scene")
    parser.add_argument("--sizes", default=None,
                        help="comma-separated scene sides for peak RSS, e.g. 4096,8192 "
                             "[default: --size]")
    parser.add_argument("--arch", default="unet",
                        help="model architecture; 'pixel' (1x1 conv) isolates pipeline overhead")
    parser.add_argument("--encoder", default="resnet18")
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=1,
                        help="time bare model and predict N times each, keep the best")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    result = run(args)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>14}: {value}")


if __name__ == "__main__":
    main()
