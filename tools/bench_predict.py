"""Benchmark ``rsseg predict`` per runtime mode against the bare model, eager PyTorch and a naive
whole-scene stitcher, side by side in one run.

    python tools/bench_predict.py --size 2048 --overlap 64 \\
        --modes torch:fp32,onnxruntime:fp32,torch:bf16 --json
    python tools/bench_predict.py --model demo/model.rsseg --scene scene.tif --modes ...
    python tools/bench_predict.py --size 2048 --json \
        --modes torch:fp32,openvino:fp32,openvino:int8,torch:fp32@auto,openvino:int8@auto

Without ``--model``/``--scene`` it generates a 3-band uint8 scene (tiled, DEFLATE) of ``--size``²
and a randomly initialised bundle (resnet18 U-Net by default). All speeds are scene megapixels
per second over the same windows (tile ``--tile``, overlap ``--overlap``):

- ``eager_mpx_s``: the plain fp32 module (NCHW, no channels-last), model and softmax alone on
  in-memory batches: what peers run;
- per mode (``backend:precision``): ``bare_mpx_s`` (the mode's runner + softmax alone on the same
  in-memory batches), ``predict_mpx_s`` (end-to-end ``predict_scene``: reading, blending, writing
  the COG; bundle loading excluded), ``ratio`` = predict / bare, ``speedup`` = predict / eager,
  ``agreement`` (share of valid pixels whose class equals the ``torch:fp32`` prediction),
  ``max_abs_logit_diff`` (vs fp32 PyTorch on one batch), ``rss_mb`` (peak RSS of ``rsseg
  predict`` run as a subprocess on the ``--rss-size`` scene, with its wall time ``rss_run_s``:
  a first run, with an empty ``RSSEG_CACHE_DIR``) and ``rss_cached_mb``/``rss_cached_run_s``
  (the same run again, its ONNX and int8 graphs cached);
- ``peer_mpx_s``/``peer_rss_mb``: a naive stitcher (whole scene read into memory, eager fp32,
  full-scene probability sums, argmax at the end) on the same model and scene, as a subprocess.

A mode is ``backend:precision`` (``openvino:int8``: calibrated on the scene's windows, its
``calibration_agreement`` reported), optionally ``@auto`` or ``@N`` for its window side
(``--tile auto``: the largest window fitting ``--max-memory``; ``tile`` and ``work`` — window
pixels per scene pixel — are reported). Every agreement is against ``torch:fp32`` at ``--tile``,
so a ``@auto`` row shows what the larger windows change. With ``--reference`` (a dense class
raster on the scene's grid, e.g. the NC 1996 map; ``--exclude`` its training pixels) each mode
gets ``kappa`` and ``kappa_diff`` (minus torch:fp32's).

Modes the machine cannot run (e.g. bf16 without native support) are reported with their error.

``--isa avx2`` measures a CPU without AVX-512 and VNNI on a CPU with them: the run (and every
child process) is re-executed with ``ONEDNN_MAX_CPU_ISA=AVX2`` (oneDNN in PyTorch and OpenVINO's
CPU plugin: AVX2 kernels, int8 through ``vpmaddubsw`` instead of ``vpdpbusd``) and
``ATEN_CPU_CAPABILITY=avx2`` (PyTorch's own kernels). ONNX Runtime picks its kernels from CPUID
and cannot be limited, so its modes are refused under ``--isa``.
"""

from __future__ import annotations

import argparse
import json
import os
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

from rsseg.errors import RssegError
from rsseg.inference.device import resolve_device
from rsseg.inference.runtime import (
    RuntimeOptions,
    auto_batch_size,
    build_runner,
    torch_threads,
)
from rsseg.inference.sliding import sample_windows
from rsseg.io.raster import open_scene
from rsseg.models.bundle import BundleMeta, load_bundle, save_bundle
from rsseg.models.factory import ModelSpec, build_model, required_multiple
from rsseg.pipelines.evaluate import evaluate
from rsseg.pipelines.predict import PredictOptions, predict_scene, predict_windows
from rsseg.tiling.blend import Layout, layout

BANDS = 3
CLASSES = 6
# --isa: the environment limiting PyTorch's and OpenVINO's kernels to an instruction set.
ISA_ENV = {"avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}}


def limit_isa(isa: str | None) -> None:
    """Re-execute this process with :data:`ISA_ENV` of ``isa`` set, unless it already is: the
    kernels are chosen when torch and OpenVINO load."""
    if isa and any(os.environ.get(k) != v for k, v in ISA_ENV[isa].items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], os.environ | ISA_ENV[isa])


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


def batch_sizes(lay: Layout, batch_size: int) -> list[int]:
    """The batch sizes predict feeds the model (batches run across window rows)."""
    full, rest = divmod(lay.count, batch_size)
    return [batch_size] * full + ([rest] if rest else [])


@torch.inference_mode()
def model_seconds(run, shape: tuple[int, int, int], sizes: list[int]) -> float:
    """Seconds for ``run`` (batch → probabilities on the host) over batches of ``sizes``."""
    rng = np.random.default_rng(0)
    inputs = {n: rng.normal(size=(n, *shape)).astype(np.float32) for n in set(sizes)}
    run(inputs[sizes[0]])  # warm-up (oneDNN primitives, ONNX Runtime arenas, cuDNN plans)
    start = time.perf_counter()
    for n in sizes:
        run(inputs[n])
    return time.perf_counter() - start


def probabilities(runner):
    return lambda x: runner(x).float().softmax(dim=1).cpu().numpy()


def eager(net: torch.nn.Module, device: torch.device):
    """The plain module: fp32, NCHW, blocking copies."""
    net = net.to(device).eval()
    return lambda x: net(torch.from_numpy(x).to(device)).softmax(dim=1).cpu().numpy()


@torch.inference_mode()
def max_logit_diff(runner, net: torch.nn.Module, shape: tuple[int, int, int]) -> float:
    x = np.random.default_rng(1).normal(size=(2, *shape)).astype(np.float32)
    want = net.cpu().eval()(torch.from_numpy(x))
    return float((runner(x).float().cpu() - want).abs().max())


# Runs a command line (``rsseg predict`` or the peer) and, at exit, prints the process's peak RSS
# (Linux VmHWM) and wall time. Unlike getrusage, VmHWM belongs to the new process image, so the
# bench's own memory at fork time does not leak into the figure.
_CHILD = """
import atexit, sys, time
start = time.perf_counter()
def report():
    hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0]
    sys.stderr.write("PEAK_RSS_KB " + hwm.split()[1] + "\\n")
    sys.stderr.write("WALL_S " + str(time.perf_counter() - start) + "\\n")
atexit.register(report)
sys.argv = sys.argv[1:]
if sys.argv[0] == "predict":
    from rsseg.cli import main
    sys.argv.insert(0, "rsseg")
    main()
else:
    import runpy
    runpy.run_path(sys.argv[0], run_name="__main__")
"""


def child_run(args: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """``(peak RSS MB, wall seconds)`` of ``args`` run in a fresh Python process (with ``env``
    added to the environment)."""
    proc = subprocess.run([sys.executable, "-c", _CHILD, *args], stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, check=False,
                          env=os.environ | (env or {}))
    lines = dict(line.split(" ", 1) for line in proc.stderr.splitlines()
                 if line.startswith(("PEAK_RSS_KB ", "WALL_S ")))
    if proc.returncode or "PEAK_RSS_KB" not in lines:
        raise SystemExit(f"{args[0]} failed: {proc.stderr.strip()[-2000:]}")
    return int(lines["PEAK_RSS_KB"]) / 1024, float(lines["WALL_S"])


def peer_predict(scene: Path, bundle: Path, out: Path, tile: int, overlap: int,
                 batch_size: int, device: str) -> None:
    """The naive peer: whole scene in memory, eager fp32, full-scene sums, argmax at the end."""
    net, meta = load_bundle(bundle)
    net = net.to(device).eval()
    with rasterio.open(scene) as src:
        image = meta.normalise(src.read())
        profile = src.profile
    height, width = image.shape[1:]
    lay = layout(height, width, tile, overlap, required_multiple(meta.model))
    sums = np.zeros((meta.model.classes, height, width), dtype=np.float32)
    counts = np.zeros((height, width), dtype=np.float32)
    windows = [(r, c) for r in lay.rows for c in lay.cols]
    with torch.inference_mode():
        for start in range(0, len(windows), batch_size):
            chunk = windows[start:start + batch_size]
            x = np.stack([image[:, r:r + tile, c:c + tile] for r, c in chunk])
            probs = net(torch.from_numpy(x).to(device)).softmax(dim=1).cpu().numpy()
            for (r, c), p in zip(chunk, probs, strict=True):
                sums[:, r:r + tile, c:c + tile] += p
                counts[r:r + tile, c:c + tile] += 1
    classes = np.argmax(sums / counts, axis=0).astype(np.uint8)
    profile.update(count=1, dtype="uint8", nodata=255)
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(classes, 1)


def bench_mode(mode: str, bundle: Path, scene: Path, rss_scene: Path, folder: Path,
               args: argparse.Namespace, reference: np.ndarray | None) -> tuple[dict, np.ndarray]:
    """One mode's figures and its class raster."""
    spec, _, tile = mode.partition("@")
    backend, precision = spec.split(":")
    if args.isa and backend == "onnxruntime":
        raise RssegError(f"--isa {args.isa}: ONNX Runtime picks its kernels from CPUID and "
                         "cannot be limited to an instruction set")
    options = RuntimeOptions(backend=backend, precision=precision, threads=args.threads)
    device = resolve_device(args.device)
    net, meta = load_bundle(bundle)
    tile = tile or str(args.tile)
    with rasterio.open(scene) as src:
        height, width = src.height, src.width
    window, overlap, multiple, _ = predict_windows(meta, PredictOptions(
        tile=tile, overlap=args.overlap, batch_size=args.batch_size,
        max_memory=args.max_memory), height, width)
    lay = layout(height, width, window, overlap, multiple)
    shape = (len(meta.bands), lay.win_h, lay.win_w)
    with torch_threads(args.threads), open_scene(scene) as src:
        runner = build_runner(net, meta, bundle, device, options, (lay.win_h, lay.win_w),
                              lambda: sample_windows(src, lay, meta.normalise))
        batch = args.batch_size or auto_batch_size(runner, device, shape, lay.count)
        bare_s = min(model_seconds(probabilities(runner), shape, batch_sizes(lay, batch))
                     for _ in range(args.repeat))
        diff = max_logit_diff(runner, load_bundle(bundle)[0], shape)
    predict_s = float("inf")
    out = folder / f"pred_{backend}_{precision}_{tile}.tif"
    notes: list[str] = []
    for _ in range(args.repeat):
        summary = predict_scene(scene, bundle, out, PredictOptions(  # same batch and windows
            tile=tile, overlap=args.overlap, batch_size=args.batch_size, device=args.device,
            overwrite=True, runtime=options, max_memory=args.max_memory), notify=notes.append)
        predict_s = min(predict_s, summary.seconds)
    with rasterio.open(out) as pred:
        classes = pred.read(1)
    pixels = height * width / 1e6
    result = {"batch_size": batch, "bare_mpx_s": round(pixels / bare_s, 4),
              "predict_mpx_s": round(pixels / predict_s, 4),
              "ratio": round(bare_s / predict_s, 3), "max_abs_logit_diff": float(f"{diff:.3g}"),
              "tile": window, "work": round(lay.count * lay.win_h * lay.win_w / height / width, 3)}
    agreement = [n for n in notes if n.startswith("int8: agrees with fp32 on ")]
    if agreement:
        result["calibration_agreement"] = agreement[0].split()[5]
    if reference is not None:
        valid = reference != 255
        result["agreement"] = round(float((classes[valid] == reference[valid]).mean()), 5)
    if args.reference:
        result["kappa"] = round(evaluate(out, args.reference, exclude=args.exclude).scores.kappa,
                                5)
    if args.rss_modes and mode not in args.rss_modes.split(","):
        return result, classes
    flags = ["--backend", backend, "--precision", precision, "--max-memory", str(args.max_memory)]
    for flag, value in (("--batch-size", args.batch_size), ("--threads", args.threads)):
        if value:  # as given: a batch size changes the windows --tile auto picks
            flags += [flag, str(value)]
    cache = folder / f"cache-{mode.replace(':', '-')}"  # empty: a first run exports everything
    for suffix in ("", "_cached"):
        rss, wall = child_run(["predict", str(rss_scene), "--model", str(bundle), "--out",
                               str(folder / "rss_pred.tif"), "--overwrite", "--tile", tile,
                               "--overlap", str(args.overlap), "--device", args.device, *flags],
                              {"RSSEG_CACHE_DIR": str(cache)})
        result.update({f"rss{suffix}_mb": round(rss, 1), f"rss{suffix}_run_s": round(wall, 1)})
    return result, classes


def run(args: argparse.Namespace) -> dict:
    modes = [m.strip() for m in args.modes.split(",")]
    if "torch:fp32" not in modes:
        modes.insert(0, "torch:fp32")  # the reference of every agreement
    modes.sort(key=lambda m: m != "torch:fp32")
    with tempfile.TemporaryDirectory(prefix="rsseg-bench-") as tmp:
        folder = Path(tmp)
        bundle = args.model or make_bundle(folder / "model.rsseg", args.arch, args.encoder,
                                           args.tile, args.overlap)
        scene = args.scene or make_scene(folder / "scene.tif", args.size)
        rss_scene = scene if not args.rss_size else make_scene(folder / "rss_scene.tif",
                                                               args.rss_size)
        net, meta = load_bundle(bundle)
        with rasterio.open(scene) as src:
            height, width = src.height, src.width
        lay = layout(height, width, args.tile, args.overlap, required_multiple(meta.model))
        shape = (len(meta.bands), lay.win_h, lay.win_w)
        device = resolve_device(args.device)
        with torch_threads(args.threads):
            eager_s = min(model_seconds(eager(net, device), shape,
                                        batch_sizes(lay, args.batch_size or 8))
                          for _ in range(args.repeat))
        eager_mpx = height * width / 1e6 / eager_s
        result = {"scene": str(args.scene or f"synthetic {args.size}x{args.size}x{BANDS}"),
                  "model": f"{meta.model.arch}/{meta.model.encoder}", "tile": args.tile,
                  "overlap": args.overlap, "windows": lay.count, "device": str(device),
                  "threads": args.threads or torch.get_num_threads(),
                  "cpu": torch.backends.cpu.get_cpu_capability(),
                  "isa_limit": os.environ.get("ONEDNN_MAX_CPU_ISA"),
                  "rss_scene": f"{args.rss_size}x{args.rss_size}" if args.rss_size else "scene",
                  "eager_mpx_s": round(eager_mpx, 4), "modes": {}}
        reference = None
        for mode in modes:
            try:
                figures, classes = bench_mode(mode, bundle, scene, rss_scene, folder, args,
                                              reference)
            except RssegError as err:
                result["modes"][mode] = {"error": str(err)}
                continue
            figures["speedup"] = round(figures["predict_mpx_s"] / eager_mpx, 3)
            result["modes"][mode] = figures
            if mode == "torch:fp32":
                reference = classes
        peer_rss, peer_s = child_run([__file__, "--peer-run", str(scene), str(bundle),
                                      str(folder / "peer.tif"), str(args.tile),
                                      str(args.overlap), str(args.batch_size or 8),
                                      args.device])
        result.update(peer_mpx_s=round(height * width / 1e6 / peer_s, 4),
                      peer_rss_mb=round(peer_rss, 1))
        for figures in result["modes"].values():
            if "predict_mpx_s" in figures:
                figures["vs_peer"] = round(figures["predict_mpx_s"] / result["peer_mpx_s"], 3)
            if "kappa" in figures and "kappa" in result["modes"]["torch:fp32"]:
                figures["kappa_diff"] = round(
                    figures["kappa"] - result["modes"]["torch:fp32"]["kappa"], 5)
    return result


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--peer-run":
        scene, bundle, out, tile, overlap, batch, device = sys.argv[2:9]
        peer_predict(Path(scene), Path(bundle), Path(out), int(tile), int(overlap), int(batch),
                     device)
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048, help="side of the synthetic scene")
    parser.add_argument("--scene", type=Path, help="a real scene instead (with --model)")
    parser.add_argument("--model", type=Path, help="a trained bundle instead of random weights")
    parser.add_argument("--rss-size", type=int, default=None,
                        help="side of the synthetic scene for the peak-RSS runs [default: the "
                             "timed scene]")
    parser.add_argument("--modes", default="torch:fp32,onnxruntime:fp32,torch:bf16",
                        help="comma-separated backend:precision")
    parser.add_argument("--rss-modes", default=None,
                        help="modes whose peak RSS is measured [default: every mode]")
    parser.add_argument("--arch", default="unet")
    parser.add_argument("--encoder", default="resnet18")
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=64)
    parser.add_argument("--max-memory", default="1G", help="for the @auto modes' windows")
    parser.add_argument("--reference", type=Path,
                        help="dense class raster on the scene's grid: Kappa per mode")
    parser.add_argument("--exclude", type=Path, help="with --reference: pixels not scored "
                        "(e.g. the training pixels)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="[default: 2 on CPU, automatic on GPU; eager: 8]")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=1,
                        help="time each measurement N times, keep the best")
    parser.add_argument("--isa", choices=sorted(ISA_ENV),
                        help="limit PyTorch's and OpenVINO's kernels to this instruction set "
                             "(measures an older CPU on a newer one)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    limit_isa(args.isa)
    if bool(args.scene) != bool(args.model):
        parser.error("--scene and --model go together")
    result = run(args)
    print(json.dumps(result, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
