"""Bare-model throughput of the CPU runtimes rsseg uses and of those it does not, side by side.

Why predict runs what it runs (docs/performance.md): for one randomly initialised model and the
same input, the model alone (no reading, blending or writing) as

- ``eager``: the plain module, NCHW (the baseline);
- ``channels_last``: the module in channels-last memory format;
- ``folded``: channels-last with BatchNorm folded into the convolutions — what ``--backend
  torch`` runs;
- ``onnxruntime``: what ``--backend onnxruntime`` runs (the graph exported as rsseg exports it);
- ``openvino``: what ``--backend openvino`` runs: the same ONNX graph compiled by OpenVINO (f32,
  latency hint); needs ``pip install 'rsseg[openvino]'``;
- ``onnxruntime_int8``: the int8 path rsseg had before it moved to OpenVINO — ONNX Runtime static
  QDQ quantization (per-channel int8 weights, uint8 activations, min/max ranges, 7-bit weights
  on CPUs without VNNI) with only the first and last convolutions float, calibrated on the
  benchmark's input;
- ``openvino_int8``: ``--precision int8``'s cheapest graph — the same fp32 graph quantized by
  NNCF (:func:`rsseg.inference.quantize.quantize_graph`) with the same two convolutions float,
  calibrated on the same input, compiled by OpenVINO; neither int8 graph gets the 99 %
  agreement check here;
- ``jit_frozen``: ``torch.jit.trace`` + ``torch.jit.freeze`` of the channels-last model
  (Conv-BN folding, pre-packed oneDNN weights) — not used: deprecated in PyTorch 2.x;
- ``compiled``: ``torch.compile`` (inductor, weight freezing) of the channels-last model — not
  used: a 10–25 s compile per process and shape, and a C++ compiler at run time.

For the int8 candidates the result also gives ``agreement``: the share of pixels whose class
equals the eager model's on the benchmark's input (a random model's logits are close together,
so this is a floor for real models). Rounds alternate between the candidates so that drift on a
shared machine hits all of them alike; each figure is the best round. Also reports the share of
ONNX Runtime's time per operator type. Mpx/s here are *window* pixels (bench_predict reports scene
pixels). Example::

    python tools/bench_runtimes.py --batch-sizes 2,8 --json
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from bench_predict import BANDS, make_bundle

from rsseg.inference.onnx_cache import runtime_graph
from rsseg.inference.openvino_runtime import (
    OvRunner,
    compile_cpu,
    require_openvino,
    window_classes,
)
from rsseg.inference.quantize import quantize_graph
from rsseg.inference.runtime import OrtRunner, TorchRunner, torch_threads
from rsseg.models.bundle import load_bundle
from rsseg.models.onnx_export import require_onnx

CANDIDATES = ("eager", "channels_last", "folded", "onnxruntime", "openvino", "onnxruntime_int8",
              "openvino_int8", "jit_frozen", "compiled")
OPTIONAL = ("openvino", "openvino_int8")  # not installed with rsseg: asked for by name


def candidates(bundle: Path, x: np.ndarray, names: list[str], threads: int, tmp: str
               ) -> dict[str, Callable[[], object]]:
    """Zero-argument calls running the model of ``bundle`` on ``x`` ``(B, C, H, W)``, each
    returning the logits (``tmp``: a folder for the int8 graphs)."""
    nchw = torch.from_numpy(x)
    cl_input = nchw.contiguous(memory_format=torch.channels_last)
    calls: dict[str, Callable[[], object]] = {}
    for name in names:
        net, meta = load_bundle(bundle)  # a fresh copy per candidate: conversions stay apart
        net.eval()
        if name == "eager":
            calls[name] = lambda net=net: net(nchw)
        elif name in ("channels_last", "folded"):
            runner = TorchRunner(net, torch.device("cpu"),
                                 sample_shape=x.shape[1:] if name == "folded" else None)
            calls[name] = lambda runner=runner: runner(x)
        elif name == "onnxruntime":
            runner = OrtRunner(runtime_graph(bundle, net, meta, *x.shape[2:]), threads)
            calls[name] = lambda runner=runner: runner(x)
        elif name == "onnxruntime_int8":
            runner = OrtRunner(ort_int8_graph(bundle, net, meta, x, threads, Path(tmp)), threads)
            calls[name] = lambda runner=runner: runner(x)
        elif name in ("openvino", "openvino_int8"):
            graph = runtime_graph(bundle, net, meta, *x.shape[2:])
            if name == "openvino_int8":
                valid = np.ones((len(x), *x.shape[2:]), dtype=bool)
                reference = window_classes(compile_cpu(graph, threads), x)
                graph, _, _ = quantize_graph(require_openvino(name).Core().read_model(
                    str(graph)), x, x, valid, reference, threads, tails=(1,))
            runner = OvRunner(graph, threads)
            calls[name] = lambda runner=runner: runner(x)
        elif name == "jit_frozen":
            cl_net = net.to(memory_format=torch.channels_last)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # deprecation notices
                frozen = torch.jit.freeze(torch.jit.trace(cl_net, cl_input))
            calls[name] = lambda frozen=frozen: frozen(cl_input)
        elif name == "compiled":
            import torch._inductor.config as inductor

            inductor.freezing = True
            compiled = torch.compile(net.to(memory_format=torch.channels_last), dynamic=False)
            calls[name] = lambda compiled=compiled: compiled(cl_input)
        else:
            raise SystemExit(f"unknown candidate {name!r}; use some of {', '.join(CANDIDATES)}")
    return calls


def ort_int8_graph(bundle: Path, net: torch.nn.Module, meta, x: np.ndarray, threads: int,
                   tmp: Path) -> Path:
    """ONNX Runtime's QDQ int8 graph of the bundle with only the first and last convolutions
    float, calibrated on ``x`` (min/max), for windows like ``x``."""
    onnx, _ = require_onnx("bench_runtimes")
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Windows(CalibrationDataReader):
        def __init__(self) -> None:
            self.windows = iter([{"input": x[k:k + 1]} for k in range(len(x))])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.windows, None)

    fp32 = runtime_graph(bundle, net, meta, *x.shape[2:])
    convs = [n.name for n in onnx.load(str(fp32)).graph.node if n.op_type == "Conv"]
    graph = tmp / f"int8_{len(x)}.onnx"
    quantize_static(str(fp32), str(graph), Windows(), quant_format=QuantFormat.QDQ,
                    per_channel=True, reduce_range=not has_vnni(),
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    nodes_to_exclude=[convs[0], convs[-1]])
    return graph


def has_vnni() -> bool:
    """Whether the CPU has VNNI (int8 dot products without saturation); False when unknown."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return any(flag in flags for flag in ("avx512_vnni", "avx_vnni", "amx_int8"))


def classes(logits: object) -> np.ndarray:
    """``(B, H, W)`` argmax of a candidate's logits (a tensor or an array)."""
    return np.asarray(logits).argmax(axis=1)


def profiled_session(graph: Path, threads: int, prefix: Path):
    """An ONNX Runtime session like :class:`OrtRunner`'s, with profiling on."""
    _, ort = require_onnx("bench_runtimes")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.enable_profiling = True
    opts.profile_file_prefix = str(prefix)
    return ort.InferenceSession(str(graph), opts, providers=["CPUExecutionProvider"])


def op_shares(session, x: np.ndarray, runs: int = 4) -> dict[str, float]:
    """Share of ONNX Runtime's kernel time per operator type over ``runs`` calls."""
    for _ in range(runs):
        session.run(None, {"input": x})
    events = json.loads(Path(session.end_profiling()).read_text())
    spent: collections.Counter[str] = collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            spent[event["args"]["op_name"]] += event["dur"]
    total = sum(spent.values()) or 1
    return {op: round(us / total, 4) for op, us in spent.most_common()}


@torch.inference_mode()
def run(args: argparse.Namespace) -> dict:
    names = [n.strip() for n in args.candidates.split(",")]
    result = {"model": f"{args.arch}/{args.encoder}", "tile": args.tile,
              "threads": args.threads, "cpu": torch.backends.cpu.get_cpu_capability(),
              "unit": "window Mpx/s, best round", "batches": {}}
    with torch_threads(args.threads), tempfile.TemporaryDirectory() as tmp:
        bundle = make_bundle(Path(tmp) / "model.rsseg", args.arch, args.encoder, args.tile, 0)
        for batch in args.batch_sizes:
            x = np.random.default_rng(0).normal(
                size=(batch, BANDS, args.tile, args.tile)).astype(np.float32)
            calls = candidates(bundle, x, names, args.threads, tmp)
            setup, agreement = {}, {}
            reference = classes(load_bundle(bundle)[0].eval()(torch.from_numpy(x)))
            for name, call in calls.items():  # first calls: compile, prepack, arenas
                start = time.perf_counter()
                logits = call()
                setup[name] = round(time.perf_counter() - start, 2)
                if name.endswith("_int8"):
                    agreement[name] = round(float((classes(logits) == reference).mean()), 4)
                call()
            calls_per_round = max(1, args.pixels // (batch * args.tile ** 2))
            best = dict.fromkeys(calls, 0.0)
            for _ in range(args.rounds):
                for name, call in calls.items():
                    start = time.perf_counter()
                    for _ in range(calls_per_round):
                        call()
                    mpx = calls_per_round * x[:, 0].size / 1e6 / (time.perf_counter() - start)
                    best[name] = max(best[name], mpx)
            eager = best.get("eager")
            figures = result["batches"][str(batch)] = {
                name: {"mpx_s": round(mpx, 4), "first_call_s": setup[name],
                       **({"vs_eager": round(mpx / eager, 3)} if eager else {}),
                       **({"agreement": agreement[name]} if name in agreement else {})}
                for name, mpx in best.items()}
            if "onnxruntime" in figures:
                net, meta = load_bundle(bundle)
                graph = runtime_graph(bundle, net, meta, args.tile, args.tile)
                session = profiled_session(graph, args.threads, Path(tmp) / f"ort{batch}")
                figures["onnxruntime"]["op_share"] = op_shares(session, x)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="unet")
    parser.add_argument("--encoder", default="resnet18")
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--batch-sizes", type=lambda s: [int(b) for b in s.split(",")],
                        default=[2, 8])
    parser.add_argument("--candidates",
                        default=",".join(c for c in CANDIDATES if c not in OPTIONAL),
                        help=f"comma-separated, of {', '.join(CANDIDATES)}")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pixels", type=int, default=16 * 256 * 256,
                        help="window pixels per candidate and round")
    parser.add_argument("--json", action="store_true", help="print JSON only")
    args = parser.parse_args()
    result = run(args)
    if args.json:
        print(json.dumps(result))
        return
    for batch, figures in result["batches"].items():
        for name, fig in figures.items():
            print(f"batch {batch:>3} {name:14s} {fig['mpx_s']:7.3f} Mpx/s  "
                  f"{fig.get('vs_eager', float('nan')):5.2f}x eager  "
                  f"first call {fig['first_call_s']} s"
                  + (f"  agreement {fig['agreement']:.2%}" if "agreement" in fig else ""))


if __name__ == "__main__":
    main()
