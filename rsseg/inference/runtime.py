"""How the model runs: backend (PyTorch, ONNX Runtime or OpenVINO), precision, threads, GPU
staging.

A *runner* maps a ``(B, C, H, W)`` float32 numpy batch of normalised pixels to ``(B, K, H, W)``
logits (a torch tensor on the runner's device). Choices and their checks:

- ``torch`` backend: BatchNorm folded into the convolutions (:mod:`rsseg.inference.fold_bn`)
  and the model in channels-last memory format (oneDNN and cuDNN pick faster convolution
  kernels for it; same answers to float32 rounding), ``fp32``, or autocast ``bf16`` (CPUs
  with native bf16 — AVX-512 BF16 or AMX — and GPUs that support it) or ``fp16`` (GPU only).
  On a GPU the batch goes through one pinned host buffer with a non-blocking copy.
- ``onnxruntime`` backend (optional extra, CPU, fp32): the bundle's graph exported once and cached
  by the bundle's hash (:mod:`rsseg.inference.onnx_cache`).
- ``openvino`` backend (optional extra, CPU): that graph in OpenVINO, fp32
  (:mod:`rsseg.inference.openvino_runtime`); ``int8``: that graph quantized by NNCF on the
  scene's own windows, verified against fp32 and cached (:mod:`rsseg.inference.quantize`).
  ``int8`` and ``auto`` pick this backend unless told.
- ``auto`` precision: int8 where it runs and agrees with fp32 (a CPU with OpenVINO and NNCF),
  else fp32 with a one-line warning saying why.
- ``threads``: intra-op threads of either backend (default: PyTorch's, i.e. the cores).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from rsseg.errors import ConfigError, InputError
from rsseg.inference.device import bf16_supported
from rsseg.inference.fold_bn import fold_batchnorm
from rsseg.inference.openvino_runtime import OvRunner
from rsseg.models.bundle import BundleMeta
from rsseg.models.factory import required_multiple

if TYPE_CHECKING:
    from rsseg.inference.sliding import WindowSample  # sliding imports this module

BACKENDS = ("torch", "onnxruntime", "openvino")
PRECISIONS = ("fp32", "bf16", "fp16", "int8", "auto")
GRAPH_PRECISIONS = {"onnxruntime": ("fp32", "auto"), "openvino": ("fp32", "int8", "auto")}
CPU_BATCH = 2  # windows per model call on CPU: small batches stay in cache (fastest)
CPU_BATCH_PIXELS = 2 * 512**2  # ... of at most this many window pixels, at least one window
FOLD_PROBE = 256  # largest side of the window that checks BatchNorm folding
_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}

Runner = Callable[[np.ndarray], torch.Tensor]
"""``(B, C, H, W)`` float32 normalised pixels → ``(B, K, H, W)`` logits."""

Samples = Callable[[], "WindowSample"]
"""The scene's calibration windows on demand (:func:`~rsseg.inference.sliding.sample_windows`)."""


@dataclass(frozen=True)
class RuntimeOptions:
    """``--backend`` (None: openvino for int8/auto, else torch), ``--precision``,
    ``--threads`` (None: PyTorch's default)."""

    backend: str | None = None
    precision: str = "fp32"
    threads: int | None = None

    @property
    def engine(self) -> str:
        """The backend that runs: the one given, else the one the precision needs."""
        if self.backend is not None:
            return self.backend
        return "openvino" if self.precision in ("int8", "auto") else "torch"


def check_runtime(options: RuntimeOptions, device: torch.device) -> None:
    """ConfigError (one line) for a choice this machine or backend cannot run."""
    if options.engine not in BACKENDS:
        raise ConfigError(f"unknown backend {options.engine!r}",
                          f"use one of {', '.join(BACKENDS)}")
    if options.precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {options.precision!r}",
                          f"use one of {', '.join(PRECISIONS)}")
    if options.threads is not None and options.threads < 1:
        raise ConfigError(f"--threads {options.threads} must be at least 1",
                          f"use e.g. --threads {torch.get_num_threads()}")
    if options.precision == "int8":
        if device.type != "cpu":
            raise ConfigError(f"--precision int8 runs on the CPU only, not on {device.type}",
                              "use --device cpu, or --precision fp16/bf16 on the GPU")
        if options.engine != "openvino":
            raise ConfigError(f"--precision int8 runs with --backend openvino only, not "
                              f"{options.engine}", "leave --backend out: int8 picks openvino")
    if options.engine in GRAPH_PRECISIONS:
        if device.type != "cpu":
            raise ConfigError(f"--backend {options.engine} runs on the CPU only",
                              "use --backend torch with --device cuda")
        runs = GRAPH_PRECISIONS[options.engine]
        if options.precision not in runs:
            raise ConfigError(f"--backend {options.engine} runs {' or '.join(runs[:-1])}, not "
                              f"{options.precision}", f"use --precision {runs[0]}, or "
                              "--backend torch")
    if options.precision == "fp16" and device.type != "cuda":
        raise ConfigError("--precision fp16 runs on a GPU only",
                          "use --device cuda, or --precision fp32 (or bf16 where supported)")
    if options.precision == "bf16" and not bf16_supported(device):
        where = ("this GPU" if device.type == "cuda"
                 else f"this CPU ({torch.backends.cpu.get_cpu_capability()}, no AVX-512 BF16 "
                      "or AMX)")
        raise ConfigError(f"--precision bf16 is not supported natively by {where}",
                          "use --precision fp32 (or --backend onnxruntime on CPU)")


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """PyTorch's intra-op threads set to ``threads`` inside the block, restored after."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class TorchRunner:
    """The model on ``device`` in channels-last, fp32 or under bf16/fp16 autocast; with
    ``sample_shape`` ``(C, H, W)``, BatchNorm folded, checked on one random window of that shape."""

    def __init__(self, net: nn.Module, device: torch.device, precision: str = "fp32",
                 sample_shape: tuple[int, int, int] | None = None) -> None:
        net = net.to(device).eval()
        if sample_shape is not None:
            probe = torch.randn((1, *sample_shape), generator=torch.Generator().manual_seed(0))
            net = fold_batchnorm(net, probe.to(device))
        self.net = net.to(memory_format=torch.channels_last)
        self.device = device
        self.dtype = _AUTOCAST.get(precision)
        self._staging: torch.Tensor | None = None  # pinned host buffer (GPU only)

    @torch.inference_mode()
    def __call__(self, x: np.ndarray) -> torch.Tensor:
        batch = self._to_device(torch.from_numpy(x))
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            return self.net(batch.contiguous(memory_format=torch.channels_last))

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        """CPU: as is. GPU: through a reused pinned buffer, copied without blocking."""
        if self.device.type == "cpu":
            return x
        if self._staging is None or self._staging.shape[1:] != x.shape[1:] \
                or self._staging.shape[0] < x.shape[0]:
            self._staging = torch.empty(x.shape, dtype=x.dtype, pin_memory=True)
        staged = self._staging[:x.shape[0]]
        staged.copy_(x)
        return staged.to(self.device, non_blocking=True)


class OrtRunner:
    """The bundle's cached ONNX graph in an ONNX Runtime CPU session."""

    def __init__(self, graph: Path, threads: int | None, note: str | None = None) -> None:
        from rsseg.inference.onnx_cache import ort_session

        self.session = ort_session(graph, threads)
        self.note = note
        self.input = self.session.get_inputs()[0].name

    def __call__(self, x: np.ndarray) -> torch.Tensor:
        (logits,) = self.session.run(None, {self.input: np.ascontiguousarray(x)})
        return torch.from_numpy(logits)


def build_runner(net: nn.Module, meta: BundleMeta, bundle: Path, device: torch.device,
                 options: RuntimeOptions, window: tuple[int, int],
                 samples: Samples | None = None) -> Runner:
    """The runner for ``options`` (checked with :func:`check_runtime` first); ``samples``, the
    scene's calibration windows, are read only for ``int8`` and ``auto``. The runner's ``note``
    says what runs when that is worth a line (int8: its agreement with fp32)."""
    check_runtime(options, device)
    if options.precision == "auto":
        return _auto_runner(net, meta, bundle, device, options, window, samples)
    if options.engine == "torch":
        return TorchRunner(net, device, options.precision,
                           (meta.model.in_channels, *fold_probe(window, meta)))
    if options.precision == "int8":
        from rsseg.inference.quantize import int8_graph

        if samples is None:
            raise ValueError("--precision int8 needs the scene's calibration windows")
        graph = int8_graph(bundle, net, meta, samples(), threads=options.threads)
        note = (f"int8: agrees with fp32 on {graph.agreement:.2%} of the verification windows' "
                f"valid pixels ({graph.float_convs} convolution(s) kept float)")
        return OvRunner(graph.path, options.threads, note, "--precision int8")
    from rsseg.inference.onnx_cache import runtime_graph

    graph = runtime_graph(bundle, net, meta, *window, f"--backend {options.engine}")
    if options.engine == "openvino":
        return OvRunner(graph, options.threads)
    return OrtRunner(graph, options.threads)


def fold_probe(window: tuple[int, int], meta: BundleMeta) -> tuple[int, int]:
    """The side of the probe that checks BatchNorm folding: the window, at most
    :data:`FOLD_PROBE` (rounded up to the model's multiple). Which convolution feeds which norm
    does not depend on the probe's size and the folded weights are the same, while a probe of
    the whole window keeps every convolution's output of a window alive: 0.9 GB more peak RSS
    for the resnet18 U-Net's 1152² windows of ``--tile auto``."""
    multiple = required_multiple(meta.model)
    side = multiple * -(-FOLD_PROBE // multiple)
    return min(window[0], side), min(window[1], side)


def _auto_runner(net: nn.Module, meta: BundleMeta, bundle: Path, device: torch.device,
                 options: RuntimeOptions, window: tuple[int, int],
                 samples: Samples | None) -> Runner:
    """``--precision auto``: int8 where it runs and agrees with fp32, else fp32 (on the backend
    asked for; openvino when it is installed and the graph could be exported, torch otherwise)
    with a warning."""
    fp32 = RuntimeOptions(options.backend, "fp32", options.threads)
    if device.type != "cpu" or options.engine != "openvino":
        return build_runner(net, meta, bundle, device, fp32, window)
    from rsseg.inference.quantize import Int8Refused

    try:
        return build_runner(net, meta, bundle, device,
                            RuntimeOptions("openvino", "int8", options.threads), window,
                            samples)
    except (Int8Refused, ConfigError, InputError) as err:  # refused, not installed, not exportable
        usable = isinstance(err, Int8Refused) or options.backend == "openvino"
        fp32 = RuntimeOptions("openvino" if usable else "torch", "fp32", options.threads)
        warnings.warn(f"--precision auto: fp32 ({fp32.engine}), not int8: {err.message}",
                      UserWarning, stacklevel=3)
        return build_runner(net, meta, bundle, device, fp32, window)


def auto_batch_size(runner: Runner, device: torch.device, shape: tuple[int, int, int],
                    windows: int, cpu_default: int = CPU_BATCH, memory_share: float = 0.5,
                    cap_pixels: int = 2**21) -> int:
    """Windows per model call: on CPU ``cpu_default``, fewer where they would hold more than
    :data:`CPU_BATCH_PIXELS` window pixels (one window of ``--tile auto``'s 1152², sized for a
    batch of :data:`CPU_BATCH`: a batch of two windows that large stays in no cache, and only
    doubles the activations, ~0.45 GB per 1152² window of the resnet18 U-Net; the logits of a
    window are the same bits either way); on a GPU, as many as fit in ``memory_share`` of the
    free memory (measured on a trial batch of 2), at most ``cap_pixels`` window pixels (32
    windows of 256²: the card is busy by then, and larger batches only grow the host-side
    buffers); never more than the scene has ``windows``."""
    if device.type != "cuda":
        fits = CPU_BATCH_PIXELS // (shape[1] * shape[2])
        return max(1, min(cpu_default, fits, windows))
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    runner(np.zeros((2, *shape), dtype=np.float32)).float().softmax(dim=1)
    torch.cuda.synchronize(device)
    per_window = max(1, (torch.cuda.max_memory_allocated(device) - base) // 2)
    free, _ = torch.cuda.mem_get_info(device)
    cap = max(1, cap_pixels // (shape[1] * shape[2]))
    return int(max(1, min(cap, windows, free * memory_share // per_window)))
