"""tools/label_efficiency.py: paired differences, pretraining budgets, a tiny study on NC."""

from __future__ import annotations

import json

import pytest
import yaml


@pytest.fixture(scope="module")
def tool(load_tool):
    return load_tool("label_efficiency")


def _run(arm: str, seed: int, miou: float, protocol: str = "finetune") -> dict:
    return {"protocol": protocol, "setting": "points:20", "arm": arm, "seed": seed,
            "miou": miou, "kappa": miou, "oa": miou}


def test_summary_pairs_each_seed_with_the_baseline_of_that_seed(tool):
    runs = [_run("random", 0, 0.30), _run("random", 1, 0.20),
            _run("glcnet", 1, 0.28), _run("glcnet", 0, 0.33),
            _run("glcnet", 2, 0.90)]  # seed 2 has no baseline: not paired
    rows = {r["arm"]: r for r in tool.summarise(runs, ["random", "glcnet"])}
    assert rows["random"]["delta_miou_points"] is None
    assert rows["glcnet"]["delta_per_seed"] == [3.0, 8.0]  # seed order, whatever the runs
    assert rows["glcnet"]["delta_miou_points"][0] == pytest.approx(5.5)
    assert rows["glcnet"]["runs"] == 3


def test_pretraining_budget_is_read_from_the_run_folder(tool, tmp_path):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"pretext": {"name": "glcnet"}}))
    (tmp_path / "metrics.csv").write_text("epoch,loss_epoch,step\n0,,9\n0,2.9,111\n1,,119\n")
    assert tool.pretraining(tmp_path) == {"method": "glcnet", "steps": 120, "seed": 0}
    assert tool.pretraining(None) == {"method": "random", "steps": 0}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"pretext": {"name": "simclr"},
                                                          "trainer": {"seed": 3}}))
    assert tool.pretraining(tmp_path)["seed"] == 3


def test_pairs_compare_two_arms_on_the_seeds_both_ran(tool):
    runs = [_run("glcnet", 0, 0.40), _run("glcnet", 1, 0.35), _run("simclr", 1, 0.30),
            _run("simclr", 0, 0.41), _run("simclr", 2, 0.5),
            _run("glcnet", 0, 0.2, protocol="probe")]  # no probe of simclr: no probe pair
    (row,) = tool.summarise_pairs(runs, [("glcnet", "simclr")])
    assert (row["protocol"], row["arm"], row["base"]) == ("finetune", "glcnet", "simclr")
    assert row["delta_per_seed"] == [-1.0, 5.0]
    assert row["delta_miou_points"][0] == pytest.approx(2.0)


def test_methods_pool_each_pretraining_seed_with_the_other_methods_run_of_that_seed(tool):
    info = {"random": {"method": "random", "steps": 0},
            "g0": {"method": "glcnet", "steps": 100, "seed": 0},
            "g1": {"method": "glcnet", "steps": 100, "seed": 1},
            "s0": {"method": "simclr", "steps": 100, "seed": 0},
            "s1": {"method": "simclr", "steps": 100, "seed": 1},
            "s2": {"method": "simclr", "steps": 100, "seed": 2},  # no GLCNet of seed 2
            "g_short": {"method": "glcnet", "steps": 30, "seed": 0}}  # alone at its budget
    scores = {"random": (0.20, 0.10), "g0": (0.40, 0.30), "g1": (0.30, 0.20),
              "s0": (0.35, 0.31), "s1": (0.31, 0.15), "s2": (0.9, 0.9), "g_short": (0.5, 0.5)}
    runs = [_run(arm, seed, miou) for arm, pair in scores.items()
            for seed, miou in enumerate(pair)]
    rows = {(r["method"], r["base"], r["steps"]): r for r in tool.summarise_methods(runs, info)}
    versus_simclr = rows["glcnet", "simclr", 100]
    assert versus_simclr["runs"] == 2 and versus_simclr["n"] == 4
    assert versus_simclr["delta_miou_points"][0] == pytest.approx((5 - 1 - 1 + 5) / 4)
    assert versus_simclr["at_least"] == {"0": 2, "2": 2, "5": 2}
    versus_random = rows["glcnet", "random", 100]
    assert versus_random["delta_miou_points"][0] == pytest.approx((20 + 20 + 10 + 10) / 4)
    assert rows["simclr", "random", 100]["runs"] == 3
    assert ("glcnet", "random", 30) not in rows  # one pretraining run: nothing pooled


def test_a_method_with_its_pretrained_decoder_is_its_own_method(tool, tmp_path):
    """``init_decoder``: ``glcnet+decoder`` is pooled apart and compared with plain ``glcnet``
    (and SimCLR, which stores no decoder, stays ``simclr`` either way)."""
    from rsseg.models.backbone import BackboneMeta, export_backbone
    from rsseg.models.factory import ModelSpec, build_model

    spec = ModelSpec(arch="unet", encoder="resnet18", in_channels=3, classes=2)
    for name, decoder in (("glcnet", True), ("simclr", False)):
        run = tmp_path / name
        run.mkdir()
        (run / "config.yaml").write_text(yaml.safe_dump({"pretext": {"name": name}}))
        (run / "metrics.csv").write_text("epoch,loss_epoch,step\n0,2.9,9\n")
        export_backbone(build_model(spec), BackboneMeta(
            arch="unet", encoder="resnet18", kwargs={}, bands=[], pretext=name, epochs=1,
            decoder=decoder), run)
    assert tool.pretraining(tmp_path / "glcnet", decoder=True)["method"] == "glcnet+decoder"
    assert tool.pretraining(tmp_path / "glcnet")["method"] == "glcnet"
    assert tool.pretraining(tmp_path / "simclr", decoder=True)["method"] == "simclr"
    info = {f"{m}{k}": {"method": m, "steps": 10, "seed": k}
            for m in ("glcnet+decoder", "glcnet", "simclr") for k in (0, 1)}
    runs = [_run(arm, seed, 0.3 + 0.1 * ("+" in arm) + 0.01 * seed)
            for arm in info for seed in (0, 1)]
    rows = {(r["method"], r["base"]) for r in tool.summarise_methods(runs, info)}
    assert rows == {("glcnet+decoder", "glcnet"), ("glcnet+decoder", "simclr"),
                    ("glcnet", "simclr")}


def test_merge_adds_the_runs_and_arms_of_another_result_file(tool, tmp_path):
    mine = {"dataset": "dubai", "arms": ["random", "glcnet"], "runs": [_run("random", 0, 0.3)],
            "arm_runs": {"random": None, "glcnet": "g"},
            "pretraining": {"random": {"method": "random", "steps": 0},
                            "glcnet": {"method": "glcnet", "steps": 9, "seed": 1}}}
    other = {"dataset": "dubai", "arms": ["random", "simclr"], "pairs": [["glcnet", "simclr"]],
             "runs": [_run("random", 0, 0.9), _run("simclr", 0, 0.4),
                      {**_run("simclr", 1, 0.4), "error": "x"}],
             "arm_runs": {"random": None, "simclr": "s"},
             "pretraining": {"random": {"method": "random", "steps": 0},
                             "simclr": {"method": "simclr", "steps": 9, "seed": 0}}}
    tool.merge_results(mine, other, tmp_path / "other.json")
    assert mine["arms"] == ["random", "glcnet", "simclr"]  # this study's baseline stays first
    assert [(r["arm"], r["miou"]) for r in mine["runs"]] == [("random", 0.3), ("simclr", 0.4)]
    assert mine["pretraining"]["simclr"]["steps"] == 9 and mine["pairs"] == [["glcnet", "simclr"]]
    with pytest.raises(SystemExit, match="is a nc study"):
        tool.merge_results(mine, {**other, "dataset": "nc"}, tmp_path / "nc.json")


def test_a_setting_that_does_not_exist_is_refused_before_any_work(tool, tmp_path):
    with pytest.raises(SystemExit, match="does not exist for nc"):
        tool.main(["--dataset", "nc", "--arm", "random", "--settings", "points:20",
                   "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work")])
    with pytest.raises(SystemExit, match=r"error: config key 'no_such_key'"):
        tool.main(["--dataset", "nc", "--arm", "random", "--settings", "pixels:0.1",
                   "--set", "no_such_key=1", "--out", str(tmp_path / "out")])
    assert not list(tmp_path.iterdir())  # nothing written


def test_tiny_study_on_the_bundled_scene(tool, tmp_path):
    out = tmp_path / "le"
    tool.main(["--dataset", "nc", "--arm", "random", "--settings", "pixels:0.1", "--seeds", "0",
               "--set", "trainer.epochs=1", "--set", "trainer.steps_per_epoch=2",
               "--out", str(out), "--work", str(tmp_path / "work")])
    results = json.loads(out.with_suffix(".json").read_text())
    assert {(r["protocol"], r["arm"]) for r in results["runs"]} == {
        ("finetune", "random"), ("probe", "random")}
    assert all(0.0 <= r["miou"] <= 1.0 and "error" not in r for r in results["runs"])
    assert results["pretraining"] == {"random": {"method": "random", "steps": 0}}
    assert "| finetune | pixels:0.1 | random | 0 | — | 1 |" in out.with_suffix(".md").read_text()
    assert out.with_suffix(".png").stat().st_size > 0
