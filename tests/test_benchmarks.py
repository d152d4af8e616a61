"""Every benchmark in its quick mode, on the package's own code, as a user runs it: each prints what it measures
(the numbers mean nothing at these sizes; that they come out, and agree where they must, does)."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import quick, quiet

from normlab.engine.train import train

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def run(script: str, *args: str, timeout: int = 600) -> str:
    done = subprocess.run([sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout


def test_bench_compares_normlab_with_the_conventional_pipeline_in_each_part():
    out = run("bench.py", "--quick")
    ratio = re.search(r"study: normlab study \d+ s against \d+ s of conventional training: ([\d.]+)x", out)
    assert ratio and float(ratio[1]) > 0, out
    assert "normlab / conventional training throughput" in out
    assert out.count("{'norm'") == 12  # bn, gn, ln × 4 batch sizes in the small-batch part


def test_gpu_script_runs_every_stage_on_a_cpu(tmp_path):
    run("gpu.py", "--device", "cpu", "--quick", "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work"),
        "--skip", "repeat", "seeds")
    results = json.loads((tmp_path / "out" / "gpu.json").read_text())
    failed = {name: value["error"] for name, value in results.items() if isinstance(value, dict) and "error" in value}
    assert not failed, failed
    assert {"check", "study_graph_default_jobs", "small_batches", "study_eager_1_at_once", "profile",
            "ghost_sweep_fused", "study_5_seeds_fuse_off", "startup", "check_fused"} <= set(results)
    assert results["startup"]["medians"]["normlab"]["setup"] >= 0
    assert results["study_graph_default_jobs"]["exit"] == 0 and len(results["study_graph_default_jobs"]["runs"]) == 3
    assert results["check"]["batch"]["eager_vs_eager_max_weight_difference"] == 0  # a CPU repeats itself


def test_backends_train_the_same_metrics_locally_and_on_ray():
    pytest.importorskip("ray")
    assert "identical per-epoch metrics: True" in run("backends.py", "--quick")


def test_schedule_times_both_ways_of_sharing_the_cores():
    out = run("schedule.py", "--quick")
    assert all(f"{way}:" in out for way in ("threads2", "threads3", "seeds-threads3", "seeds-fused"))


@pytest.mark.parametrize("args", [(), ("--speed",), ("--profile",)])
def test_layouts_build_train_and_time_each_candidate(args):
    out = run("layouts.py", "--layouts", "A", "FC2", "--norm", "group", "--quick", *args)
    assert "   A group: 7,578 params" in out and " FC2 group:" in out


def test_reproduce_retrains_a_run_to_the_last_digit(tmp_path, mnist):
    train(quick(norm="gn", epochs=2), out=tmp_path / "run", data=mnist, progress=False, log=quiet)
    assert "2 of 2 epochs identical" in run("reproduce.py", str(tmp_path / "run"))


def test_startup_times_each_phase_and_names_what_imported_torch_dynamo():
    out = run("startup.py", "--quick")
    assert re.search(r"normlab median of repeats 2-2: import [\d.]+ s, data [\d.]+ s, setup [\d.]+ s, first step "
                     r"[\d.]+ s, to the first step [\d.]+ s", out), out
    assert out.count("normlab #") == 2 and "torch._dynamo imported: False" in out.split("torch #1")[0]
    assert "torch #2: " in out and out.split("torch #2: ")[1].split("\n")[0].count("torch._dynamo imported: True") == 1
