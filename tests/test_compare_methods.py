"""tools/compare_methods.py: ``--resume`` with other methods keeps the earlier rows."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def cm(load_tool):
    return load_tool("compare_methods")


def scores(kappa: float) -> dict:
    return {"oa": kappa + 0.2, "kappa": kappa, "miou": kappa / 2, "pixels": 100,
            "iou": {"1": kappa, "2": 0.1}, "share": {"1": 0.97, "2": 0.03},
            "rare_class": 2, "rare_iou": 0.1}


def test_resume_with_other_methods_keeps_the_earlier_rows(cm, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "pre_simclr").mkdir()  # the pretrained backbone of the earlier comparison
    previous = {
        "dataset": "nc", "notes": "", "budget": "tiny", "seeds": [0, 1], "tiles": 7,
        "pretraining": {"simclr": {"seconds": 10.0, "effective_rank": {"global": 2.5}}},
        "runs": [{"method": m, "seed": s, "seconds": 1.0, "total_seconds": 2.0,
                  **scores(k)} for m, s, k in (("simclr", 0, 0.5), ("simclr", 1, 0.7),
                                               ("random", 0, 0.4), ("random", 1, 0.2))],
    }
    trained = []

    def fake_finetune(name, seed, init, *args):
        trained.append((name, seed, init))
        return tmp_path / f"ft_{name}_{seed}"

    monkeypatch.setattr(cm, "_finetune_one", fake_finetune)
    kappas = iter([0.3, 0.1, 0.35, 0.15])
    dataset = cm.Dataset("nc", [], {}, [], lambda bundle, tmp: scores(next(kappas)))
    checkpoints = []
    results = cm.run_all(dataset, ["dcc", "random-subset"], [0, 1], "tiny", tmp_path,
                         lambda msg: None, checkpoint=lambda r: checkpoints.append(
                             [row["method"] for row in r.get("summary", [])]),
                         previous=previous)
    # only the requested methods ran; the earlier runs, backbone and rows are kept
    assert trained == [("dcc", 0, None), ("random-subset", 0, None), ("dcc", 1, None),
                       ("random-subset", 1, None)]
    assert results["pretraining"] == previous["pretraining"] and results["tiles"] == 7
    rows = {row["method"]: row for row in results["summary"]}
    assert list(rows) == ["simclr", "random", "dcc", "random-subset"]
    assert checkpoints[-1] == list(rows)  # every rewrite of OUT.json/OUT.md has them all
    assert rows["simclr"]["kappa"][0] == pytest.approx(0.6) and rows["simclr"]["runs"] == 2
    assert rows["simclr"]["seconds"] == pytest.approx(11.0)  # pretraining + mean fine-tuning
    assert rows["dcc"]["kappa"][0] == pytest.approx(0.325) and rows["dcc"]["runs"] == 2
    assert rows["random-subset"]["kappa"][0] == pytest.approx(0.125)
    assert rows["random"]["kappa"][0] == pytest.approx(0.3)
    table = cm.markdown(results)
    assert all(f"| {m} |" in table for m in rows)


def test_resume_refuses_another_budget(cm, tmp_path: Path) -> None:
    previous = {"dataset": "nc", "budget": "cpu-small", "seeds": [0], "pretraining": {},
                "runs": []}
    dataset = cm.Dataset("nc", [], {}, [], lambda bundle, tmp: {})
    with pytest.raises(ValueError, match="same dataset and budget"):
        cm.run_all(dataset, ["dcc"], [0], "tiny", tmp_path, lambda msg: None,
                   previous=previous)


def test_paired_delta_uses_the_seeds_both_arms_finished(cm) -> None:
    runs = [{"method": "glcnet", "seed": 0, "kappa": 0.5}, {"method": "glcnet", "seed": 1,
                                                             "kappa": 0.6},
            {"method": "glcnet", "seed": 2, "kappa": 0.9},  # random never finished seed 2
            {"method": "random", "seed": 0, "kappa": 0.4}, {"method": "random", "seed": 1,
                                                             "kappa": 0.3}]
    mean, sd, n = cm.paired_delta(runs, "glcnet", "kappa")
    assert n == 2 and mean == pytest.approx(0.2) and sd == pytest.approx(0.1414, abs=1e-4)
    assert cm.paired_delta(runs, "random", "kappa") is None
