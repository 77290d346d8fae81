"""The ONNX graph of a bundle for ``predict --backend onnxruntime|openvino`` and ``--precision
int8``, exported once and cached.

The cache file is named by the SHA-256 of the bundle file (plus the window shape and opset), and
the digest is also stored in the graph's metadata and checked when the file is reused, so a
graph exported from another bundle is never run. The cache folder is ``$RSSEG_CACHE_DIR``, else
``$XDG_CACHE_HOME/rsseg``, else ``~/.cache/rsseg``; files appear atomically.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rsseg.errors import OutputError
from rsseg.io.cache import cache_dir
from rsseg.io.publish import publishing
from rsseg.models.bundle import BundleMeta
from rsseg.models.factory import required_multiple
from rsseg.models.onnx_export import MAX_ABS_DIFF, OPSET, export_graph, require_onnx

DIGEST_KEY = "rsseg_bundle_sha256"


class GraphMismatch(OutputError):
    """The exported graph computes something else than PyTorch (e.g. PSPNet's pyramid pooling
    exported for windows of any size)."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def runtime_graph(bundle: Path, net: nn.Module, meta: BundleMeta, height: int, width: int,
                  what: str = "--backend onnxruntime") -> Path:
    """The cached ``(B, C, height, width)`` float32 → ``(B, K, height, width)`` logits graph of
    ``bundle`` (dynamic batch), exported and verified against PyTorch on first use.

    Raises ConfigError when the onnx extra is missing (saying ``what`` needs it), InputError
    when the architecture cannot be exported, GraphMismatch when the export disagrees with
    PyTorch, OutputError when it cannot be cached.
    """
    return _cached_graph(bundle, net, meta, f"{height}x{width}", [(height, width)], None, what)


def any_window_graph(bundle: Path, net: nn.Module, meta: BundleMeta,
                     what: str = "--precision int8") -> Path:
    """As :func:`runtime_graph`, for windows of any size the model accepts (height and width
    dynamic, multiples of its required multiple ``m``): exported on small windows (``8m`` side,
    little memory however large the windows it will run) and verified on two shapes. OpenVINO
    fixes the shape before compiling (``Model.reshape``)."""
    multiple = required_multiple(meta.model)
    side = multiple * max(1, 128 // multiple)
    sides = torch.export.Dim("height", min=1, max=4096), torch.export.Dim("width", min=1, max=4096)
    dynamic = {2: multiple * sides[0], 3: multiple * sides[1]} if multiple > 1 else \
        dict(zip((2, 3), sides, strict=True))
    return _cached_graph(bundle, net, meta, "any", [(side, side), (side + multiple, 2 * side)],
                         dynamic, what)


def _cached_graph(bundle: Path, net: nn.Module, meta: BundleMeta, shape: str,
                  windows: list[tuple[int, int]], dynamic: dict | None, what: str) -> Path:
    """The graph exported on a batch of two windows of the first of ``windows`` (``dynamic``:
    the spatial axes left free), verified on one window of each, cached under ``shape``."""
    onnx, _ = require_onnx(what)
    digest = file_sha256(bundle)
    path = cache_dir() / "onnx" / f"{digest[:32]}-{shape}-opset{OPSET}.onnx"
    if path.is_file() and graph_metadata(path).get(DIGEST_KEY) == digest:
        return path
    generator = torch.Generator().manual_seed(0)
    x = [torch.randn(2 if k == 0 else 1, len(meta.bands), h, w, generator=generator)
         for k, (h, w) in enumerate(windows)]
    proto = export_graph(net.eval(), x[0], meta, bundle, dynamic_batch=True, dynamic=dynamic)
    entry = proto.metadata_props.add()
    entry.key, entry.value = DIGEST_KEY, digest
    onnx.checker.check_model(proto)
    data = proto.SerializeToString()
    session = ort_session(data, None)
    diff = 0.0
    # one window at a time: two large windows in eager PyTorch peak at ~2 GB
    for window in [w for batch in x for w in batch.split(1)]:
        (got,) = session.run(None, {"input": window.numpy()})
        with torch.inference_mode():
            diff = max(diff, float(np.max(np.abs(got - net(window).numpy()))))
    if not diff <= MAX_ABS_DIFF:
        raise GraphMismatch(f"the ONNX graph of {bundle} differs from PyTorch by {diff:.2e} "
                            f"(more than {MAX_ABS_DIFF:g})", "use --backend torch")
    store_graph(path, data, "ONNX graph")
    return path


def graph_metadata(path: Path) -> dict[str, str]:
    """The ``metadata_props`` of a cached graph; empty when unreadable (a truncated or foreign
    file is exported again over it)."""
    import onnx

    try:
        proto = onnx.load(str(path))
    except Exception:
        return {}
    return {p.key: p.value for p in proto.metadata_props}


def store_graph(path: Path, data: bytes, what: str) -> None:
    """``data`` written atomically at ``path`` in the cache; OutputError naming ``what`` when the
    cache folder is not writable."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with publishing(lock=False) as pub:  # concurrent runs cache the same bytes
            pub.stage(path, overwrite=True).write_bytes(data)
    except OSError as err:
        raise OutputError(f"cannot cache the {what} in {path.parent}: {err.strerror}",
                          "set RSSEG_CACHE_DIR to a writable folder") from None


def ort_session(graph: Path | bytes, threads: int | None):
    """An ONNX Runtime CPU session of ``graph`` (a file or its bytes) with ``threads`` intra-op
    threads (default: PyTorch's), all graph optimizations, idle pool threads sleeping instead
    of spinning (they leave the cores to the reader and writer threads).

    Neither the CPU memory arena nor memory patterns: the arena keeps the peak of a call (and
    more: it grows in powers of two) for the life of the session, the pattern preallocates each
    input shape's plan on top of it. Without them a batch of two 1152² windows of the resnet18
    U-Net peaks at 0.8 GB above the session instead of 1.7 GB, the memory goes back after the
    call, and the logits are the same bits."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.enable_cpu_mem_arena = False
    opts.enable_mem_pattern = False
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3  # warnings and per-node notes are not for the user
    source = graph if isinstance(graph, bytes) else str(graph)
    return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
