"""OpenVINO on the CPU: ``--backend openvino`` runs the bundle's cached ONNX graph
(:func:`~rsseg.inference.onnx_cache.runtime_graph`) in fp32, and ``--precision int8`` runs the
graph that NNCF quantized (:mod:`rsseg.inference.quantize`). Optional extra:
``pip install 'rsseg[openvino]'``.

Compiled for inference in f32 (OpenVINO would otherwise pick bf16 on CPUs with AMX: the same
numerics as ``--precision fp32`` everywhere), with the latency hint (one request, every thread
on it) and ``threads`` inference threads (default: PyTorch's, i.e. the cores; Dask workers set
their share).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from rsseg.errors import ConfigError

OPENVINO_INSTALL = "pip install 'rsseg[openvino]'"


def require_openvino(what: str):
    """The ``openvino`` module; a missing package is a ConfigError naming the extra."""
    try:
        import openvino
    except ImportError:
        raise ConfigError(f"{what} needs the optional package openvino",
                          f"install it with {OPENVINO_INSTALL}") from None
    return openvino


def compile_cpu(model, threads: int | None, what: str = "--backend openvino",
                profile: bool = False):
    """``model`` (an ``openvino.Model``, or the path of an ONNX graph or OpenVINO IR) compiled
    for the CPU as the module docstring says; ``profile``: with per-layer performance counters
    (``tools/profile_int8.py``)."""
    openvino = require_openvino(what)
    source = str(model) if isinstance(model, Path) else model
    return openvino.Core().compile_model(source, "CPU", {
        "INFERENCE_NUM_THREADS": threads or torch.get_num_threads(),
        "INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY", "PERF_COUNT": profile})


def window_classes(compiled, x: np.ndarray) -> np.ndarray:
    """``(N, h, w)`` argmax of the logits of ``compiled`` on ``x`` ``(N, C, h, w)``, one window
    at a time (the calibration windows of int8 together would double its memory)."""
    return np.concatenate([compiled([x[k:k + 1]])[0].argmax(axis=1) for k in range(len(x))])


class OvRunner:
    """A compiled OpenVINO model as a runner: ``(B, C, H, W)`` float32 → ``(B, K, H, W)``
    logits (copied out of the request: the next call reuses its buffers)."""

    def __init__(self, model, threads: int | None, note: str | None = None,
                 what: str = "--backend openvino") -> None:
        self.request = compile_cpu(model, threads, what).create_infer_request()
        self.note = note

    def __call__(self, x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self.request.infer({0: np.ascontiguousarray(x)})[0])
