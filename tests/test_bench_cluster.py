"""tools/bench_cluster.py: the estimate for 1,000 scenes and the peak-RSS reading (the timed
runs themselves are not tests: ``python tools/bench_cluster.py --scenes 2 --size 256 --large
512 --split-mpx 0.1`` is its smoke test)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def bench(load_tool):
    return load_tool("bench_cluster")


def test_the_estimate_scales_the_measured_throughput_over_machines(bench) -> None:
    # 1 Mpx/s on 2 workers: 0.5 Mpx/s each, a 100 Mpx scene every 200 s, 18 scenes/h per worker
    figures = bench.estimate(1.0, workers=2, task_ms=0.0, start_s=0.0)
    assert figures["scenes_per_h_per_worker"] == 18.0
    assert figures["machines"]["1"] == {"workers": 2, "scenes_per_h": 36.0, "hours": 27.78}
    assert figures["machines"]["100"]["hours"] == 0.28
    slow = bench.estimate(1.0, workers=2, task_ms=1000.0, start_s=3600.0)  # 1 s a task, 1 h
    assert slow["machines"]["100"]["hours"] == pytest.approx(0.28 + 1000 / 3600 + 1, abs=0.01)


def test_peak_rss_is_read(bench) -> None:
    assert 10 < bench.peak_rss_mb() < 1e6


def test_compare_gives_the_steady_state_ratio_beside_the_wall_ratio(bench) -> None:
    # 2 workers taking 10 s a scene against one process taking 6 s: 1.2x in steady state
    runs = {"sequential": {"mpx_s": 1.0, "batch_s": 50.0, "scene_s": 6.0},
            "cluster": {"mpx_s": 0.8, "batch_s": 60.0, "scene_s": 10.0}}
    bench.compare("small", runs, 0.95, "cluster", workers=2)
    assert (runs["ratio"], runs["ratio_batch"], runs["ratio_scene"]) == (0.8, 0.833, 1.2)
    assert runs["met"] is False
