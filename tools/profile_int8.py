"""Where a window's time goes in ``--precision int8`` and how far its convolutions run from the
CPU's limit: OpenVINO's per-layer performance counters of the int8 graph and of the fp32 graph it
came from, side by side in one run, and the peak convolution rate this CPU reaches in each
precision, measured.

    python tools/profile_int8.py --tile 896 --threads 2 --isa avx2 --json

The int8 graph is built exactly as ``rsseg predict --precision int8`` builds it (calibrated on
the scene's windows, verified against fp32; a temporary cache), for windows of ``--tile``² of
``--scene`` with ``--model`` or, without them, of bench_predict's synthetic 2048² scene with its
random resnet18 U-Net. Reported (JSON):

- ``ms_per_window``: wall time of one window (batch 1) per graph, median of ``--runs``;
- ``layers``: per graph, per layer type and runtime precision: milliseconds per window (the
  counters' sum, median run), share, and for convolutions GMAC (from the layers' shapes) and
  GMAC/s;
- ``slowest``: the int8 graph's ten slowest layers, each with its MAC rate;
- ``peak_gmac_s``: per precision, the fastest of three large convolutions alone (shapes of the
  U-Net's encoder and a 1x1 GEMM, fp32 and NNCF int8, compiled the same way, each timed by its
  layer counter): what this CPU's kernels reach, the yardstick for the rates above;
- ``conv_share_of_peak``: the model's convolution MACs per window over its convolution time,
  divided by that peak, per precision.

``--isa avx2`` limits oneDNN's and OpenVINO's kernels to AVX2 (bench_predict's ``--isa``).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from bench_predict import ISA_ENV, limit_isa, make_bundle, make_scene

from rsseg.inference.onnx_cache import any_window_graph
from rsseg.inference.openvino_runtime import compile_cpu, require_openvino
from rsseg.inference.quantize import int8_graph, sized
from rsseg.inference.sliding import sample_windows
from rsseg.io.raster import open_scene
from rsseg.models.bundle import load_bundle
from rsseg.models.factory import required_multiple
from rsseg.tiling.blend import layout

WHAT = "tools/profile_int8.py"


def layer_times(compiled, x: np.ndarray, runs: int) -> tuple[float, dict[str, float]]:
    """``(wall ms, {layer name: ms})`` of the median run of ``compiled`` on ``x``."""
    request = compiled.create_infer_request()
    request.infer({0: x})  # warm-up
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        request.infer({0: x})
        wall = (time.perf_counter() - start) * 1e3
        samples.append((wall, {i.node_name: i.real_time.total_seconds() * 1e3
                               for i in request.profiling_info}))
    samples.sort(key=lambda s: s[0])
    return samples[len(samples) // 2]


def layer_table(compiled, times: dict[str, float]) -> list[dict]:
    """Per runtime layer: name, type, precision, kernel, ms and convolution MACs (from the
    layer's output and weight shapes)."""
    rows = []
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = {k: str(v.astype(str)) for k, v in op.get_rt_info().items()}
        kind = info.get("layerType", op.get_type_name())
        macs = 0.0
        if kind == "Convolution" and op.get_input_size() > 1:
            n, out_channels, height, width = op.get_output_shape(0)
            _, per_group, kh, kw = op.input(1).get_shape()
            macs = float(n * out_channels * height * width * per_group * kh * kw)
        rows.append({"name": op.get_friendly_name(), "type": kind,
                     "precision": info.get("runtimePrecision", "?"),
                     "kernel": info.get("primitiveType", "?"),
                     "ms": times.get(op.get_friendly_name(), 0.0), "gmac": macs / 1e9})
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    """Rows added up per (type, precision), slowest first, with share and GMAC/s."""
    groups: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0.0, 0])
    for row in rows:
        group = groups[(row["type"], row["precision"])]
        group[0] += row["ms"]
        group[1] += row["gmac"]
        group[2] += 1
    total = sum(g[0] for g in groups.values()) or 1.0
    return [{"type": kind, "precision": precision, "layers": count, "ms": round(ms, 2),
             "share": round(ms / total, 4), "gmac": round(gmac, 3),
             "gmac_s": round(gmac / ms * 1e3, 1) if gmac and ms else None}
            for (kind, precision), (ms, gmac, count) in sorted(groups.items(),
                                                                key=lambda kv: -kv[1][0])]


PEAK_SHAPES = ((64, 64, 3, 224), (128, 128, 3, 112), (512, 512, 1, 56))  # in, out, k, side


def peak_rates(threads: int, runs: int) -> dict[str, float]:
    """Per precision, GMAC/s of the fastest of :data:`PEAK_SHAPES`' convolutions (fp32, and
    int8 by NNCF), each timed by its own layer counter (the input's quantization excluded)."""
    ov = require_openvino(WHAT)
    import nncf

    rates = {"fp32": 0.0, "int8": 0.0}
    generator = torch.Generator().manual_seed(0)
    for inputs, outputs, kernel, side in PEAK_SHAPES:
        conv = torch.nn.Conv2d(inputs, outputs, kernel, padding=kernel // 2).eval()
        x = torch.randn(1, inputs, side, side, generator=generator)
        fp32 = ov.convert_model(conv, example_input=x)
        data = nncf.Dataset([torch.randn(1, inputs, side, side).numpy() for _ in range(2)])
        with contextlib.redirect_stdout(io.StringIO()):  # NNCF's progress bars
            int8 = nncf.quantize(fp32, data, subset_size=2)
        for name, model in (("fp32", fp32), ("int8", int8)):
            compiled = compile_cpu(model, threads, WHAT, profile=True)
            rows = layer_table(compiled, layer_times(compiled, x.numpy(), runs)[1])
            rates[name] = max(rates[name], *(r["gmac"] / r["ms"] * 1e3 for r in rows
                                             if r["type"] == "Convolution" and r["ms"]))
    return {name: round(rate, 1) for name, rate in rates.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scene", type=Path)
    parser.add_argument("--model", type=Path)
    parser.add_argument("--tile", type=int, default=896)
    parser.add_argument("--overlap", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--isa", choices=sorted(ISA_ENV))
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    limit_isa(args.isa)
    if bool(args.scene) != bool(args.model):
        parser.error("--scene and --model go together")
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="rsseg-profile-") as tmp:
        os.environ["RSSEG_CACHE_DIR"] = tmp
        bundle = args.model or make_bundle(Path(tmp) / "model.rsseg", "unet", "resnet18", 256,
                                           args.overlap)
        scene = args.scene or make_scene(Path(tmp) / "scene.tif", 2048)
        net, meta = load_bundle(bundle)
        with open_scene(scene) as src:
            lay = layout(src.info.height, src.info.width, args.tile, args.overlap,
                         required_multiple(meta.model))
            sample = sample_windows(src, lay, meta.normalise)
        int8 = int8_graph(bundle, net, meta, sample, args.threads)
        x = sample.x
        fp32 = sized(require_openvino(WHAT).Core().read_model(str(any_window_graph(
            bundle, net, meta, WHAT))), *x.shape[2:])
        result = {"model": f"{meta.model.arch}/{meta.model.encoder}",
                  "scene": str(args.scene or "synthetic 2048x2048x3"),
                  "window": list(x.shape[2:]), "threads": args.threads,
                  "cpu": torch.backends.cpu.get_cpu_capability(),
                  "isa_limit": os.environ.get("ONEDNN_MAX_CPU_ISA"),
                  "int8_agreement": round(int8.agreement, 5),
                  "int8_float_convolutions": int8.float_convs,
                  "ms_per_window": {}, "layers": {}, "peak_gmac_s": peak_rates(args.threads,
                                                                               args.runs),
                  "conv_share_of_peak": {}}
        for name, graph in (("fp32", fp32), ("int8", int8.path)):
            compiled = compile_cpu(graph, args.threads, WHAT, profile=True)
            wall, times = layer_times(compiled, x[:1], args.runs)
            rows = layer_table(compiled, times)
            result["ms_per_window"][name] = round(wall, 1)
            result["layers"][name] = summarise(rows)
            convs = [r for r in rows if r["gmac"]]
            rate = sum(r["gmac"] for r in convs) / sum(r["ms"] for r in convs) * 1e3
            result["conv_share_of_peak"][name] = round(rate / result["peak_gmac_s"][name], 3)
            if name == "int8":
                result["slowest"] = [
                    {**{k: r[k] for k in ("name", "precision", "kernel")},
                     "ms": round(r["ms"], 2), "gmac": round(r["gmac"], 3),
                     "gmac_s": round(r["gmac"] / r["ms"] * 1e3, 1) if r["gmac"] else None}
                    for r in sorted(rows, key=lambda r: -r["ms"])[:10]]
    print(json.dumps(result, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
