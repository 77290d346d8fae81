"""tools/profile_int8.py: per-layer times and convolution MACs read from OpenVINO's performance
counters, added up per layer type."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "tools"))


@pytest.mark.filterwarnings("ignore::FutureWarning")  # convert_model traces with torch.jit
def test_layers_carry_their_time_and_convolution_macs() -> None:
    ov = pytest.importorskip("openvino")
    import profile_int8

    from rsseg.inference.openvino_runtime import compile_cpu

    net = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(8, 2, 1)).eval()
    x = torch.randn(1, 4, 32, 48)
    compiled = compile_cpu(ov.convert_model(net, example_input=x), 1, profile=True)
    wall, times = profile_int8.layer_times(compiled, x.numpy(), runs=3)
    rows = profile_int8.layer_table(compiled, times)
    convs = sorted(r["gmac"] for r in rows if r["type"] == "Convolution")
    assert convs == pytest.approx([2 * 32 * 48 * 8 / 1e9, 8 * 32 * 48 * 4 * 9 / 1e9])
    assert wall > 0 and sum(r["ms"] for r in rows) > 0
    summary = profile_int8.summarise(rows)
    conv = next(g for g in summary if g["type"] == "Convolution")
    assert conv["gmac"] == pytest.approx(round(sum(convs), 3))
    assert sum(g["share"] for g in summary) == pytest.approx(1.0, abs=1e-3)
    assert np.all(np.diff([g["ms"] for g in summary]) <= 0)  # slowest first
