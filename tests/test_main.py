"""main.py, the exercise's own usage, run as a user runs it."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from normlab.study.plan import L1_LAMBDA

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--epochs", "1", "--train-limit", "320", "--test-limit", "300", "--batch-size", "32", "--no-progress"]


@pytest.mark.parametrize("norm, l1, stem", [("bn+l1", L1_LAMBDA, "bn+l1"), ("group", 0.0, "group"),
                                            ("gn+normfirst", 0.0, "gn+normfirst")])
def test_main_applies_l1_only_to_bn_l1(tmp_path, norm, l1, stem, mnist):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, str(ROOT / "main.py"), "--norm", norm, "--out", str(out), *TINY],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    config = json.loads((out / "config.json").read_text())["config"]
    assert config["l1"] == l1 and config["norm_first"] == ("normfirst" in norm)  # the whole variant, as a study's
    assert (out / f"misclassified_{stem}.png").is_file()
    assert len(json.loads((out / f"misclassified_{stem}.json").read_text())["images"]) == 10


def test_main_bad_norm_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "main.py"), "--norm", "batchy", "--out", str(tmp_path / "x")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown variant 'batchy'" in proc.stderr and "Traceback" not in proc.stderr


def test_main_takes_the_studys_variant_grammar_and_names_a_bad_frozen_count_as_typed(tmp_path):
    from normlab.cli import exercise_main

    out = tmp_path / "frozen"
    assert exercise_main(["--norm", "BN+Frozen1", "--out", str(out), "--epochs", "2", "--train-limit", "640",
                          "--test-limit", "200", "--batch-size", "32", "--no-progress", "--lr", "0.02"]) == 0
    assert json.loads((out / "config.json").read_text())["config"]["freeze_bn_epochs"] == 1
    assert (out / "misclassified_bn+frozen1.png").is_file()
    proc = subprocess.run([sys.executable, str(ROOT / "main.py"), "--norm", "bn+frozen5", "--epochs", "1", "--out",
                           str(tmp_path / "x")], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr == \
        "normlab: error: --norm bn+frozen5: +frozen5 must be from 0 to --epochs - 1 = 0\n"
    assert not (tmp_path / "x").exists()
