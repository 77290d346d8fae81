"""``rsseg export-onnx``: a model bundle → an ONNX model for QGIS plugins (Deepness), verified.

The exported graph is the bundle's network followed by a softmax over classes: input
``(1, C, tile, tile)`` float32, already normalised; output ``(1, K, tile, tile)`` class
probabilities (channel ``k`` = the bundle's ``classes[k]``). The fixed square shape with batch 1
is what the Deepness plugin requires. Its metadata (``metadata_props``, JSON-encoded values as
Deepness parses them) carries:

- ``model_type`` ``"Segmentor"`` (Deepness's name for segmentation models),
- ``class_names`` ``{"0": name, ...}`` by output channel,
- ``resolution`` in cm/px (from the bundle's ground resolution, when known),
- ``tiles_size`` (and ``tile_size``, the key older Deepness versions read) and ``tiles_overlap``
  in percent of the tile,
- ``standardization_mean``/``standardization_std`` per band: Deepness scales 8-bit pixels to
  0..1 and then standardises, so these are the bundle's statistics divided by 255, which
  reproduces rsseg's normalisation exactly for 8-bit scenes,
- ``rsseg_classes`` (ids, names, colours), ``rsseg_bands`` and ``rsseg_version``.

The export runs ``torch.onnx.export`` (the ``torch.export`` based exporter, needs ``onnx`` and
``onnxscript``), then onnxruntime runs the file on a fixed random input and the largest absolute
difference to the PyTorch model is reported; the export fails above :data:`MAX_ABS_DIFF`.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rsseg import __version__
from rsseg.errors import ConfigError, InputError, OutputError
from rsseg.io.atomic import check_output
from rsseg.io.publish import publishing
from rsseg.models.bundle import BundleMeta, load_bundle
from rsseg.models.factory import required_multiple

ONNX_INSTALL = "pip install 'rsseg[onnx]'"
OPSET = 18
MAX_ABS_DIFF = 1e-4  # on probabilities in 0..1


@dataclass(frozen=True)
class OnnxExport:
    out: Path
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    opset: int
    max_abs_diff: float  # onnxruntime vs PyTorch, same input
    metadata: dict[str, str]
    seconds: float
    warnings: tuple[str, ...] = ()


def deepness_metadata(meta: BundleMeta, tile: int) -> tuple[dict[str, str], list[str]]:
    """The ``metadata_props`` (JSON-encoded values) and the caveats to tell the user."""
    notes = []
    props = {
        "model_type": "Segmentor",
        "class_names": {str(k): c.name for k, c in enumerate(meta.classes)},
        "tiles_size": tile,
        "tile_size": tile,
        "tiles_overlap": round(100 * min(meta.overlap, tile - 1) / tile),
        "standardization_mean": [b.mean / 255 for b in meta.bands],
        "standardization_std": [b.std / 255 for b in meta.bands],
        "rsseg_classes": meta.class_table().to_records(),
        "rsseg_bands": [b.name for b in meta.bands],
        "rsseg_version": __version__,
    }
    if meta.resolution is not None:
        props["resolution"] = round(meta.resolution * 100, 6)
    else:
        notes.append("the bundle has no ground resolution: 'resolution' left out, set it in "
                     "Deepness")
    if any(b.mean > 255 for b in meta.bands):
        notes.append("the bundle was trained on values beyond 8 bits; Deepness feeds 8-bit "
                     "pixels, so rescale the imagery to 0..255 as in training")
    return {k: json.dumps(v) for k, v in props.items()}, notes


def export_onnx(model: str | Path, out: str | Path, tile: int | None = None,
                overwrite: bool = False) -> OnnxExport:
    """Export the bundle ``model`` to ``out`` (atomically) and verify it with onnxruntime.

    Raises ConfigError for missing optional packages or a bad ``tile``, InputError for a bundle
    whose architecture cannot be exported (naming the operator), OutputError when the exported
    model disagrees with PyTorch or cannot be written.
    """
    out = check_output(out, overwrite)
    if out.suffix.lower() != ".onnx":
        raise ConfigError(f"--out {out}: an ONNX model file is written", "name it .onnx")
    onnx, ort = require_onnx("export-onnx")
    net, meta = load_bundle(model)
    tile = meta.tile if tile is None else tile
    multiple = required_multiple(meta.model)
    if tile < 1 or tile % multiple:
        raise ConfigError(f"--tile {tile} is not a positive multiple of {multiple}, which "
                          f"{meta.model.arch}/{meta.model.encoder} needs",
                          f"use e.g. --tile {max(multiple, tile // multiple * multiple)}")
    start = time.perf_counter()
    wrapped = nn.Sequential(net, nn.Softmax(dim=1)).eval()
    x = torch.randn(1, len(meta.bands), tile, tile, generator=torch.Generator().manual_seed(0))
    proto = export_graph(wrapped, x, meta, Path(model))
    props, notes = deepness_metadata(meta, tile)
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name, proto.producer_version = "rsseg", __version__
    onnx.checker.check_model(proto)
    data = proto.SerializeToString()
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.inference_mode():
        want = wrapped(x).numpy()
    diff = float(np.max(np.abs(got - want)))
    if not diff <= MAX_ABS_DIFF:
        raise OutputError(f"the exported model differs from PyTorch by {diff:.2e} (more than "
                          f"{MAX_ABS_DIFF:g})", "report this architecture; nothing was written")
    with publishing() as pub:
        pub.write(out, data, overwrite)
    return OnnxExport(out, tuple(x.shape), tuple(got.shape), _opset(proto), diff, props,
                      time.perf_counter() - start, tuple(notes))


def require_onnx(what: str):
    """``(onnx, onnxruntime)``; a missing optional package is a ConfigError naming the extra."""
    try:
        import onnx
        import onnxruntime
        import onnxscript  # noqa: F401  (torch.onnx's exporter needs it)
    except ImportError as err:
        raise ConfigError(f"{what} needs the optional package {err.name or 'onnx'}",
                          f"install it with {ONNX_INSTALL}") from None
    return onnx, onnxruntime


def export_graph(wrapped: nn.Module, x: torch.Tensor, meta: BundleMeta, model: Path,
                 dynamic_batch: bool = False, dynamic: dict | None = None):
    """``torch.onnx.export`` of ``wrapped`` on input ``x`` → ModelProto (input ``"input"``,
    output ``"output"``; the batch axis dynamic when asked, and the input axes of ``dynamic``:
    ``{axis: torch.export.Dim}``), the exporter's chatter silenced.

    Failures → InputError naming the operator (or construct) that cannot be exported.
    """
    axes = {0: torch.export.Dim("batch", min=1, max=4096)} if dynamic_batch else {}
    axes |= dynamic or {}
    chatter = io.StringIO()
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo",
                                              "onnxscript", "torch.fx.experimental")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(wrapped, (x,), None, dynamo=True, opset_version=OPSET,
                                        input_names=["input"], output_names=["output"],
                                        dynamic_shapes=(axes,) if axes else None,
                                        external_data=False, verbose=False)
        return program.model_proto
    except Exception as err:  # the exporter raises many types; name the culprit
        raise InputError(f"{model}: {meta.model.arch}/{meta.model.encoder} cannot be exported "
                         f"to ONNX ({_culprit(err)})",
                         "export a bundle of another architecture (e.g. unet, fpn, pixel)"
                         ) from None
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _culprit(err: BaseException) -> str:
    """The operator or construct an export error is about, from the error and its causes."""
    text = ""
    seen: BaseException | None = err
    while seen is not None:
        text += f"\n{type(seen).__name__}: {seen}"
        seen = seen.__cause__ or seen.__context__
    for pattern, template in [
        (r"No ONNX function found for <OpOverload\(op='([\w.]+)'", "operator {} has no ONNX "
                                                                   "conversion"),
        (r"[Uu]nsupported operator '?([\w:.]+)", "operator {} is not supported"),
        (r"target=torch\.ops\.([\w.]+)", "operator {} cannot be converted"),
    ]:
        found = re.search(pattern, text)
        if found:
            return template.format(found.group(1).replace("aten.", "aten::").rstrip("."))
    if "data-dependent" in text or "GuardOnDataDependent" in text:
        return "data-dependent control flow cannot be traced"
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return re.sub(r"\x1b\[[0-9;]*m", "", first)[:200]


def _opset(proto) -> int:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), OPSET)
