"""``--precision int8`` on CPU: the bundle's graph statically quantized by NNCF on the scene's
own windows, run by OpenVINO, verified against fp32 before use, cached.

The fp32 graph is the bundle's ONNX graph for windows of any size
(:func:`~rsseg.inference.onnx_cache.any_window_graph`: exported once on small windows, checked
against PyTorch, cached by the bundle's hash). NNCF's post-training quantization
(``nncf.quantize``, default "performance" preset: symmetric per-channel int8 weights, int8
activations whose ranges come from calibration windows, then fast bias correction) turns it
into an OpenVINO model, fixed to the prediction window's shape. NNCF holds every activation of a
calibration input at once (~1 GB for one 896² window of the resnet18 U-Net), so it calibrates
on crops of the windows, at most :data:`CALIBRATION_SIDE` a side (the same pixels); the
agreement below is measured on the whole windows. An architecture whose graph is right for one
window size only (PSPNet's pyramid pooling) is exported for the prediction window and calibrated
on the whole windows. Measured side by side with ONNX Runtime's QDQ
quantization of the same graph, the OpenVINO int8 graph ran 1.7-2.2x faster (docs/performance.md),
so that is the one kept.

The scene's sampled windows (:func:`~rsseg.inference.sliding.sample_windows`: up to 16, spread
evenly, at most 4 Mpx) are split when they are not the whole scene: the even ones calibrate,
the odd ones are held out to verify. Verified on the windows it was calibrated on, an aerial
model on a Landsat scene agreed on 99.60 % of them and on 98.34 % of the scene
(docs/performance.md). A scene whose every window is in the sample is calibrated and verified on
all of them: its agreement is then the scene's own.

Every convolution is quantized first: float convolutions are slow beside int8 ones (with its
3-band 7x7 stem and 16-to-K logits convolution int8 too, an 896² window of the resnet18 U-Net
took 330 ms instead of 360 under AVX2, docs/performance.md). The quantized graph must give the
same class as fp32 (the fp32 graph in OpenVINO) on at least :data:`MIN_AGREEMENT` of the
verification windows' valid pixels (held out, or the whole scene); when it does not, the first
and last convolutions are kept float (the input bands and the class logits are the most
sensitive), then the last 2, 4 and 8 as well (the full-resolution decoder end is the most
sensitive part of a U-Net), each step quantizing again. If no step reaches it,
:class:`Int8Refused` names the best agreement.

The verified graph (OpenVINO IR, ``.xml`` + ``.bin``) is cached under ``$RSSEG_CACHE_DIR/int8``
by the bundle's SHA-256, the window shape, the NNCF version and the scene statistics: per band,
the mean, standard deviation and 0.1/99.9 percentiles of the sampled windows' normalised valid
pixels, rounded to 0.1 (a tenth of the training standard deviation), so scenes of the same
radiometry share one graph. Bundle digest, statistics and agreement are recorded in the graph and
checked before reuse; a reused graph is verified again on this scene's verification windows (one
fp32 and one int8 pass over them), so a graph is never run on a scene it disagrees on.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from rsseg.errors import ConfigError, OutputError
from rsseg.inference.onnx_cache import (
    DIGEST_KEY,
    GraphMismatch,
    any_window_graph,
    file_sha256,
    runtime_graph,
    store_graph,
)
from rsseg.inference.openvino_runtime import (
    OPENVINO_INSTALL,
    compile_cpu,
    require_openvino,
    window_classes,
)
from rsseg.inference.sliding import WindowSample
from rsseg.io.cache import cache_dir
from rsseg.models.bundle import BundleMeta
from rsseg.models.factory import required_multiple

WHAT = "--precision int8"
MIN_AGREEMENT = 0.99  # share of the verification windows' valid pixels whose class is fp32's
FLOAT_TAILS = (0, 1, 2, 4, 8)  # last convolutions kept float (with the first, unless 0), in turn
STATS_KEY = "rsseg_int8_scene_stats"
FLOATS_KEY = "rsseg_int8_float_convs"
AGREEMENT_KEY = "rsseg_int8_agreement"
CALIBRATION_SIDE = 512  # calibration crops' largest side (rounded up to the model's multiple)
RECIPE = "nncf-ov-performance-v4"  # part of the cache key: a new recipe never reuses an old graph


class Int8Refused(OutputError):
    """The int8 graph disagrees with fp32 on the verification windows (``--precision auto``
    falls back to fp32 on it)."""


@dataclass(frozen=True)
class Int8Graph:
    path: Path
    agreement: float  # on this scene's verification windows
    float_convs: int  # convolutions kept float (first one included)


def int8_graph(bundle: Path, net: nn.Module, meta: BundleMeta, sample: WindowSample,
               threads: int | None = None) -> Int8Graph:
    """The verified int8 graph of ``bundle`` for the windows of ``sample``: calibrated on its
    even windows and verified on the odd ones, held out from calibration, unless the sample is
    the whole scene (then calibrated and verified on every window).

    Raises ConfigError when the openvino extra is missing, InputError when the architecture
    cannot be exported, Int8Refused when no quantization agrees with fp32 on at least
    :data:`MIN_AGREEMENT` of the verification windows' valid pixels, OutputError when it cannot
    be cached.
    """
    nncf = _require_nncf()
    x, valid = sample.x, sample.valid
    height, width = x.shape[2:]
    stats = json.dumps(scene_stats(x, valid))
    split = len(x) > 1 and not sample.whole_scene
    calibrate, verify = (slice(0, None, 2), slice(1, None, 2)) if split else (slice(None),) * 2
    fp32, any_size = _fp32_graph(bundle, net, meta, height, width)
    calibration = x[calibrate], valid[calibrate]
    x, valid = x[verify], valid[verify]
    digest = file_sha256(bundle)
    key = hashlib.sha256(json.dumps([digest, stats, RECIPE, nncf.__version__]).encode())
    path = cache_dir() / "int8" / f"{key.hexdigest()[:32]}-{height}x{width}.xml"
    reference = window_classes(compile_cpu(fp32, threads, WHAT), x)
    recorded = _recorded(path)
    if recorded.get(DIGEST_KEY) == digest and recorded.get(STATS_KEY) == stats:
        agreement = _agreement(compile_cpu(path, threads, WHAT), x, valid, reference)
        if agreement >= MIN_AGREEMENT:
            return Int8Graph(path, agreement, int(recorded.get(FLOATS_KEY, 0)))
    # crops where the graph takes any size (NNCF's memory), else the whole windows
    inputs = calibration_crops(*calibration, required_multiple(meta.model)) if any_size \
        else calibration[0]
    model, agreement, floats = quantize_graph(fp32, inputs, x, valid, reference, threads)
    if agreement < MIN_AGREEMENT:
        raise Int8Refused(f"int8 agrees with fp32 on only {agreement:.2%} of the verification "
                          f"windows' valid pixels (at least {MIN_AGREEMENT:.0%} needed)",
                          "use --precision fp32, or --precision auto to fall back to it")
    for name, value in ((DIGEST_KEY, digest), (STATS_KEY, stats),
                        (AGREEMENT_KEY, f"{agreement:.6f}"), (FLOATS_KEY, str(floats))):
        model.set_rt_info(value, name)
    _store(model, path)
    return Int8Graph(path, agreement, floats)


def scene_stats(x: np.ndarray, valid: np.ndarray) -> list[list[float]]:
    """Per band: mean, std, 0.1 and 99.9 percentiles of the valid normalised pixels, rounded
    to 0.1 (in units of the training standard deviation)."""
    pixels = np.moveaxis(x, 1, 0)[:, valid]  # (C, valid pixels)
    p_low, p_high = np.percentile(pixels, [0.1, 99.9], axis=1)
    return [[round(float(v), 1) + 0.0 for v in band]
            for band in zip(pixels.mean(axis=1), pixels.std(axis=1), p_low, p_high, strict=True)]


def _fp32_graph(bundle: Path, net: nn.Module, meta: BundleMeta, height: int,
                width: int) -> tuple[object, bool]:
    """``(model, any_size)``: the fp32 ``openvino.Model`` of ``bundle`` fixed to windows of
    ``height`` x ``width``, from the graph for any window size (``any_size``) or, where the
    architecture's graph holds for one size only, from the graph of this one."""
    try:
        graph, any_size = any_window_graph(bundle, net, meta, WHAT), True
    except GraphMismatch:
        graph, any_size = runtime_graph(bundle, net, meta, height, width, WHAT), False
    return sized(require_openvino(WHAT).Core().read_model(str(graph)), height, width), any_size


def sized(model, height: int, width: int):
    """``model`` (an ``openvino.Model`` whose input is ``(B, C, H, W)``) fixed to windows of
    ``height`` x ``width``, any batch."""
    bands = model.inputs[0].partial_shape[1]
    model.reshape({0: require_openvino(WHAT).PartialShape([-1, bands, height, width])})
    return model


def calibration_crops(x: np.ndarray, valid: np.ndarray, multiple: int) -> np.ndarray:
    """``(M, C, s, t)``: the windows ``x`` ``(N, C, h, w)`` cut into crops of at most
    :data:`CALIBRATION_SIDE` (rounded up to ``multiple``) a side, overlapping evenly so they
    cover every pixel; crops without a ``valid`` pixel are left out."""
    side = multiple * -(-CALIBRATION_SIDE // multiple)
    height, width = min(x.shape[2], side), min(x.shape[3], side)
    tops, lefts = (np.linspace(0, full - part, -(-full // part)).round().astype(int)
                   for full, part in ((x.shape[2], height), (x.shape[3], width)))
    crops = [x[k, :, i:i + height, j:j + width] for k in range(len(x)) for i in tops
             for j in lefts if valid[k, i:i + height, j:j + width].any()]
    return np.stack(crops)


def quantize_graph(fp32, crops: np.ndarray, x: np.ndarray, valid: np.ndarray,
                   reference: np.ndarray, threads: int | None,
                   tails: tuple[int, ...] = FLOAT_TAILS):
    """``(openvino.Model, agreement, float convolutions)``: the fp32 ``openvino.Model``
    quantized by NNCF on ``crops`` and fixed to the windows ``x``, at the first step of
    ``tails`` (last convolutions kept float, and the first one unless none) whose classes agree with
    ``reference`` on :data:`MIN_AGREEMENT` of the ``valid`` pixels, else the best step."""
    nncf = _require_nncf()
    graph = fp32.clone()
    graph.reshape({0: [1, *crops.shape[1:]]})
    convs = [op.get_friendly_name() for op in graph.get_ordered_ops()
             if op.get_type_name() == "Convolution"]
    windows = nncf.Dataset([crops[k:k + 1] for k in range(len(crops))])
    best = (None, -1.0, 0)
    for tail in tails:
        floats = sorted({*convs[:1], *convs[max(1, len(convs) - tail):]}) if tail else []
        with _quiet():
            model = nncf.quantize(graph, windows, subset_size=len(crops),  # out of place
                                  ignored_scope=nncf.IgnoredScope(names=floats))
        model = sized(model, *x.shape[2:])
        agreement = _agreement(compile_cpu(model, threads, WHAT), x, valid, reference)
        if agreement > best[1]:
            best = (model, agreement, len(floats))
        if agreement >= MIN_AGREEMENT or len(floats) >= len(convs):
            break
    return best


def _agreement(compiled, x: np.ndarray, valid: np.ndarray, reference: np.ndarray) -> float:
    return float((window_classes(compiled, x) == reference)[valid].mean())


def _recorded(path: Path) -> dict[str, str]:
    """The rsseg entries of a cached graph's runtime info; empty when absent or unreadable (a
    truncated or foreign file is quantized again over it)."""
    if not path.is_file():
        return {}
    try:
        model = require_openvino(WHAT).Core().read_model(str(path))
    except Exception:
        return {}
    return {key: str(model.get_rt_info(key).astype(str))
            for key in (DIGEST_KEY, STATS_KEY, FLOATS_KEY) if model.has_rt_info(key)}


def _store(model, path: Path) -> None:
    """The IR of ``model`` at ``path`` (+ its ``.bin``), each file appearing atomically, the
    weights first: an ``.xml`` is never there before its weights."""
    with tempfile.TemporaryDirectory(prefix="rsseg-int8-") as tmp:
        staged = Path(tmp) / "graph.xml"
        require_openvino(WHAT).save_model(model, str(staged), compress_to_fp16=False)
        store_graph(path.with_suffix(".bin"), staged.with_suffix(".bin").read_bytes(),
                    "int8 graph")
        store_graph(path, staged.read_bytes(), "int8 graph")


def _require_nncf():
    """The ``nncf`` module, imported without its import-time chatter and with its usage
    telemetry (on by default, sent to Google Analytics) off; ConfigError naming the extra when
    it is missing."""
    require_openvino(WHAT)
    os.environ.setdefault("NNCF_CI", "1")  # NNCF's one switch for its usage telemetry: no calls out
    try:
        with _quiet():
            import nncf
    except ImportError:
        raise ConfigError(f"{WHAT} needs the optional package nncf",
                          f"install it with {OPENVINO_INSTALL}") from None
    return nncf


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """NNCF's progress bars (stdout), INFO lines and warnings, and the note torch logs when NNCF
    imports its extensions: not for the user."""
    loggers = [logging.getLogger(name) for name in ("nncf", "torch.utils.cpp_extension")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
