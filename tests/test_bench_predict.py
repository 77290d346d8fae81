"""tools/bench_predict.py --isa: a run limited to AVX2 really runs PyTorch's kernels at AVX2 and
says so in its JSON, and refuses the runtime it cannot limit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

TOOL = Path(__file__).parents[1] / "tools" / "bench_predict.py"


def test_isa_avx2_limits_the_kernels_and_refuses_onnxruntime(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(TOOL), "--size", "96", "--tile", "64", "--overlap", "16",
         "--modes", "torch:fp32,onnxruntime:fp32", "--rss-modes", "none", "--threads", "1",
         "--isa", "avx2", "--json"],
        capture_output=True, text=True, check=True, cwd=tmp_path)
    result = json.loads(proc.stdout)
    assert result["cpu"] == "AVX2"
    assert result["isa_limit"] == "AVX2"
    assert result["modes"]["torch:fp32"]["predict_mpx_s"] > 0
    assert "cannot be limited" in result["modes"]["onnxruntime:fp32"]["error"]
