"""``--device auto|cpu|cuda`` → a :class:`torch.device`, and what that device supports."""

from __future__ import annotations

import torch

from rsseg.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str) -> torch.device:
    """``auto`` picks the GPU when one is visible; ``cuda`` without a GPU is a ConfigError."""
    if name not in DEVICES:
        raise ConfigError(f"unknown device {name!r}", f"use one of {', '.join(DEVICES)}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA GPU is available",
                          "use --device cpu or auto")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def bf16_supported(device: torch.device) -> bool:
    """Native bf16 matrix units: AVX-512 BF16/AMX on CPU (as oneDNN sees them), or the GPU's."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
