import json
import subprocess
import sys

import pytest

from normlab.cli import main

TINY = ["--epochs", "1", "--train-limit", "300", "--test-limit", "200", "--no-progress"]


def test_train_command_writes_a_run(tmp_path, capsys, mnist):
    out = tmp_path / "gn"
    assert main(["train", "--norm", "gn", "--groups", "2", "--seed", "1", "--out", str(out), *TINY]) == 0
    assert "done: test accuracy" in capsys.readouterr().out
    assert {p.name for p in out.iterdir()} >= {"config.json", "metrics.csv", "metrics.json", "model.pt"}
    assert json.loads((out / "config.json").read_text())["config"]["groups"] == 2


def test_summary_command(capsys):
    assert main(["summary", "--norm", "layer"]) == 0
    out = capsys.readouterr().out
    assert "conv1" in out and "total" in out


@pytest.mark.parametrize("args, message", [
    (["--norm", "bogus"], "unknown norm 'bogus'; choose one of"),
    (["--norm", "group", "--groups", "3"], "--groups 3 does not divide"),
    (["--epochs", "0"], "--epochs 0: must be greater than 0"),
    (["--epochs", "-2"], "--epochs -2"),
    (["--norm", "bn", "--batch-size", "1"], "batch norm needs at least 2"),
    (["--l1", "-0.1"], "--l1 -0.1: must be 0 or more"),
    (["--l1", "-1e-5"], "--l1 -1e-05: must be 0 or more"),
    (["--data-dir", "/nonexistent/mnist"], "no such folder"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, args, message):
    assert main(["train", "--out", str(tmp_path / "run"), *TINY, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "run" / "model.pt").exists()


def test_unwritable_or_foreign_out_is_refused_and_left_alone(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("keep me")
    assert main(["train", "--out", str(blocker / "run"), *TINY]) == 2
    assert "cannot write there" in capsys.readouterr().err
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me too")
    assert main(["train", "--out", str(foreign), *TINY]) == 2
    assert "not a normlab run" in capsys.readouterr().err
    assert blocker.read_text() == "keep me" and (foreign / "notes.txt").read_text() == "keep me too"


def test_existing_run_needs_force(tmp_path, capsys, mnist):
    out = tmp_path / "run"
    assert main(["train", "--norm", "ln", "--out", str(out), *TINY]) == 0
    before = (out / "metrics.json").read_text()
    assert main(["train", "--norm", "ln", "--out", str(out), *TINY]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (out / "metrics.json").read_text() == before
    assert main(["train", "--norm", "ln", "--out", str(out), "--force", *TINY]) == 0


def test_compile_without_a_cpp_compiler_is_one_clear_error(tmp_path, capsys, mnist):
    import torch._inductor.config

    out = tmp_path / "run"
    assert main(["train", "--norm", "ln", "--out", str(out), *TINY]) == 0
    before = (out / "metrics.json").read_text()
    with torch._inductor.config.patch({"cpp.cxx": ("/nonexistent/g++",)}):
        code = main(["train", "--norm", "ln", "--out", str(out), "--force", "--compile", "--device", "cpu", *TINY])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "--compile on the CPU needs a C++ compiler" in err and len(err.splitlines()) == 1
    assert (out / "metrics.json").read_text() == before and (out / "model.pt").is_file()


def test_module_entry_point_exit_code_and_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "normlab", "train", "--norm", "nope", "--out", str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.startswith("normlab: error: unknown norm") and "Traceback" not in proc.stderr
    cmd = [sys.executable, "-m", "normlab", "train", "--epochs", "many"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 2 and "invalid int value: 'many'" in proc.stderr and len(proc.stderr.splitlines()) == 1
