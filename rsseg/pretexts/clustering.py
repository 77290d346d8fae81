"""Small torch k-means and HCSC's hierarchical k-means with concentration estimates.

scikit-learn and faiss are not dependencies, and the point counts here (an epoch of tile
embeddings) are small, so a plain Lloyd k-means with k-means++ seeding runs on whatever device
the embeddings live on. Deterministic for a given ``seed``.

Also :class:`EmbeddingBank`, the ring buffer of recent embeddings that pretexts cluster in
``on_epoch_start`` (the engine never hands a pretext the whole dataset).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class KMeansResult:
    """``centroids`` ``(K, D)``; ``assign`` ``(N,)`` int64; ``distance`` ``(N,)`` L2 to centroid."""

    centroids: Tensor
    assign: Tensor
    distance: Tensor


def kmeans(x: Tensor, k: int, iters: int = 20, seed: int = 0, restarts: int = 1) -> KMeansResult:
    """Lloyd's k-means with k-means++ seeding on ``x`` ``(N, D)``; best of ``restarts`` by inertia.

    An empty cluster is re-seeded with the point farthest from its centroid.
    """
    if x.ndim != 2 or not 1 <= k <= x.shape[0]:
        raise ValueError(f"kmeans needs (N, D) points with 1 ≤ k ≤ N, got {tuple(x.shape)}, k={k}")
    x = x.detach().float()
    best: KMeansResult | None = None
    best_inertia = float("inf")
    for r in range(restarts):
        gen = torch.Generator(device="cpu").manual_seed(seed * 1000 + r)
        centroids = _plus_plus(x, k, gen)
        for _ in range(iters):
            dist2 = torch.cdist(x, centroids).square()  # (N, K)
            assign = dist2.argmin(dim=1)
            new = torch.zeros_like(centroids).index_add_(0, assign, x)
            counts = torch.bincount(assign, minlength=k)
            new = new / counts.clamp(min=1)[:, None].to(x.dtype)
            empty = torch.nonzero(counts == 0).flatten()
            if len(empty):
                own = dist2.gather(1, assign[:, None])[:, 0]
                far = own.argsort(descending=True)[: len(empty)]
                new[empty] = x[far]
            if torch.allclose(new, centroids):
                centroids = new
                break
            centroids = new
        assign = torch.cdist(x, centroids).argmin(dim=1)
        distance = (x - centroids[assign]).norm(dim=1)  # exact (cdist may use a matmul)
        inertia = float(distance.square().sum())
        if inertia < best_inertia:
            best_inertia = inertia
            best = KMeansResult(centroids, assign, distance)
    assert best is not None
    return best


def _plus_plus(x: Tensor, k: int, gen: torch.Generator) -> Tensor:
    """k-means++ seeding: each next centre drawn with probability ∝ squared distance."""
    n = x.shape[0]
    first = int(torch.randint(n, (1,), generator=gen))
    centres = [x[first]]
    closest = (x - x[first]).square().sum(dim=1)
    for _ in range(1, k):
        weights = closest.cpu().double()
        if float(weights.sum()) <= 0:
            pick = int(torch.randint(n, (1,), generator=gen))
        else:
            pick = int(torch.multinomial(weights, 1, generator=gen))
        centres.append(x[pick])
        closest = torch.minimum(closest, (x - x[pick]).square().sum(dim=1))
    return torch.stack(centres)


@dataclass(frozen=True)
class PrototypeLevel:
    """One level of the hierarchy.

    ``centroids`` ``(P, D)`` L2-normalised; ``phi`` ``(P,)`` concentrations (mean τ);
    ``parent`` ``(P,)`` int64 index of each prototype's parent at the next level (None at the top).
    """

    centroids: Tensor
    phi: Tensor
    parent: Tensor | None


def concentration(distance: Tensor, assign: Tensor, k: int, tau: float) -> Tensor:
    """HCSC/PCL concentration ``φ_c = mean‖x − c‖ / log(n_c + 10)`` per cluster.

    Clusters with at most one member take the largest estimate; the estimates are clipped to
    their 10th–90th percentile and rescaled to mean ``tau``. Returns ``(k,)`` float32.
    """
    counts = torch.bincount(assign, minlength=k).float()
    sums = torch.zeros(k, device=distance.device).index_add_(0, assign, distance.float())
    phi = sums / counts.clamp(min=1) / torch.log(counts + 10)
    lonely = counts <= 1
    if not (~lonely).any():  # no cluster with two members: nothing to estimate
        return torch.full_like(phi, tau)
    phi = torch.where(lonely, phi[~lonely].max(), phi)
    low, high = torch.quantile(phi, 0.1), torch.quantile(phi, 0.9)
    phi = phi.clamp(min=float(low), max=float(high))
    if float(phi.mean()) <= 0:
        return torch.full_like(phi, tau)
    return tau * phi / phi.mean()


def hierarchical_kmeans(x: Tensor, sizes: list[int], tau: float, seed: int = 0,
                        iters: int = 20, restarts: int = 3) -> list[PrototypeLevel]:
    """HCSC's hierarchy: k-means on ``x`` ``(N, D)``, then k-means on those centroids, ...

    ``sizes`` are the cluster counts per level (decreasing). Level ``l > 0`` clusters the
    (normalised) centroids of level ``l − 1``; its concentrations come from those centroids'
    distances, as in the official code.
    """
    levels: list[PrototypeLevel] = []
    points = x.detach().float()
    parents: list[Tensor] = []
    raw: list[tuple[Tensor, Tensor]] = []
    for level, k in enumerate(sizes):
        result = kmeans(points, k, iters=iters, seed=seed + level, restarts=restarts)
        centroids = F.normalize(result.centroids, dim=1)
        raw.append((centroids, concentration(result.distance, result.assign, k, tau)))
        if level > 0:
            parents.append(result.assign)
        points = centroids
    for level, (centroids, phi) in enumerate(raw):
        parent = parents[level] if level < len(parents) else None
        levels.append(PrototypeLevel(centroids, phi, parent))
    return levels


class EmbeddingBank(nn.Module):
    """Ring buffer of the most recent ``size`` embeddings ``(size, D)``, saved in checkpoints.

    ``recent()`` returns what was added since the last ``reset_recent()`` (at most ``size``
    rows, all ranks' rows under DDP), i.e. about one epoch of embeddings when reset per epoch.
    """

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("data", torch.zeros(size, dim))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("fresh", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def add(self, z: Tensor) -> None:
        """Append ``(B, D)`` rows (detached), overwriting the oldest."""
        size = self.data.shape[0]
        z = z.detach().to(self.data.dtype)[-size:]
        rows = (self.ptr + torch.arange(z.shape[0], device=z.device)) % size
        self.data[rows] = z
        self.ptr.copy_((self.ptr + z.shape[0]) % size)
        self.fresh.copy_(torch.clamp(self.fresh + z.shape[0], max=size))

    def recent(self) -> Tensor:
        """``(M, D)`` rows added since the last reset (gathered over DDP ranks)."""
        size, m = self.data.shape[0], int(self.fresh)
        rows = (self.ptr - m + torch.arange(m, device=self.data.device)) % size
        mine = self.data[rows]
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            counts = [torch.zeros((), dtype=torch.long, device=mine.device)
                      for _ in range(dist.get_world_size())]
            dist.all_gather(counts, self.fresh.clone())
            top = int(max(counts))
            padded = torch.zeros(top, mine.shape[1], device=mine.device, dtype=mine.dtype)
            padded[:m] = mine
            parts = [torch.zeros_like(padded) for _ in counts]
            dist.all_gather(parts, padded)
            mine = torch.cat([p[: int(c)] for p, c in zip(parts, counts, strict=True)])
        return mine

    def reset_recent(self) -> None:
        self.fresh.zero_()
