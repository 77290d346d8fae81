"""InfoNCE variants of the alternate pretexts (docs/methods.md), each a plain function.

Every function L2-normalises its embeddings inside (where it says so), computes in float32 even
under mixed precision and returns a scalar mean over anchors. ``s(a, b) = exp(â·b̂ / τ)``.

- :func:`symmetric_infonce` (DirectCLR): ``½·CE(ẑ1ẑ2ᵀ/τ, I) + ½·CE(ẑ2ẑ1ᵀ/τ, I)``.
- :func:`queue_infonce` (MoCo / HCSC instance coding): query vs its key and a queue of negatives,
  some of which may be dropped per query.
- :func:`prototype_infonce` (HCSC prototype coding): query vs prototypes with a temperature per
  prototype, some negative prototypes dropped per query.
- :func:`grouped_nt_xent` (CLAWS): NT-Xent whose negatives are restricted to the anchor's group.
- :func:`information_regularizer` (ARIEL): ``mean(max(0, 2·s12 − s10 − s20))``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _f32(*tensors: Tensor) -> list[Tensor]:
    return [t.float() for t in tensors]


def symmetric_infonce(z1: Tensor, z2: Tensor, tau: float = 0.1) -> Tensor:
    """DirectCLR's symmetric InfoNCE over ``N×N`` cross-view logits.

    Args:
        z1, z2: ``(N, D)`` embeddings of the two views (row ``i`` pairs with row ``i``).
        tau: temperature.

    Returns:
        ``½·CE(ẑ1·ẑ2ᵀ/τ, I) + ½·CE(ẑ2·ẑ1ᵀ/τ, I)`` with ``ẑ = z/‖z‖``.
    """
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(f"symmetric_infonce needs two (N, D) tensors, got {z1.shape}, {z2.shape}")
    with torch.autocast(z1.device.type, enabled=False):
        a, b = (F.normalize(t, dim=1) for t in _f32(z1, z2))
        logits = a @ b.T / tau  # (N, N)
        target = torch.arange(a.shape[0], device=a.device)
        return 0.5 * F.cross_entropy(logits, target) + 0.5 * F.cross_entropy(logits.T, target)


def queue_infonce(q: Tensor, k: Tensor, queue: Tensor, tau: float,
                  keep: Tensor | None = None) -> Tensor:
    """MoCo InfoNCE: each query's key is its positive, the queue holds the negatives.

    ``ℓ_n = −log s(q_n, k_n) / (s(q_n, k_n) + Σ_{j: keep[n, j]} s(q_n, queue_j))``.

    Args:
        q: ``(N, D)`` queries; k: ``(N, D)`` keys (no gradient needed); both normalised inside.
        queue: ``(K, D)`` negatives, already L2-normalised.
        tau: temperature.
        keep: optional ``(N, K)`` bool; False drops that negative for that query.
    """
    with torch.autocast(q.device.type, enabled=False):
        q, k = (F.normalize(t, dim=1) for t in _f32(q, k))
        positive = (q * k).sum(dim=1, keepdim=True) / tau  # (N, 1)
        negative = q @ queue.float().T / tau  # (N, K)
        if keep is not None:
            negative = negative.masked_fill(~keep, float("-inf"))
        logits = torch.cat([positive, negative], dim=1)
        return (torch.logsumexp(logits, dim=1) - positive[:, 0]).mean()


def prototype_infonce(q: Tensor, prototypes: Tensor, positive: Tensor, phi: Tensor,
                      keep: Tensor | None = None) -> Tensor:
    """HCSC/PCL prototype InfoNCE with a concentration (temperature) per prototype.

    ``ℓ_n = −log s_n(p_n) / (s_n(p_n) + Σ_{c ≠ p_n, keep[n, c]} s_n(c))`` with
    ``s_n(c) = exp(q̂_n·c / φ_c)``.

    Args:
        q: ``(N, D)`` queries (normalised inside).
        prototypes: ``(P, D)`` L2-normalised prototypes.
        positive: ``(N,)`` int64 index of each query's own prototype.
        phi: ``(P,)`` positive per-prototype temperatures.
        keep: optional ``(N, P)`` bool; False drops that negative prototype for that query
            (the positive is always kept).
    """
    with torch.autocast(q.device.type, enabled=False):
        q = F.normalize(q.float(), dim=1)
        logits = q @ prototypes.float().T / phi.float()[None, :]  # (N, P)
        rows = torch.arange(q.shape[0], device=q.device)
        if keep is not None:
            keep = keep.clone()
            keep[rows, positive] = True
            logits = logits.masked_fill(~keep, float("-inf"))
        return (torch.logsumexp(logits, dim=1) - logits[rows, positive]).mean()


def grouped_nt_xent(z1: Tensor, z2: Tensor, groups: Tensor, tau: float = 0.5) -> Tensor:
    """Standard NT-Xent over the ``2N`` vectors, negatives restricted to the anchor's group.

    Equal to the anchor-weighted mean of plain NT-Xent computed on each group's sub-batch
    (CLAWS: batches built within a cluster, so every negative is a hard, same-cluster one).
    An item alone in its group has only its positive in the denominator (loss 0).

    Args:
        z1, z2: ``(N, D)`` embeddings of the two views (normalised inside).
        groups: ``(N,)`` int64 group (cluster) of each item.
        tau: temperature.
    """
    n = z1.shape[0]
    with torch.autocast(z1.device.type, enabled=False):
        z = F.normalize(torch.cat(_f32(z1, z2)), dim=1)  # (2N, D)
        logits = z @ z.T / tau
    g = torch.cat([groups, groups]).to(z.device)
    rows = torch.arange(2 * n, device=z.device)
    excluded = (g[:, None] != g[None, :]) | torch.eye(2 * n, dtype=torch.bool, device=z.device)
    pos = (rows + n) % (2 * n)
    denominator = torch.logsumexp(logits.masked_fill(excluded, float("-inf")), dim=1)
    return (denominator - logits[rows, pos]).mean()


def positive_similarity(a: Tensor, b: Tensor, tau: float) -> Tensor:
    """``s = exp(cos(a_n, b_n) / τ)`` per row: ``(N, D), (N, D) → (N,)`` float32."""
    with torch.autocast(a.device.type, enabled=False):
        return torch.exp(F.cosine_similarity(a.float(), b.float(), dim=1) / tau)


def information_regularizer(s12: Tensor, s10: Tensor, s20: Tensor) -> Tensor:
    """ARIEL's information regularizer ``mean(max(0, 2·s12 − s10 − s20))``.

    Args:
        s12: ``(N,)`` positive-pair similarity of the two views (gets the gradient).
        s10, s20: ``(N,)`` similarity of each view with the original (detached inside).
    """
    return torch.clamp(2 * s12 - s10.detach() - s20.detach(), min=0).mean()
