"""``--precision int8`` on CPU: the bundle's ONNX graph statically quantized on the scene's own
windows, verified against fp32 before use, cached.

The fp32 graph is the one ``--backend onnxruntime`` runs (:func:`~rsseg.inference.onnx_cache.
runtime_graph`: exported once, checked against PyTorch, cached by the bundle's hash). ONNX
Runtime's static quantization (``onnxruntime.quantization.quantize_static``, QDQ format)
calibrates it with min/max ranges on the calibration windows
(:func:`~rsseg.inference.sliding.sample_windows`): per-channel int8 weights, uint8 activations
(7-bit weights, ``reduce_range``, on CPUs without VNNI, whose AVX2 int8 kernels can saturate).

The first and last convolutions stay float (the input bands and the class logits are the most
sensitive). The quantized graph must give the same class as fp32 on at least
:data:`MIN_AGREEMENT` of the calibration windows' valid pixels; when it does not, the last
convolutions are kept float as well, 1, 2, 4, then 8 of them (the full-resolution decoder end is
the most sensitive part of a U-Net), each step re-quantizing from the same calibration ranges.
If no step reaches it, :class:`Int8Refused` names the best agreement.

The verified graph is cached under ``$RSSEG_CACHE_DIR/int8`` by the bundle's SHA-256, the window
shape and the scene statistics: per band, the mean, standard deviation and 0.1/99.9 percentiles
of the calibration windows' normalised valid pixels, rounded to 0.1 (a tenth of the training
standard deviation), so scenes of the same radiometry share one graph. Bundle digest, statistics
and agreement are recorded in the graph and checked before reuse; a reused graph is verified
again on this scene's calibration windows (one fp32 and one int8 pass over them), so a graph is
never run on a scene it disagrees on.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from rsseg.errors import OutputError
from rsseg.inference.onnx_cache import (
    DIGEST_KEY,
    file_sha256,
    graph_metadata,
    ort_session,
    runtime_graph,
    store_graph,
)
from rsseg.io.cache import cache_dir
from rsseg.models.bundle import BundleMeta

MIN_AGREEMENT = 0.99  # share of valid calibration pixels whose class equals fp32's
FLOAT_TAILS = (1, 2, 4, 8)  # last convolutions kept float, tried in turn
STATS_KEY = "rsseg_int8_scene_stats"
FLOATS_KEY = "rsseg_int8_float_convs"
AGREEMENT_KEY = "rsseg_int8_agreement"
RECIPE = "qdq-minmax-u8s8-v1"  # part of the cache key: a new recipe never reuses an old graph


class Int8Refused(OutputError):
    """The int8 graph disagrees with fp32 on the calibration windows (``--precision auto``
    falls back to fp32 on it)."""


@dataclass(frozen=True)
class Int8Graph:
    path: Path
    agreement: float  # on this scene's calibration windows
    float_convs: int  # convolutions kept float (first one included)


def int8_graph(bundle: Path, net: nn.Module, meta: BundleMeta, x: np.ndarray, valid: np.ndarray,
               threads: int | None = None) -> Int8Graph:
    """The verified int8 graph of ``bundle`` for windows of ``x``'s shape, calibrated on the
    normalised windows ``x`` ``(N, C, h, w)`` (``valid``: ``(N, h, w)`` pixels holding data).

    Raises ConfigError when the onnx extra is missing, InputError when the architecture cannot be
    exported, Int8Refused when no quantization agrees with fp32 on at least
    :data:`MIN_AGREEMENT` of the valid calibration pixels, OutputError when it cannot be cached.
    """
    import onnx

    height, width = x.shape[2:]
    fp32 = runtime_graph(bundle, net, meta, height, width)
    digest = file_sha256(bundle)
    stats = json.dumps(scene_stats(x, valid))
    reduce_range = not has_vnni()
    key = hashlib.sha256(json.dumps([digest, stats, RECIPE, reduce_range]).encode()).hexdigest()
    path = cache_dir() / "int8" / f"{key[:32]}-{height}x{width}.onnx"
    reference = session_classes(ort_session(fp32, threads), x)
    recorded = graph_metadata(path) if path.is_file() else {}
    if recorded.get(DIGEST_KEY) == digest and recorded.get(STATS_KEY) == stats:
        agreement = _agreement(ort_session(path, threads), x, valid, reference)
        if agreement >= MIN_AGREEMENT:
            return Int8Graph(path, agreement, int(recorded.get(FLOATS_KEY, 0)))
    data, agreement, floats = quantize_graph(fp32, x, valid, reference, reduce_range, threads)
    if agreement < MIN_AGREEMENT:
        raise Int8Refused(f"int8 agrees with fp32 on only {agreement:.2%} of the calibration "
                          f"windows' valid pixels (at least {MIN_AGREEMENT:.0%} needed)",
                          "use --precision fp32, or --precision auto to fall back to it")
    proto = onnx.load_from_string(data)
    for name, value in ((DIGEST_KEY, digest), (STATS_KEY, stats),
                        (AGREEMENT_KEY, f"{agreement:.6f}"), (FLOATS_KEY, str(floats))):
        entry = proto.metadata_props.add()
        entry.key, entry.value = name, value
    store_graph(path, proto.SerializeToString(), "int8 graph")
    return Int8Graph(path, agreement, floats)


def scene_stats(x: np.ndarray, valid: np.ndarray) -> list[list[float]]:
    """Per band: mean, std, 0.1 and 99.9 percentiles of the valid normalised pixels, rounded
    to 0.1 (in units of the training standard deviation)."""
    pixels = np.moveaxis(x, 1, 0)[:, valid]  # (C, valid pixels)
    p_low, p_high = np.percentile(pixels, [0.1, 99.9], axis=1)
    return [[round(float(v), 1) + 0.0 for v in band]
            for band in zip(pixels.mean(axis=1), pixels.std(axis=1), p_low, p_high, strict=True)]


def quantize_graph(fp32: Path, x: np.ndarray, valid: np.ndarray, reference: np.ndarray,
                   reduce_range: bool, threads: int | None,
                   tails: tuple[int, ...] = FLOAT_TAILS) -> tuple[bytes, float, int]:
    """Quantized graph bytes, its agreement and the count of float convolutions: the first
    step of ``tails`` (last convolutions kept float) that reaches :data:`MIN_AGREEMENT`, else
    the best one."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Windows(CalibrationDataReader):
        def __init__(self) -> None:
            self.next = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self.next >= len(x):
                return None
            self.next += 1
            return {"input": x[self.next - 1:self.next]}

    convs = [n.name for n in onnx.load(str(fp32)).graph.node if n.op_type == "Conv"]
    best: tuple[bytes, float, int] = (b"", -1.0, 0)
    with tempfile.TemporaryDirectory(prefix="rsseg-int8-") as tmp, _quiet():
        cache = {}  # the ranges calibrated once, reused by every step (onnxruntime >= 1.24)
        if "calibration_cache_path" in inspect.signature(quantize_static).parameters:
            cache["calibration_cache_path"] = str(Path(tmp) / "ranges.json")
        for tail in tails:
            floats = sorted({*convs[:1], *convs[max(1, len(convs) - tail):]})
            out = Path(tmp) / f"int8_{tail}.onnx"
            quantize_static(str(fp32), str(out), Windows(), quant_format=QuantFormat.QDQ,
                            per_channel=True, reduce_range=reduce_range,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            nodes_to_exclude=floats, calibrate_method=CalibrationMethod.MinMax,
                            **cache)
            agreement = _agreement(ort_session(out, threads), x, valid, reference)
            if agreement > best[1]:
                best = (out.read_bytes(), agreement, len(floats))
            if agreement >= MIN_AGREEMENT or len(floats) >= len(convs):
                break
    return best


def session_classes(session, x: np.ndarray) -> np.ndarray:
    """``(N, h, w)`` argmax of the logits of ``session`` on ``x``, one window at a time."""
    return np.concatenate([session.run(None, {"input": x[k:k + 1]})[0].argmax(axis=1)
                           for k in range(len(x))])


def _agreement(session, x: np.ndarray, valid: np.ndarray, reference: np.ndarray) -> float:
    return float((session_classes(session, x) == reference)[valid].mean())


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """onnxruntime.quantization logs advice on the root logger: not for the user."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def has_vnni() -> bool:
    """Whether the CPU has VNNI (int8 dot products without saturation); False when unknown."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("avx512_vnni", "avx_vnni", "amx_int8"))
