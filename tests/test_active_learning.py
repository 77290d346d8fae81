"""tools/active_learning.py, tiny budget on the bundled NC scene: rounds, outputs, resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="module")
def al(load_tool):
    return load_tool("active_learning")


def test_tiny_study_runs_every_arm_and_resumes(al, tmp_path: Path, one_thread: None,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "docs" / "al"
    args = ["--dataset", "nc", "--budget", "tiny", "--out", str(out), "--work",
            str(tmp_path / "work")]
    assert al.main(args) == 0
    results = json.loads(out.with_suffix(".json").read_text())
    rounds = [(r["arm"], r["points"]) for r in results["runs"]]
    assert rounds == [("start", 4), ("random", 8), ("uncertainty", 8), ("hybrid", 8)]
    start = results["runs"][0]["new"]
    for r in results["runs"][1:]:  # each arm asks 4 new points, never one asked before
        assert len(r["new"]) == 4 and not {tuple(p) for p in r["new"]} & {tuple(p) for p in start}
        assert 0 <= r["miou"] <= 1 and sum(r["answered"].values()) + r["unanswered"] <= 8
        assert 0 <= r["on_edge"] <= 4
    summary = results["summary"][0]
    assert set(summary["curves"]) == {"random", "uncertainty", "hybrid"}
    assert summary["verdict"].startswith("nc: ") and "reached" in summary["verdict"]
    doc = out.with_suffix(".md").read_text()
    assert summary["verdict"] in doc and "| 8 |" in doc and "al.png" in doc
    assert "on a class edge" in doc and 0 < summary["edge_share"] < 1
    assert "init random; overrides none; fine-tunes per round 1" in doc
    assert summary["paired"]["hybrid"][2] == 1 and "paired by seed and round" in doc
    assert out.with_suffix(".png").stat().st_size > 0

    def no_training(*_args, **_kwargs):
        raise AssertionError("a finished round was run again")

    monkeypatch.setattr(al, "train_and_score", no_training)
    assert al.main([*args, "--resume"]) == 0  # every round is replayed from OUT.json
    assert json.loads(out.with_suffix(".json").read_text())["runs"] == results["runs"]
    merged = tmp_path / "merged"  # a run made apart, merged into a new OUT: replayed too
    assert al.main([*args[:-4], "--out", str(merged), "--work", str(tmp_path / "work"),
                    "--merge", str(out.with_suffix(".json"))]) == 0
    assert json.loads(merged.with_suffix(".json").read_text())["runs"] == results["runs"]
    with pytest.raises(SystemExit, match="no such file"):
        al.main([*args, "--merge", str(tmp_path / "missing.json")])
    # rounds fine-tuned another way are never mixed in: another --set is refused
    with pytest.raises(SystemExit, match=r"ran sets \[\], this run \['ema=0.5'\]"):
        al.main([*args, "--resume", "--set", "ema=0.5"])


def test_repeats_score_each_round_by_the_mean_of_several_fine_tunes(
        al, tmp_path: Path, one_thread: None, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "al"
    args = ["--dataset", "nc", "--budget", "tiny", "--arm", "random", "--out", str(out),
            "--work", str(tmp_path / "work")]
    assert al.main([*args, "--repeats", "2"]) == 0
    runs = json.loads(out.with_suffix(".json").read_text())["runs"]
    assert [(r["arm"], r["points"], len(r["repeats"])) for r in runs] == [("start", 4, 2),
                                                                          ("random", 8, 2)]
    for r in runs:
        assert r["miou"] == pytest.approx(np.mean([x["miou"] for x in r["repeats"]]))
    seeds = []
    train = al.train_and_score

    def counted(dataset, state, config, init, work):
        seeds.append(config.trainer.seed)
        return train(dataset, state, config, init, work)

    monkeypatch.setattr(al, "train_and_score", counted)
    assert al.main([*args, "--repeats", "3", "--resume"]) == 0  # only the third runs are new
    assert seeds == [2000, 2000]
    runs = json.loads(out.with_suffix(".json").read_text())["runs"]
    assert [len(r["repeats"]) for r in runs] == [3, 3]
    with pytest.raises(SystemExit, match="--repeats 0"):
        al.main([*args, "--repeats", "0"])


def test_a_bad_init_or_setting_is_one_line_before_any_round(al, tmp_path: Path) -> None:
    args = ["--dataset", "nc", "--budget", "tiny", "--out", str(tmp_path / "al")]
    with pytest.raises(SystemExit, match=r"error: --init .*no backbone.safetensors found"):
        al.main([*args, "--init", str(tmp_path)])
    with pytest.raises(SystemExit, match=r"error: .*no_such_key"):
        al.main([*args, "--set", "no_such_key=1"])
    assert not list(tmp_path.iterdir())  # nothing written


def test_start_points_are_uniform_over_valid_pixels(al) -> None:
    valid = np.zeros((20, 30), dtype=bool)
    valid[5:15, 10:20] = True
    image = al.Image(Path("x.tif"), np.ones((20, 30), np.uint8), valid)
    dataset = al.Dataset("x", [image, image], [image], Path("c.yaml"), False, False)
    points = al.start_points(dataset, 150, seed=0)
    assert len({tuple(p) for p in points}) == 150
    assert all(valid[r, c] for _, r, c in points)
    assert {i for i, _, _ in points} == {0, 1}
    assert points == al.start_points(dataset, 150, seed=0)


def test_edge_mask_marks_class_pixels_beside_another_class(al) -> None:
    ref = np.zeros((6, 6), np.uint8)
    ref[:, 3:] = 1
    ref[0, 0] = al.IGNORE  # no class: neither an edge nor makes its neighbours one
    edge = al.edge_mask(ref)
    assert edge[:, 2:4].all() and not edge[:, [0, 1, 4, 5]].any()
    ref[4, 4] = 2  # a lone pixel: it and its 8 neighbours are edges
    edge = al.edge_mask(ref)
    assert edge[3:6, 3:6].all() and not edge[1, 5]


def test_paired_differences_use_every_round_both_arms_ran(al) -> None:
    runs = [{"dataset": "nc", "arm": arm, "seed": seed, "points": size, "miou": miou}
            for arm, seed, size, miou in [("start", 0, 4, 0.1), ("random", 0, 8, 0.20),
                                          ("hybrid", 0, 8, 0.25), ("random", 1, 8, 0.30),
                                          ("hybrid", 1, 8, 0.27), ("hybrid", 2, 8, 0.9)]]
    mean, sd, n = al.paired(runs, "nc", "hybrid")
    assert n == 2 and mean == pytest.approx(1.0) and sd == pytest.approx(np.std([5, -3], ddof=1))
    assert al.paired(runs, "nc", "uncertainty") is None


def test_verdict_names_the_figure(al) -> None:
    assert al.verdict("nc", 0.4, {"hybrid": 100}, 200).endswith("figure reached")
    assert al.verdict("nc", 0.4, {"hybrid": 125}, 200).endswith("figure not reached")
    assert "does not reach" in al.verdict("nc", 0.4, {"hybrid": None}, 200)
    assert al.verdict("nc", 0.4, {"random": 125}, 200).endswith("figure is not measured")
    flat = al.verdict("nc", 0.4, {"random": 25, "hybrid": 25}, 200)  # random's curve is flat
    assert "cannot be measured" in flat and flat.endswith("(not reached)")
    assert al.verdict("nc", 0.4, {"random": 125, "hybrid": 100}, 200).endswith("figure reached")


def test_max_points_cuts_a_budget_to_a_round(al, tmp_path: Path) -> None:
    full = al.BUDGETS["full"]
    assert al.with_max_points(full, None) is full
    reduced = al.with_max_points(full, 100)
    assert reduced == {**full, "max": 100} and full["max"] == 200
    for bad in (25, 110, 10):
        with pytest.raises(SystemExit, match="not a round's size"):
            al.with_max_points(full, bad)
    with pytest.raises(SystemExit, match="needs --data DIR"):
        al.main(["--dataset", "dubai", "--out", str(tmp_path / "al")])


def test_pretrained_budget_fine_tunes_with_the_config_as_it_is(al) -> None:
    from rsseg.config import FinetuneConfig, load_config

    def config(budget: str):
        sets = al.BUDGETS[budget]
        return load_config(FinetuneConfig, al.ROOT / "configs" / "finetune_cpu.yaml",
                           [*sets["model"], *sets["finetune"], *al.COMMON])

    plain = load_config(FinetuneConfig, al.ROOT / "configs" / "finetune_cpu.yaml")
    pretrained = config("pretrained")
    assert pretrained.model == plain.model and pretrained.trainer.epochs == plain.trainer.epochs
    assert config("full").model.arch == "unet"  # the shallow U-Net of the NC demo


def test_rounds_fine_tuned_from_another_initialisation_are_not_merged(al) -> None:
    now = {"budget": "pretrained", "init": "pre", "init_decoder": True, "sets": []}
    before_decoders = {"budget": "pretrained", "init": "pre", "runs": []}  # an older OUT.json
    with pytest.raises(SystemExit, match="ran init_decoder False, this run True"):
        al.check_same_recipe(before_decoders, now, Path("old.json"))
    al.check_same_recipe({**before_decoders, "init_decoder": True}, now, Path("old.json"))
    with pytest.raises(SystemExit, match="ran init None"):
        al.check_same_recipe({**now, "init": None}, now, Path("old.json"))
