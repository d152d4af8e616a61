"""The side-by-side benchmark runs end to end (correctness only: no time is asserted)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_bench_quick_runs_both_pipelines(tmp_path):
    pytest.importorskip("torchvision", reason="bench-only: pip install torch==2.14.1 torchvision==0.29.1")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--quick", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "conventional:" in proc.stdout and "normlab:" in proc.stdout
    assert "normlab / conventional training throughput:" in proc.stdout
