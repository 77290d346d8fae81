"""Embedding-spectrum diagnostic for dimensional collapse (Jing et al., DirectCLR, ICLR 2022).

L2-normalise the embeddings, take their ``D×D`` covariance, its singular values ``s`` (sorted
descending) and the effective rank ``exp(H(p))`` with ``p = s / Σs`` (Roy & Vetterli, 2007).
A healthy representation spreads over many directions (rank near ``D``); a collapsing one
concentrates on a few (rank near 1).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

# Total variance below which every embedding is (numerically) the same vector.
_COLLAPSED_VARIANCE = 1e-10


def embedding_spectrum(z: Tensor) -> Tensor:
    """Singular values of the covariance of L2-normalised embeddings.

    Args:
        z: ``(N, D)`` embeddings, ``N ≥ 2``; computed in float64 on the CPU, without gradient.

    Returns:
        ``(D,)`` float64 singular values, descending.
    """
    if z.ndim != 2 or z.shape[0] < 2:
        raise ValueError(f"embedding_spectrum needs (N ≥ 2, D) embeddings, got {tuple(z.shape)}")
    z = F.normalize(z.detach().to("cpu", torch.float64), dim=1)
    z = z - z.mean(dim=0, keepdim=True)
    cov = z.T @ z / (z.shape[0] - 1)  # (D, D)
    return torch.linalg.svdvals(cov)


def effective_rank(singular_values: Tensor) -> float:
    """``exp(H(p))``, ``p = s / Σs``: between 1 (one direction) and ``len(s)`` (isotropic).

    A spectrum with no variance at all (every embedding identical) is complete collapse and
    returns 1.0.
    """
    s = singular_values.detach().to("cpu", torch.float64).clamp_min(0)
    total = float(s.sum())
    if total <= _COLLAPSED_VARIANCE:
        return 1.0
    p = s[s > 0] / total
    return math.exp(float(-(p * p.log()).sum()))
