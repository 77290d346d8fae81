"""Projection heads the pretexts put on the model's features."""

from __future__ import annotations

from torch import nn


def mlp_head(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """Head ``Linear(in, hidden) → ReLU → Linear(hidden, out)``: ``(N, in) → (N, out)``."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))
