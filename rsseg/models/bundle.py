"""The model bundle: one ``.rsseg`` file that ``predict`` needs and nothing else.

A bundle is a safetensors file: the weights as tensors, and :class:`BundleMeta` as a JSON string
under the header's ``__metadata__`` key ``rsseg_bundle``. Loading never unpickles anything.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import safetensors
import safetensors.torch
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from torch import nn

from rsseg import __version__
from rsseg.classes import IGNORE, ClassTable
from rsseg.errors import ConfigError, InputError
from rsseg.io.atomic import atomic_path
from rsseg.models.factory import ModelSpec, build_model, is_unused_stage_key

FORMAT_VERSION = 1
METADATA_KEY = "rsseg_bundle"
SUFFIX = ".rsseg"

Byte = Annotated[int, Field(ge=0, le=255)]


class BandNorm(BaseModel):
    """One input band: its name and the statistics it is normalised with, ``(x - mean) / std``."""

    model_config = ConfigDict(extra="forbid")

    name: str
    mean: float = Field(allow_inf_nan=False)  # NaN/inf statistics would poison every pixel
    std: float = Field(gt=0, allow_inf_nan=False)


class ClassEntry(BaseModel):
    """One output class: its value in class rasters, name and RGB colour."""

    model_config = ConfigDict(extra="forbid")

    id: int = Field(ge=0, le=254)
    name: str
    color: tuple[Byte, Byte, Byte]


class BundleMeta(BaseModel):
    """Everything about a trained model except its weights."""

    model_config = ConfigDict(extra="forbid")

    format_version: int = FORMAT_VERSION
    rsseg_version: str = __version__
    model: ModelSpec
    bands: list[BandNorm]  # scene band order the model expects
    classes: list[ClassEntry]  # sorted by id; output channel k is classes[k]
    nodata_id: Byte = 255  # class raster value written where the input is nodata
    ignore_id: Byte = IGNORE  # label value of unlabelled pixels during training
    tile: int = Field(default=256, ge=1)
    overlap: int = Field(default=32, ge=0)
    resolution: float | None = Field(default=None, gt=0)  # ground resolution, metres per pixel
    domain: dict[str, Any] = Field(default_factory=dict)  # free-form: sensor, region, dates...

    @model_validator(mode="after")
    def _consistent(self) -> BundleMeta:
        if len(self.bands) != self.model.in_channels:
            raise ValueError(f"{len(self.bands)} bands but model.in_channels is "
                             f"{self.model.in_channels}")
        if len(self.classes) != self.model.classes:
            raise ValueError(f"{len(self.classes)} classes but model.classes is "
                             f"{self.model.classes}")
        ids = [c.id for c in self.classes]
        if ids != sorted(set(ids)):
            raise ValueError(f"class ids must be unique and sorted, got {ids}")
        names = [c.name for c in self.classes]
        if len(set(names)) != len(names):
            raise ValueError(f"class names must be unique, got {names}")
        reserved = {self.nodata_id, self.ignore_id} & set(ids)
        if reserved:
            raise ValueError(f"class id(s) {sorted(reserved)} collide with nodata_id/ignore_id")
        if self.overlap >= self.tile:
            raise ValueError(f"overlap {self.overlap} must be smaller than tile {self.tile}")
        return self

    def normalise(self, pixels: np.ndarray) -> np.ndarray:
        """``(..., C, H, W)`` pixels of any dtype → float32 ``(x - mean) / std`` per band
        (two passes: the subtraction writes float32 directly, then an in-place multiply)."""
        mean = np.array([b.mean for b in self.bands], dtype=np.float32)[:, None, None]
        scale = 1 / np.array([b.std for b in self.bands], dtype=np.float32)[:, None, None]
        x = np.subtract(pixels, mean, dtype=np.float32)
        x *= scale
        return x

    def class_table(self) -> ClassTable:
        """The classes as a :class:`~rsseg.classes.ClassTable` (channel ``k`` ↔ ``ids[k]``)."""
        return ClassTable.from_records([c.model_dump() for c in self.classes],
                                       source="model bundle")


def save_bundle(path: str | Path, model: nn.Module, meta: BundleMeta,
                overwrite: bool = False) -> Path:
    """Write ``model``'s weights and ``meta`` to one bundle file, atomically.

    Raises :class:`ConfigError` when the weights do not fit ``meta.model``.
    """
    _check_structure(model, meta.model)
    with atomic_path(path, overwrite) as tmp:
        safetensors.torch.save_model(model, str(tmp),
                                     metadata={METADATA_KEY: meta.model_dump_json()})
    return Path(path)


def read_meta(path: str | Path) -> BundleMeta:
    """The metadata of a bundle, without loading its weights.

    Raises :class:`InputError` (one line) for a missing, foreign, corrupt or truncated file.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such model bundle" if not path.exists()
                         else f"{path}: is a folder, not a model bundle",
                         f"give a {SUFFIX} file written by rsseg finetune")
    try:
        with safetensors.safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
    except (safetensors.SafetensorError, OSError) as err:
        raise InputError(f"{path}: not a model bundle or corrupt ({err})",
                         f"give a {SUFFIX} file written by rsseg") from None
    if METADATA_KEY not in header:
        raise InputError(f"{path}: a safetensors file without rsseg metadata, not a model bundle",
                         f"give a {SUFFIX} file written by rsseg")
    try:
        raw = json.loads(header[METADATA_KEY])
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: corrupt bundle metadata ({err})",
                         "re-export the model") from None
    version = raw.get("format_version") if isinstance(raw, dict) else None
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise InputError(f"{path}: bundle format {version} is newer than this rsseg supports "
                         f"({FORMAT_VERSION})", "upgrade rsseg")
    try:
        return BundleMeta.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "metadata"
        raise InputError(f"{path}: invalid bundle metadata at {where}: {first['msg']}",
                         "re-export the model") from None


def load_bundle(path: str | Path) -> tuple[nn.Module, BundleMeta]:
    """The model (on the CPU, in eval mode) and its metadata. Never unpickles.

    Raises :class:`InputError` (one line) for anything that is not a loadable bundle.
    """
    meta = read_meta(path)
    try:
        model = build_model(meta.model)
    except ConfigError as err:
        raise InputError(f"{path}: {err.message}", "upgrade rsseg or re-export the model") from None
    try:
        tensors = safetensors.torch.load_file(str(path))
        model.load_state_dict({k: v for k, v in tensors.items()
                               if not is_unused_stage_key(k, model)}, strict=True)
    except (RuntimeError, safetensors.SafetensorError) as err:
        reason = str(err).strip().splitlines()[0][:200]
        raise InputError(f"{path}: weights do not match the bundle's architecture ({reason})",
                         "re-export the model") from None
    poisoned = [k for k, v in tensors.items() if v.is_floating_point() and not v.isfinite().all()]
    if poisoned:
        raise InputError(f"{path}: {len(poisoned)} weight tensor(s) hold NaN/inf values, e.g. "
                         f"{poisoned[0]} (a diverged training run?)", "re-train or re-export")
    return model.eval(), meta


def _check_structure(model: nn.Module, spec: ModelSpec) -> None:
    with torch.device("meta"):
        reference = build_model(spec).state_dict()
    actual = model.state_dict()
    shapes = {k: tuple(v.shape) for k, v in actual.items()}
    expected = {k: tuple(v.shape) for k, v in reference.items()}
    if shapes != expected:
        diff = sorted(set(shapes.items()) ^ set(expected.items()))[:3]
        raise ConfigError(f"model weights do not fit {spec.arch}/{spec.encoder} "
                          f"(first differences: {diff})", "pass the model built from meta.model")
