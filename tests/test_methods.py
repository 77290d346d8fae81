"""The alternate pretexts (docs/methods.md) against naive reference implementations.

Losses are checked against plain Python loops; each pretext's forward against a naive
recomputation from the model's features; plus the bad inputs each method must refuse.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import default_collate

from rsseg.errors import ConfigError
from rsseg.losses.infonce import (
    grouped_nt_xent,
    information_regularizer,
    positive_similarity,
    prototype_infonce,
    queue_infonce,
    symmetric_infonce,
)
from rsseg.models.factory import ModelSpec, build_model
from rsseg.pretexts.base import DataInfo, Pretext, get_pretext, pretext_class
from rsseg.pretexts.claws import masked_pool
from rsseg.pretexts.clustering import EmbeddingBank, concentration, kmeans
from rsseg.pretexts.features import global_features
from rsseg.pretexts.views import ViewConfig, make_view_pair
from rsseg.registry import describe_methods, method_names

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE, PATCH = 32, 8
GEN = torch.Generator().manual_seed(0)
STILL = {"scale": (1.0, 1.0), "ratio": (1.0, 1.0), "flip": False, "rot90_p": 0.0,
         "photometric_p": 0.0, "gray_p": 0.0, "blur_p": 0.0}  # views = the tile itself
LANDSAT = ("B1_blue", "B2_green", "B3_red", "B4_nir", "B5_swir1", "B7_swir2")




def unet(bands: int = 4, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(ModelSpec(arch="unet", encoder="resnet18", in_channels=bands, classes=64))


def batch_for(pretext: Pretext, bands: int = 4, items: int = 4, seed: int = 0,
              side: int = 40) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:side, 0:side] / side
    tiles = [np.stack([np.sin((b + 1 + i) * 3 * rows + (b - i) * cols) for b in range(bands)])
             .astype(np.float32) for i in range(items)]
    return default_collate([pretext.sampler()(t, rng) for t in tiles])


def rand(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=GEN)


def unit(v: list[float]) -> list[float]:
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


# ---------------------------------------------------------------- losses vs naive loops


def naive_infonce(a: torch.Tensor, b: torch.Tensor, tau: float) -> float:
    """Mean over i of −log exp(â_i·b̂_i/τ) / Σ_j exp(â_i·b̂_j/τ)."""
    a = [unit(r) for r in a.tolist()]
    b = [unit(r) for r in b.tolist()]
    total = 0.0
    for i in range(len(a)):
        den = sum(math.exp(dot(a[i], b[j]) / tau) for j in range(len(b)))
        total += -math.log(math.exp(dot(a[i], b[i]) / tau) / den)
    return total / len(a)


def test_symmetric_infonce_matches_loop() -> None:
    z1, z2 = rand(5, 7), rand(5, 7)
    expected = 0.5 * naive_infonce(z1, z2, 0.1) + 0.5 * naive_infonce(z2, z1, 0.1)
    assert symmetric_infonce(z1, z2, 0.1).item() == pytest.approx(expected, rel=1e-4)


def test_queue_infonce_with_dropped_negatives_matches_loop() -> None:
    q, k, queue = rand(3, 6), rand(3, 6), F.normalize(rand(8, 6), dim=1)
    keep = torch.rand(3, 8, generator=GEN) > 0.4
    got = queue_infonce(q, k, queue, 0.2, keep).item()
    total = 0.0
    for n in range(3):
        qn, kn = unit(q[n].tolist()), unit(k[n].tolist())
        pos = math.exp(dot(qn, kn) / 0.2)
        neg = sum(math.exp(dot(qn, queue[j].tolist()) / 0.2) for j in range(8) if keep[n, j])
        total += -math.log(pos / (pos + neg))
    assert got == pytest.approx(total / 3, rel=1e-4)
    everything = queue_infonce(q, k, queue, 0.2, torch.ones(3, 8, dtype=torch.bool))
    assert queue_infonce(q, k, queue, 0.2).item() == pytest.approx(everything.item())


def test_prototype_infonce_with_per_prototype_temperature_matches_loop() -> None:
    q, protos = rand(4, 5), F.normalize(rand(6, 5), dim=1)
    positive = torch.tensor([0, 3, 3, 5])
    phi = torch.rand(6, generator=GEN) * 0.3 + 0.05
    keep = torch.rand(4, 6, generator=GEN) > 0.5
    got = prototype_infonce(q, protos, positive, phi, keep).item()
    total = 0.0
    for n in range(4):
        qn, p = unit(q[n].tolist()), int(positive[n])
        s = [math.exp(dot(qn, protos[c].tolist()) / float(phi[c])) for c in range(6)]
        den = s[p] + sum(s[c] for c in range(6) if c != p and keep[n, c])
        total += -math.log(s[p] / den)
    assert got == pytest.approx(total / 4, rel=1e-4)


def test_grouped_nt_xent_is_simclr_within_each_group() -> None:
    z1, z2 = rand(6, 4), rand(6, 4)
    groups = torch.tensor([0, 1, 0, 2, 1, 0])  # group 2 is a singleton: loss 0 for it
    tau = 0.5
    z = [unit(r) for r in torch.cat([z1, z2]).tolist()]
    g = groups.tolist() * 2
    total = 0.0
    for i in range(12):
        pos = (i + 6) % 12
        den = sum(math.exp(dot(z[i], z[j]) / tau) for j in range(12) if j != i and g[j] == g[i])
        total += -math.log(math.exp(dot(z[i], z[pos]) / tau) / den)
    assert grouped_nt_xent(z1, z2, groups, tau).item() == pytest.approx(total / 12, rel=1e-4)


def test_information_regularizer_matches_loop_and_detaches_originals() -> None:
    a, b, c = rand(5, 3), rand(5, 3), rand(5, 3)
    s12, s10, s20 = (positive_similarity(x, y, 0.5) for x, y in ((a, b), (a, c), (b, c)))
    expected = 0.0
    for n in range(5):
        sims = [math.exp(dot(unit(x[n].tolist()), unit(y[n].tolist())) / 0.5)
                for x, y in ((a, b), (a, c), (b, c))]
        expected += max(0.0, 2 * sims[0] - sims[1] - sims[2])
    assert information_regularizer(s12, s10, s20).item() == pytest.approx(expected / 5, rel=1e-4)
    s10 = s10.clone().requires_grad_(True)
    information_regularizer(s12.clone().requires_grad_(True) + 10, s10, s20).backward()
    assert s10.grad is None


# ---------------------------------------------------------------- clustering


def test_kmeans_recovers_separated_blobs_and_is_seeded() -> None:
    centres = torch.tensor([[8.0, 0, 0], [0, 8.0, 0], [0, 0, 8.0]])
    x = torch.cat([c + 0.3 * rand(40, 3) for c in centres])
    first = kmeans(x, 3, seed=1)
    labels = first.assign.view(3, 40)
    assert all(len(set(row.tolist())) == 1 for row in labels)
    assert len(set(labels[:, 0].tolist())) == 3
    torch.testing.assert_close(first.distance, (x - first.centroids[first.assign]).norm(dim=1))
    torch.testing.assert_close(kmeans(x, 3, seed=1).centroids, first.centroids)


def test_concentration_matches_the_hcsc_formula() -> None:
    assign = torch.tensor([0, 0, 0, 1, 1, 2, 3, 3, 3, 3, 4, 4])
    distance = torch.rand(12, generator=GEN) + 0.1
    got = concentration(distance, assign, 5, tau=0.2).numpy()
    phi = np.zeros(5)
    for c in range(5):
        d = distance[assign == c].numpy()
        if len(d) > 1:
            phi[c] = d.mean() / np.log(len(d) + 10)
    phi[phi == 0] = phi.max()  # lonely cluster 2
    phi = phi.clip(np.percentile(phi, 10), np.percentile(phi, 90))
    np.testing.assert_allclose(got, 0.2 * phi / phi.mean(), rtol=1e-5)


def test_embedding_bank_keeps_the_recent_rows_in_order() -> None:
    bank = EmbeddingBank(5, 2)
    bank.add(torch.arange(6.0).view(3, 2))
    bank.reset_recent()
    bank.add(torch.arange(6.0, 14.0).view(4, 2))
    torch.testing.assert_close(bank.recent(), torch.arange(6.0, 14.0).view(4, 2))
    bank.add(torch.arange(14.0, 18.0).view(2, 2))
    assert bank.recent().shape == (5, 2) and bank.recent()[-1, 1].item() == 17.0


# ---------------------------------------------------------------- DirectCLR


def test_directclr_global_loss_is_infonce_on_the_first_dims() -> None:
    model = unet()
    pretext = get_pretext("directclr", model, view_size=SIZE)
    assert pretext.dims == round(512 * 360 / 2048) == 90  # U-Net's deepest stage: 512 channels
    assert not list(pretext.parameters())  # no projector
    batch = batch_for(pretext)
    loss, _ = pretext(batch, model)
    r1 = global_features(model, batch["view1"]).mean(dim=(2, 3))[:, :90]
    r2 = global_features(model, batch["view2"]).mean(dim=(2, 3))[:, :90]
    expected = 0.5 * naive_infonce(r1, r2, 0.1) + 0.5 * naive_infonce(r2, r1, 0.1)
    assert loss.item() == pytest.approx(expected, rel=1e-4)


def test_directclr_dense_loss_uses_matched_box_means() -> None:
    model = unet()
    pretext = get_pretext("directclr", model, view_size=SIZE, variant="dense", patch_size=PATCH,
                          local_dims=10)
    batch = batch_for(pretext)
    loss, logs = pretext(batch, model)
    from rsseg.pretexts.features import extract_features

    local1 = extract_features(model, batch["view1"]).local
    local2 = extract_features(model, batch["view2"]).local
    r1, r2 = [], []
    for b, boxes in enumerate(batch["patches"].tolist()):
        for y1, x1, y2, x2 in boxes:
            if y1 < 0:
                continue
            r1.append(local1[b, :10, y1:y1 + PATCH, x1:x1 + PATCH].mean(dim=(1, 2)))
            r2.append(local2[b, :10, y2:y2 + PATCH, x2:x2 + PATCH].mean(dim=(1, 2)))
    r1, r2 = torch.stack(r1), torch.stack(r2)
    expected = 0.5 * naive_infonce(r1, r2, 0.1) + 0.5 * naive_infonce(r2, r1, 0.1)
    assert loss.item() == pytest.approx(expected, rel=1e-4)
    assert logs["loss_dense"].item() == pytest.approx(loss.item())


def test_directclr_refuses_more_dims_than_the_representation() -> None:
    with pytest.raises(ConfigError, match=r"dims=600 exceeds.*512.*allowed: 1 ≤ x ≤ 512"):
        get_pretext("directclr", unet(), dims=600)
    with pytest.raises(ConfigError, match=r"tau=0.*allowed: 0 < x ≤ 10"):
        get_pretext("directclr", unet(), tau=0)


# ---------------------------------------------------------------- HCSC


def test_hcsc_warmup_is_moco_with_momentum_update_and_queue() -> None:
    model = unet()
    pretext = get_pretext("hcsc", model, view_size=SIZE, queue_size=16, momentum=0.9)
    batch = batch_for(pretext)
    key_before = [p.detach().clone() for p in pretext.key_model.parameters()]
    queue = pretext.queue.clone()
    loss, logs = pretext(batch, model)
    for old, key, live in zip(key_before, pretext.key_model.parameters(), model.parameters(),
                              strict=True):
        torch.testing.assert_close(key, 0.9 * old + 0.1 * live)
    k = pretext.keys(batch["view2"])  # BN batch statistics: the same keys again
    torch.testing.assert_close(pretext.queue[:4], k)
    torch.testing.assert_close(pretext.queue[4:], queue[4:])
    q = global_features(model, batch["view1"]).mean(dim=(2, 3))
    q = pretext.head(q)
    total = 0.0
    for n in range(4):
        qn, kn = unit(q[n].tolist()), k[n].tolist()
        pos = math.exp(dot(qn, kn) / 0.2)
        neg = sum(math.exp(dot(qn, queue[j].tolist()) / 0.2) for j in range(16))
        total += -math.log(pos / (pos + neg))
    assert loss.item() == pytest.approx(total / 4, rel=1e-4)
    assert logs["prototype_levels"].item() == 0 and logs["loss_prototype"].item() == 0
    assert all(not p.requires_grad for p in pretext.key_model.parameters())


def test_hcsc_clusters_the_previous_epoch_into_a_hierarchy() -> None:
    model = unet()
    pretext = get_pretext("hcsc", model, view_size=SIZE, queue_size=32, warmup_epochs=1,
                          cluster_divisors=(10, 40))
    assert pretext.cluster_sizes(400) == [40, 10]
    assert pretext.cluster_sizes(200) == [20, 5]
    assert pretext.cluster_sizes(30) == [3]
    assert pretext.cluster_sizes(19) == []  # too few keys for ≥ 2 prototypes of ≥ 10 keys
    centres = F.normalize(rand(8, 128), dim=1)
    keys = F.normalize(centres.repeat(25, 1) + 0.05 * rand(200, 128), dim=1)
    pretext.bank.add(keys)
    pretext.on_epoch_start(0, model)  # warm-up: the epoch's keys are dropped, no prototypes
    assert pretext.levels == [] and pretext.bank.recent().shape[0] == 0
    pretext.bank.add(keys)
    pretext.on_epoch_start(1, model)
    sizes = [level.centroids.shape[0] for level in pretext.levels]
    assert sizes == [20, 5]
    low, top = pretext.levels
    assert low.parent is not None and low.parent.max() < 5 and top.parent is None
    assert low.phi.mean().item() == pytest.approx(0.2, rel=1e-4)
    loss, logs = pretext(batch_for(pretext), model)
    assert logs["prototype_levels"].item() == 2 and logs["loss_prototype"].item() > 0
    assert 0 < logs["kept_negatives"].item() <= 1
    loss.backward()
    assert all(p.grad is not None for p in pretext.head.parameters())


def test_hcsc_selective_coding_drops_same_cluster_candidates() -> None:
    from rsseg.pretexts.clustering import PrototypeLevel

    centroids = torch.eye(4)
    level = PrototypeLevel(centroids, torch.full((4,), 0.01), torch.tensor([0, 0, 1, 1]))
    upper = PrototypeLevel(F.normalize(torch.tensor([[1.0, 1, 0, 0], [0, 0, 1, 1]]), dim=1),
                           torch.full((2,), 0.01), None)
    queue = torch.eye(4)[[0, 0, 1, 2, 3]]  # two negatives from cluster 0
    label = torch.tensor([0, 2])
    torch.manual_seed(0)
    keep = torch.stack([pretext_class("hcsc").select_instances(queue, level, label)
                        for _ in range(50)]).float().mean(0)
    assert keep[0, :2].max() < 0.05 and keep[0, 2:].min() > 0.9  # query 0 drops cluster 0
    assert keep[1, 3] < 0.05 and keep[1, [0, 1, 2, 4]].min() > 0.9
    keep = torch.stack([pretext_class("hcsc").select_prototypes(level, upper, label)
                        for _ in range(50)]).float().mean(0)
    assert keep[0, :2].max() < 0.05 and keep[0, 2:].min() > 0.9  # siblings of prototype 0
    assert keep[1, 2:].max() < 0.05 and keep[1, :2].min() > 0.9


def test_hcsc_config_ranges() -> None:
    with pytest.raises(ConfigError, match="fewer prototypes at each higher level"):
        get_pretext("hcsc", unet(), cluster_divisors=(50, 20))
    with pytest.raises(ConfigError, match=r"momentum=1.5.*allowed: 0 ≤ x ≤ 1"):
        get_pretext("hcsc", unet(), momentum=1.5)


# ---------------------------------------------------------------- CLAWS


def vegetation_tile() -> tuple[np.ndarray, DataInfo]:
    """6-band tile, normalised with mean 50 / std 10: vegetated left half (NDVI 0.6)."""
    raw = np.full((6, 40, 40), 50.0, dtype=np.float32)
    raw[2, :, :20], raw[3, :, :20] = 20.0, 80.0  # red, NIR: NDVI 0.6
    raw[2, :, 20:], raw[3, :, 20:] = 60.0, 50.0  # NDVI < 0
    info = DataInfo(LANDSAT, (50.0,) * 6, (10.0,) * 6)
    return (raw - 50.0) / 10.0, info


def test_claws_ndvi_mask_follows_named_bands_and_views() -> None:
    tile, info = vegetation_tile()
    pretext = get_pretext("claws", unet(6), view_size=40, views=STILL)
    pretext.bind_data(info)
    item = pretext.sampler()(tile, np.random.default_rng(0))
    expected = np.zeros((40, 40), dtype=np.float32)
    expected[:, :20] = 1
    np.testing.assert_array_equal(item["mask1"], expected)
    np.testing.assert_array_equal(item["mask2"], expected)
    geo = get_pretext("claws", unet(6), view_size=40, views={**STILL, "rot90_p": 1.0})
    geo.bind_data(info)
    for seed in range(4):
        item = geo.sampler()(tile, np.random.default_rng(seed))
        pair = make_view_pair(tile, np.random.default_rng(seed), 40, geo.config.views)
        np.testing.assert_array_equal(item["mask2"], (pair.index2 % 40 < 20).astype(np.float32))


def test_claws_without_nir_names_the_bands_it_has() -> None:
    pretext = get_pretext("claws", unet(3))
    rgb = DataInfo(("red", "green", "blue"), (0.0,) * 3, (1.0,) * 3)
    with pytest.raises(ConfigError, match=r"NIR band 'nir'.*only 'red', 'green', 'blue'"):
        pretext.bind_data(rgb)
    get_pretext("claws", unet(3), mask="none").bind_data(rgb)  # fine without NDVI


def test_claws_masked_pool_matches_loop() -> None:
    features = rand(2, 3, 2, 2)
    mask = torch.zeros(2, 8, 8)
    mask[0, :4, :2] = 1  # cell (0,0) half covered
    mask[0, 4:, 4:] = 1  # cell (1,1) fully covered
    got = masked_pool(features, mask)
    expected = (0.5 * features[0, :, 0, 0] + features[0, :, 1, 1]) / 1.5
    torch.testing.assert_close(got[0], expected)
    torch.testing.assert_close(got[1], features[1].mean(dim=(1, 2)))  # empty: plain mean


def test_claws_forward_contrasts_within_clusters() -> None:
    _, info = vegetation_tile()
    model = unet(6)
    pretext = get_pretext("claws", model, view_size=SIZE, clusters=2, warmup_epochs=0)
    pretext.bind_data(info)
    batch = batch_for(pretext, bands=6)
    loss, logs = pretext(batch, model)
    assert logs["negatives_per_anchor"].item() == 6  # one cluster before clustering
    pretext.bank.add(torch.cat([F.normalize(rand(10, 512), dim=1) + 3,
                                F.normalize(rand(10, 512), dim=1) - 3]))
    pretext.on_epoch_start(1, model)
    assert bool(pretext.clustered)
    groups = torch.tensor([0, 1, 0, 1])
    pretext.groups = lambda pooled: groups  # type: ignore[method-assign]
    loss, _ = pretext(batch, model)
    x1 = batch["view1"] * batch["mask1"][:, None]
    x2 = batch["view2"] * batch["mask2"][:, None]
    z1 = pretext.head(masked_pool(global_features(model, x1), batch["mask1"]))
    z2 = pretext.head(masked_pool(global_features(model, x2), batch["mask2"]))
    assert loss.item() == pytest.approx(grouped_nt_xent(z1, z2, groups, 0.5).item(), rel=1e-4)


# ---------------------------------------------------------------- adversarial (ARIEL)


def test_view0_is_view2_before_its_photometric_change() -> None:
    tile = np.random.default_rng(1).standard_normal((3, 50, 50)).astype(np.float32)
    still = ViewConfig(photometric_p=0.0, gray_p=0.0, blur_p=0.0)
    clean = make_view_pair(tile, np.random.default_rng(3), SIZE, still)
    pair = make_view_pair(tile, np.random.default_rng(3), SIZE)
    np.testing.assert_array_equal(pair.view0, clean.view2)
    np.testing.assert_array_equal(pair.index2, clean.index2)


def test_pgd_view_stays_in_the_ball_raises_the_loss_and_freezes_the_model() -> None:
    model = unet()
    pretext = get_pretext("adversarial", model, base="simclr", view_size=SIZE, steps=4)
    batch = batch_for(pretext)
    x_adv = pretext.attack(batch, model)
    assert model.training and pretext.base.training
    assert all(p.grad is None for p in [*model.parameters(), *pretext.parameters()])
    delta = x_adv - batch["view0"]
    assert delta.abs().max().item() <= 0.04 + 1e-6 and delta.abs().max().item() > 0.02
    model.eval()
    with torch.no_grad():
        clean, _ = pretext.base({**batch, "view2": batch["view0"]}, model)
        attacked, _ = pretext.base({**batch, "view2": x_adv}, model)
    assert attacked.item() > clean.item()


def test_adversarial_around_glcnet_combines_the_losses() -> None:
    model = unet()
    pretext = get_pretext("adversarial", model, view_size=SIZE, lam=2.0,
                          base_params={"patch_size": PATCH})
    assert pretext.base.name == "glcnet" and pretext.base.config.view_size == SIZE
    batch = batch_for(pretext)
    assert set(batch) == {"view1", "view2", "view0", "patches"}
    loss, logs = pretext(batch, model)
    assert {"loss_global", "loss_local", "loss_clean", "loss_adv", "loss_info"} <= set(logs)
    expected = logs["loss_clean"] + 0.5 * logs["loss_adv"] + 2.0 * logs["loss_info"]
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()
    assert all(p.grad is not None for p in pretext.parameters())


def test_adversarial_refuses_bases_it_cannot_wrap() -> None:
    with pytest.raises(ConfigError, match="cannot wrap 'hcsc'"):
        get_pretext("adversarial", unet(), base="hcsc")
    with pytest.raises(ConfigError, match=r"unknown method 'glcnett'.*glcnet"):
        get_pretext("adversarial", unet(), base="glcnett")
    with pytest.raises(ConfigError, match=r"method 'glcnet': unknown config key 'patchsize'"):
        get_pretext("adversarial", unet(), base_params={"patchsize": 3})


# ---------------------------------------------------------------- registry and CLI


def test_every_method_describes_itself() -> None:
    records = describe_methods()
    assert [r["name"] for r in records] == method_names()
    for r in records:
        assert r["kind"] in {"pretext", "regularizer", "tool"}
        assert r["description"] and r["reference"] and r["needs"]
        assert set(r["needs"]) <= {"two_views", "labels", "domains"}


def test_cli_methods_lists_every_method(run_cli) -> None:
    result = run_cli("methods", "--json")
    assert result.exit_code == 0
    listed = json.loads(result.stdout)
    assert [r["name"] for r in listed] == method_names()
    assert {"directclr", "hcsc", "claws", "adversarial"} <= {r["name"] for r in listed}
    text = run_cli("methods")
    assert text.exit_code == 0 and "hcsc" in text.stdout and "pretext" in text.stdout
    one = run_cli("methods", "hcsc")
    assert one.exit_code == 0 and "queue_size" in one.stdout
    bad = run_cli("methods", "mocov3")
    assert bad.exit_code == 1 and "unknown method 'mocov3'" in bad.stderr
    assert "glcnet" in bad.stderr and "Traceback" not in bad.stderr
