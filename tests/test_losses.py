"""NT-Xent (both variants) against a naive double loop; the effective-rank diagnostic."""

from __future__ import annotations

import math

import pytest
import torch

from rsseg.losses.contrastive import nt_xent
from rsseg.losses.diagnostics import effective_rank, embedding_spectrum


def naive_nt_xent(z1: torch.Tensor, z2: torch.Tensor, tau: float, decoupled: bool) -> float:
    """Textbook NT-Xent in plain Python floats: mean over 2N anchors of -log(pos / denominator)."""
    vectors = [row.tolist() for row in torch.cat([z1, z2]).double()]
    vectors = [[x / math.sqrt(sum(y * y for y in v)) for x in v] for v in vectors]
    n2 = len(vectors)

    def sim(i: int, j: int) -> float:
        return math.exp(sum(a * b for a, b in zip(vectors[i], vectors[j], strict=True)) / tau)

    total = 0.0
    for i in range(n2):
        pos = (i + n2 // 2) % n2
        denominator = 0.0
        for j in range(n2):
            if j == i or (decoupled and j == pos):
                continue
            denominator += sim(i, j)
        total += -math.log(sim(i, pos) / denominator)
    return total / n2


@pytest.mark.parametrize("decoupled", [True, False])
@pytest.mark.parametrize(("n", "d", "tau"), [(2, 3, 0.5), (5, 8, 0.1), (7, 4, 1.0)])
def test_nt_xent_matches_naive_loop(decoupled: bool, n: int, d: int, tau: float) -> None:
    gen = torch.Generator().manual_seed(n * 100 + d)
    z1, z2 = torch.randn(n, d, generator=gen) * 3, torch.randn(n, d, generator=gen)
    got = nt_xent(z1, z2, tau=tau, decoupled=decoupled)
    assert got.shape == ()
    assert got.item() == pytest.approx(naive_nt_xent(z1, z2, tau, decoupled), rel=1e-5, abs=1e-5)


def test_nt_xent_variants_differ_by_the_positive_term() -> None:
    """Standard denominator = decoupled denominator + positive, so standard ≥ decoupled."""
    gen = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(6, 5, generator=gen), torch.randn(6, 5, generator=gen)
    assert nt_xent(z1, z2, decoupled=False) > nt_xent(z1, z2, decoupled=True)


def test_nt_xent_rewards_aligned_views_and_has_gradients() -> None:
    gen = torch.Generator().manual_seed(1)
    z1 = torch.randn(8, 16, generator=gen, requires_grad=True)
    aligned = nt_xent(z1, z1.detach() * 2.0)  # positive pairs identical up to scale
    shuffled = nt_xent(z1, z1.detach().roll(1, dims=0))
    assert aligned < shuffled
    aligned.backward()
    assert z1.grad is not None and torch.isfinite(z1.grad).all()


def test_nt_xent_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="one shape"):
        nt_xent(torch.zeros(3, 4), torch.zeros(3, 5))
    with pytest.raises(ValueError, match="N ≥ 2"):
        nt_xent(torch.ones(1, 4), torch.ones(1, 4), decoupled=True)
    assert nt_xent(torch.ones(1, 4), torch.ones(1, 4), decoupled=False).item() == pytest.approx(0)


def test_effective_rank_of_isotropic_embeddings_is_near_d() -> None:
    z = torch.randn(4000, 16, generator=torch.Generator().manual_seed(0))
    spectrum = embedding_spectrum(z)
    assert spectrum.shape == (16,)
    assert (spectrum[:-1] >= spectrum[1:]).all()
    assert effective_rank(spectrum) > 15.0


def test_effective_rank_of_dimensionally_collapsed_embeddings() -> None:
    gen = torch.Generator().manual_seed(0)
    line = torch.randn(500, 1, generator=gen) * torch.randn(1, 32, generator=gen)
    assert effective_rank(embedding_spectrum(line)) == pytest.approx(1.0, abs=1e-3)
    basis = torch.linalg.qr(torch.randn(32, 4, generator=gen))[0]  # (32, 4) orthonormal
    plane = torch.randn(2000, 4, generator=gen) @ basis.T
    assert 3.0 < effective_rank(embedding_spectrum(plane)) <= 4.0 + 1e-6
    constant = torch.ones(10, 8)
    assert effective_rank(embedding_spectrum(constant)) == 1.0


def test_nt_xent_stays_float32_under_mixed_precision() -> None:
    z1, z2 = torch.randn(4, 8), torch.randn(4, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = nt_xent(z1.bfloat16(), z2.bfloat16())
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(nt_xent(z1, z2).item(), abs=0.05)
