import argparse
import json
import signal
import subprocess
import sys
import time

import pytest

from normlab.cli import build_parser, exercise_parser, main

TINY = ["--epochs", "1", "--train-limit", "320", "--test-limit", "200", "--batch-size", "32", "--no-progress"]


def test_train_command_writes_a_run(tmp_path, capsys, mnist):
    out = tmp_path / "gn"
    assert main(["train", "--norm", "gn", "--groups", "2", "--seed", "1", "--out", str(out), *TINY]) == 0
    assert "done: test accuracy" in capsys.readouterr().out
    assert {p.name for p in out.iterdir()} >= {"config.json", "metrics.csv", "metrics.json", "model.pt"}
    assert json.loads((out / "config.json").read_text())["config"]["groups"] == 2


def test_a_folder_name_with_control_characters_never_forges_a_log_line(tmp_path, capsys, mnist):
    out = tmp_path / "study\nnormlab: error: forged\x1b[2J"
    assert main(["study", "--variants", "gn", "--seeds", "0", "--out", str(out), *TINY]) == 0
    said = capsys.readouterr().out
    assert "study\\x0anormlab: error: forged\\x1b[2J/gn/b32/seed0" in said
    assert not [line for line in said.splitlines() if line.startswith("normlab: error") or "\x1b" in line]
    assert (out / "report.md").is_file()  # the folder itself is the name given


def test_a_bn_run_says_its_accuracy_under_each_evaluation_statistics(tmp_path, capsys, mnist):
    out = tmp_path / "bn"
    assert main(["train", "--norm", "bn", "--out", str(out), *TINY]) == 0
    said = capsys.readouterr().out
    ways = json.loads((out / "evaluation.json").read_text())
    assert (f"done: test accuracy {ways['moving']:.2f}% (PreciseBN {ways['precise']:.2f}%, test batch statistics "
            f"{ways['batch']:.2f}%) after 1 epoch") in said


def test_summary_command(capsys):
    assert main(["summary", "--norm", "gn"]) == 0
    out = capsys.readouterr().out
    assert "Net(norm='group', groups=4)" in out and "conv1" in out and "total" in out


def all_options(parser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from all_options(sub)
        elif action.option_strings and action.dest not in ("help", "version"):
            yield parser.prog, action


def test_every_flag_has_help_that_shows_its_default():
    for prog, action in [*all_options(build_parser()), *all_options(exercise_parser())]:
        text = build_parser().formatter_class("x")._get_help_string(action)
        assert action.help and "default" in text, f"{prog} {action.option_strings}"
    help_text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    assert "--epochs EPOCHS       passes over the training images (default: 20)" in help_text


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("normlab 0.")


@pytest.mark.parametrize("args, message", [
    (["--norm", "bogus"], "--norm bogus: unknown norm; choose one of"),
    (["--norm", "group", "--groups", "3"], "--groups 3: does not divide"),
    (["--epochs", "0"], "--epochs 0: must be greater than 0"),
    (["--norm", "bn", "--batch-size", "1"], "--batch-size 1: --norm batch takes statistics over the batch"),
    (["--l1", "-1e-5"], "--l1 -1e-05: must be a finite number, 0 or more"),
    (["--l1", "inf"], "--l1 inf: must be a finite number"),
    (["--weight-decay", "inf"], "--weight-decay inf: must be a finite number"),
    (["--lr", "1e999"], "--lr inf: must be a finite number"),
    (["--seed", str(2**64)], f"--seed {2**64}: must be from 0 to 2**63 - 1"),
    (["--train-limit", "20"], "1 SGD step(s), too few to train"),
    (["--data-dir", "/nonexistent/mnist"], "no such folder"),
    (["--device", "cuda:0"], "--device cuda:0: this torch build sees no CUDA GPU"),
    (["--dataset", "cifar100"], "--dataset cifar100: unknown dataset; choose one of: mnist, fashion-mnist, cifar10"),
    (["--val-size", "60000"], "--val-size 60000: must be from 0 to 59999"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, args, message):
    assert main(["train", "--out", str(tmp_path / "run"), *TINY, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("args, message", [
    (["--lrs", "0.1", "0.2"], "--lrs 0.1 0.2: choosing among learning rates needs validation images, never the test "
                              "set: add --val-size N"),
    (["--lrs", "0", "--val-size", "100"], "--lrs 0.0: 0.0 is not a positive finite number"),
    (["--lrs", "0.1", "-0.2", "--val-size", "100"], "--lrs 0.1 -0.2: -0.2 is not a positive finite number"),
    (["--lrs", "0.1", "nan", "--val-size", "100"], "--lrs 0.1 nan: nan is not a positive finite number"),
    (["--lrs", "0.1", "0.1", "--val-size", "100"], "--lrs 0.1 0.1: a value is given twice; give each once"),
    (["--lrs", "0.1", "0.2", "--lr", "0.1", "--val-size", "100"], "--lr sets one rate for every run, --lrs several"),
    (["--tune-seeds", "0"], "--tune-seeds 0: they choose among --lrs"),
    (["--batch-sizes", "8", "-2"], "--batch-sizes 8 -2: -2 is not a positive whole number"),
    (["--test-stats", "ema"], "--test-stats ema: choose moving (the running averages), precise (PreciseBN) or batch"),
    (["--seeds", "0", "-1"], "--seeds -1: must be from 0 to 2**63 - 1"),
    (["--variants", "gn", "bn+frozen5"], "variant 'bn+frozen5': +frozen5 must be from 0 to --epochs - 1 = 0"),
])
def test_bad_study_axes_are_one_line_exit_2_naming_the_flag_and_write_nothing(tmp_path, capsys, args, message):
    assert main(["study", "--variants", "gn", "--out", str(tmp_path / "study"), *TINY, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "study").exists()


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


def test_existing_run_needs_resume_or_force(tmp_path, capsys, mnist):
    out = tmp_path / "run"
    assert main(["train", "--norm", "ln", "--out", str(out), *TINY]) == 0
    before = (out / "metrics.json").read_text()
    assert main(["train", "--norm", "ln", "--out", str(out), *TINY]) == 2
    assert "already holds a run; add --resume to continue it, --force to replace it" in capsys.readouterr().err
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


def test_a_run_that_fails_exits_1(tmp_path, capsys, mnist):
    assert main(["train", "--lr", "1e12", *TINY, "--out", str(tmp_path / "run")]) == 1
    assert "run failed at epoch 1" in capsys.readouterr().err


def test_a_study_whose_runs_failed_exits_1_and_still_writes_its_report(tmp_path, capsys, mnist):
    """A study whose every run failed is a failure (exit 1), and its report says which runs failed."""
    out = tmp_path / "study"
    assert main(["study", "--variants", "bn", "gn", "--lr", "1e12", "--jobs", "1", *TINY, "--out", str(out)]) == 1
    captured = capsys.readouterr()
    assert "2 of 2 runs failed (bn seed 0, gn seed 0)" in captured.err
    assert "bn seed 0 FAILED" in (out / "report.md").read_text()
    closing = [line for line in captured.out.splitlines() if line.startswith("study written to")]
    assert closing == [f"study written to {out}: report.html, report.md, results.json"]  # no graph was drawn


def test_module_entry_point_exit_code_and_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "normlab", "train", "--norm", "nope", "--out", str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.startswith("normlab: error: --norm nope: unknown norm") and "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "normlab", "train", "--epochs", "many"], capture_output=True,
                          text=True)
    assert proc.returncode == 2 and "invalid int value: 'many'" in proc.stderr and len(proc.stderr.splitlines()) == 1


@pytest.mark.parametrize("delay", [0.3, 1.0])
def test_an_early_ctrl_c_is_one_line_and_claims_nothing(tmp_path, delay):
    """Ctrl-C during start-up is one line, claims no checkpoint, and shows no KeyboardInterrupt traceback."""
    proc = subprocess.Popen([sys.executable, "-m", "normlab", "train", "--epochs", "1", "--no-progress", "--out",
                             str(tmp_path / "run")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    err = proc.stderr.read()
    assert err.strip() in ("normlab: stopped by SIGINT; nothing was saved",  # while the work starts
                           "normlab: stopped by SIGINT; no work was in progress: nothing is lost"), err  # importing


def test_a_study_of_small_sgd_batches_is_judged_by_its_runs_not_the_unused_base_batch(tmp_path, capsys, mnist):
    """--batch-size 128 only scales the rate when --batch-sizes are real SGD batches: 300 images make 2 steps at
    128 but 150 at 2, so the study trains; a size whose runs are too short is named as the user typed it."""
    small = ["--variants", "gn", "--epochs", "1", "--train-limit", "300", "--test-limit", "100", "--no-progress"]
    assert main(["study", *small, "--batch-sizes", "2", "8", "--out", str(tmp_path / "s")]) == 0
    assert (tmp_path / "s" / "gn" / "b2" / "seed0" / "model.pt").is_file()
    capsys.readouterr()
    assert main(["study", *small, "--batch-sizes", "8", "64", "--out", str(tmp_path / "t")]) == 2
    assert capsys.readouterr().err.strip() == (
        "normlab: error: 1 epoch(s) of 300 images at --batch-sizes 64 are 5 SGD step(s), too few to train (one-cycle "
        "needs at least 10); raise --epochs or --train-limit, or lower --batch-sizes")
    assert not (tmp_path / "t").exists()
