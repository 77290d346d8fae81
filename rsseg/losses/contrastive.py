"""NT-Xent, the normalised-temperature cross entropy of SimCLR (Chen et al., ICML 2020).

Two variants over the ``2N`` L2-normalised vectors of two views, where the positive of anchor
``i`` is the other view of the same item and ``s(i, j) = exp(z_i·z_j / τ)``:

- standard: ``ℓ_i = -log s(i, pos) / Σ_{j≠i} s(i, j)`` (the positive is in the denominator);
- decoupled: ``ℓ_i = -log s(i, pos) / Σ_{j∉{i, pos}} s(i, j)`` (positive excluded; Yeh et al.,
  "Decoupled Contrastive Learning", ECCV 2022; the default of the official GLCNet code).

The loss is the mean of ``ℓ_i`` over all ``2N`` anchors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def nt_xent(z1: Tensor, z2: Tensor, tau: float = 0.5, decoupled: bool = True) -> Tensor:
    """NT-Xent loss of two aligned batches of embeddings.

    Args:
        z1: ``(N, D)`` embeddings of view 1; row ``i`` pairs with row ``i`` of ``z2``.
        z2: ``(N, D)`` embeddings of view 2.
        tau: temperature ``τ > 0``.
        decoupled: exclude the positive from the denominator (needs ``N ≥ 2``).

    Returns:
        Scalar loss (float32, whatever the input dtype). L2 normalisation happens inside.
    """
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(
            f"nt_xent needs two (N, D) tensors of one shape, got {z1.shape}, {z2.shape}"
        )
    n = z1.shape[0]
    if n < (2 if decoupled else 1):
        raise ValueError(f"nt_xent needs N ≥ {2 if decoupled else 1} pairs, got {n}")
    with torch.autocast(z1.device.type, enabled=False):  # float32 even under mixed precision
        z = F.normalize(torch.cat([z1, z2]).float(), dim=1)  # (2N, D)
        logits = z @ z.T / tau  # (2N, 2N)
    rows = torch.arange(2 * n, device=z.device)
    pos = (rows + n) % (2 * n)
    excluded = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    if decoupled:
        excluded[rows, pos] = True
    positive = logits[rows, pos]
    denominator = torch.logsumexp(logits.masked_fill(excluded, float("-inf")), dim=1)
    return (denominator - positive).mean()
