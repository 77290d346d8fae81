"""Pretrained backbones: the encoder (+ ASPP for DeepLabV3/V3+) in safetensors, with metadata.

Pretraining exports ``RUN/backbone.safetensors``; fine-tuning with ``--init RUN`` loads it into a
fresh model of the same architecture and starts the decoder and head from scratch, as GLCNet's
fine-tuning protocol does (Li et al. 2022, §IV). A pretext that trains the decoder (GLCNet's
local branch) also stores it, and ``init_decoder`` loads it as well (the official code's
``--load_self_parameters 2``, encoder and decoder; docs/methods.md). Loading never unpickles.
"""

from __future__ import annotations

import json
from pathlib import Path

import safetensors
import safetensors.torch
from pydantic import BaseModel
from torch import nn

from rsseg.errors import InputError
from rsseg.io.atomic import atomic_path
from rsseg.models.bundle import BandNorm
from rsseg.models.factory import ModelSpec, is_unused_stage_key
from rsseg.models.parts import global_module

FILENAME = "backbone.safetensors"
METADATA_KEY = "rsseg_backbone"


class BackboneMeta(BaseModel):
    """What a fine-tuning run needs to check and reuse a pretrained backbone."""

    arch: str
    encoder: str
    kwargs: dict
    bands: list[BandNorm]
    pretext: str
    epochs: int
    decoder: bool = False  # the file also holds the decoder the pretext trained


def backbone_prefixes(model: nn.Module) -> tuple[str, ...]:
    """State-dict prefixes that form the transferable backbone: ``encoder.`` (+ the ASPP's)."""
    prefixes = ["encoder."]
    aspp = global_module(model)
    for name, module in model.named_modules():
        if module is aspp and not name.startswith("encoder"):
            prefixes.append(name + ".")
    return tuple(prefixes)


def decoder_keys(model: nn.Module) -> set[str]:
    """State-dict keys of smp's ``decoder`` outside the backbone (not the ASPP)."""
    prefixes = backbone_prefixes(model)
    return {k for k in model.state_dict() if k.startswith("decoder.")
            and not k.startswith(prefixes)}


def export_backbone(model: nn.Module, meta: BackboneMeta, run: Path) -> Path:
    """Write the backbone weights of ``model`` (and its decoder's, if ``meta.decoder``) and
    ``meta`` to ``RUN/backbone.safetensors``."""
    prefixes = backbone_prefixes(model)
    decoder = decoder_keys(model) if meta.decoder else set()
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()
               if k.startswith(prefixes) or k in decoder}
    path = run / FILENAME
    with atomic_path(path, overwrite=True) as tmp:
        safetensors.torch.save_file(tensors, str(tmp),
                                    metadata={METADATA_KEY: meta.model_dump_json()})
    return path


def read_backbone(run: str | Path) -> tuple[dict, BackboneMeta]:
    """Tensors and metadata of a pretraining run's backbone (``RUN`` or the file itself)."""
    path = Path(run)
    if path.is_dir():
        path = path / FILENAME
    if not path.is_file():
        raise InputError(f"--init {run}: no {FILENAME} found",
                         "point --init at a finished `rsseg pretrain` run folder")
    try:
        with safetensors.safe_open(str(path), framework="pt") as handle:
            raw = (handle.metadata() or {}).get(METADATA_KEY)
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
    except (safetensors.SafetensorError, OSError) as err:
        raise InputError(f"--init {path}: not a backbone file or corrupt ({err})") from None
    if raw is None:
        raise InputError(f"--init {path}: no rsseg backbone metadata",
                         "use a backbone exported by `rsseg pretrain`")
    return tensors, BackboneMeta.model_validate(json.loads(raw))


def load_backbone(model: nn.Module, spec: ModelSpec, run: str | Path,
                  decoder: bool = False) -> BackboneMeta:
    """Copy a pretrained backbone into ``model`` (built from ``spec``); the head stays fresh, and
    the decoder too unless ``decoder`` and the run stored one (``meta.decoder``).

    Raises :class:`InputError` when the backbone was pretrained for another architecture,
    encoder or band count (naming both).
    """
    tensors, meta = read_backbone(run)
    if len(meta.bands) != spec.in_channels:
        raise InputError(f"--init {run}: pretrained on {len(meta.bands)} bands but the data has "
                         f"{spec.in_channels}", "pretrain on tiles of the same bands")
    mine = (spec.arch, spec.encoder)
    if (meta.arch, meta.encoder) != mine:
        raise InputError(f"--init {run}: pretrained {meta.arch}/{meta.encoder} but fine-tuning "
                         f"{spec.arch}/{spec.encoder}",
                         f"set model.arch={meta.arch} model.encoder={meta.encoder}")
    state = model.state_dict()
    fresh = set() if decoder else decoder_keys(model)
    tensors = {k: v for k, v in tensors.items() if not is_unused_stage_key(k, model)
               and k not in fresh}
    bad = [k for k, v in tensors.items() if k not in state or state[k].shape != v.shape]
    if bad:
        raise InputError(f"--init {run}: backbone weights do not fit this model ({bad[0]})",
                         "use the same model kwargs as the pretraining run")
    model.load_state_dict(tensors, strict=False)
    return meta
