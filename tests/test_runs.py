"""The run folder: what it holds for a config, refusals, and files read back that may be broken."""

import base64
import json
import zlib

import numpy as np
import pytest
import torch
from conftest import quick, quiet, without_seconds

from normlab.engine.runfiles import (
    CHECKPOINT,
    CONFIG,
    METRICS_CSV,
    METRICS_JSON,
    RECORD,
    WEIGHTS,
    metrics_csv,
    pack,
    read_metrics,
    unpack,
)
from normlab.engine.runs import SCHEMA, Status, config_hash, is_finished, open_run, read_run
from normlab.engine.train import train
from normlab.errors import Interrupted, StopFlag, UserError

CONFIG_A = quick(norm="layer", epochs=2)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, mnist):
    out = tmp_path_factory.mktemp("runs") / "run"
    train(CONFIG_A, out=out, data=mnist, progress=False, log=quiet)
    return out


def copy_of(run, tmp_path, record=False):
    """A copy of the run's folder; without its finished.json (``record``), as runs finished before normlab wrote
    one: each file is then checked on its own rules."""
    out = tmp_path / "copy"
    out.mkdir()
    for f in run.iterdir():
        if f.is_file() and (record or f.name != RECORD):
            (out / f.name).write_bytes(f.read_bytes())
    return out


def test_config_hash_ignores_where_a_run_goes_but_not_what_it_computes():
    assert config_hash(CONFIG_A) == config_hash(quick(norm="layer", epochs=2, threads=2, device="cpu"))
    assert config_hash(CONFIG_A) != config_hash(quick(norm="layer", epochs=3))
    assert config_hash(CONFIG_A) != config_hash(quick(norm="layer", epochs=2, rotate=0.0))


def test_what_a_folder_holds(finished, tmp_path):
    assert read_run(tmp_path / "nothing", CONFIG_A).status is Status.NEW
    saved = read_run(finished, CONFIG_A)
    assert saved.status is Status.FINISHED and len(saved.metrics) == 2 and is_finished(finished, CONFIG_A)
    other = read_run(finished, quick(norm="layer", epochs=3))
    assert other.status is Status.OTHER and other.differences == "epochs 2, not 3"
    old = json.loads((finished / CONFIG).read_text())  # a run saved before the augmentation ranges were settings
    old["config"].pop("rotate")
    (tmp_path / "old").mkdir()
    for f in finished.iterdir():
        (tmp_path / "old" / f.name).write_bytes(f.read_bytes())
    (tmp_path / "old" / CONFIG).write_text(json.dumps(old))
    assert read_run(tmp_path / "old", quick(norm="layer", epochs=3)).differences == "epochs 2, not 3"
    partial = copy_of(finished, tmp_path)
    (partial / WEIGHTS).unlink()
    (partial / CHECKPOINT).write_bytes(b"")
    assert read_run(partial, CONFIG_A).status is Status.PARTIAL


def as_schema_1(folder, config):
    """The folder's config.json as normlab wrote it before schema 2: no schema or layout, the older hash, and
    no keys for the settings added since its first folders."""
    saved = json.loads((folder / CONFIG).read_text())
    for key in ("schema", "layout", "lr_warmup", "lr_start_div", "lr_end_div"):
        saved.pop(key, None)
        saved["config"].pop(key, None)
    saved["config_hash"] = config_hash(config, schema=1)
    (folder / CONFIG).write_text(json.dumps(saved))
    return saved["config_hash"]


def test_a_folder_of_the_first_schema_is_read_as_it_was_and_resumes(finished, tmp_path, mnist):
    """Committed studies hold schema-1 folders: the same command reuses them, and continues a partial one from
    its checkpoint to what an uninterrupted run ends with."""
    assert json.loads((finished / CONFIG).read_text())["schema"] == SCHEMA
    old = copy_of(finished, tmp_path)
    as_schema_1(old, CONFIG_A)
    assert config_hash(CONFIG_A, schema=1) != config_hash(CONFIG_A)
    assert read_run(old, CONFIG_A).status is Status.FINISHED
    assert read_run(old, quick(norm="layer", epochs=2, lr_warmup=0.2)).status is Status.OTHER
    stop, partial = StopFlag(), tmp_path / "partial"
    with pytest.raises(Interrupted):
        train(CONFIG_A, out=partial, data=mnist, progress=False, stop=stop,
              log=lambda line: stop.set() if line.lstrip().startswith("1 ") else None)
    state = torch.load(partial / CHECKPOINT, weights_only=False)
    state["config_hash"] = as_schema_1(partial, CONFIG_A)
    torch.save(state, partial / CHECKPOINT)
    resumed = train(CONFIG_A, out=partial, data=mnist, progress=False, log=quiet, resume=True)
    assert without_seconds(resumed.metrics) == without_seconds(read_metrics(finished, CONFIG_A))


def test_a_dropout_run_of_torchs_global_masks_is_refused_not_resumed_with_the_runs_own(finished, tmp_path):
    """Dropout's masks come from the run's generator: a folder whose masks came from torch's global one (named by
    the hash without that mark) is another computation, refused in one line, its work kept."""
    import hashlib

    from normlab.nn.net import LAYOUT

    config = quick(norm="layer", epochs=2, dropout=0.1)
    values = {k: v for k, v in config.to_dict().items() if k not in ("device", "threads", "data_dir")}
    before = hashlib.sha256(json.dumps({**values, "layout": repr(LAYOUT)}, sort_keys=True).encode()).hexdigest()[:16]
    assert before != config_hash(config) and config_hash(CONFIG_A) == config_hash(quick(norm="layer", epochs=2))
    old = copy_of(finished, tmp_path)
    saved = json.loads((old / CONFIG).read_text())
    (old / CONFIG).write_text(json.dumps({**saved, "config": config.to_dict(), "config_hash": before}))
    saved_run = read_run(old, config)
    assert saved_run.status is Status.OTHER and "dropout's masks drawn otherwise" in saved_run.differences


def test_a_folder_of_a_later_schema_is_one_line(finished, tmp_path):
    later = copy_of(finished, tmp_path)
    saved = json.loads((later / CONFIG).read_text())
    (later / CONFIG).write_text(json.dumps({**saved, "schema": SCHEMA + 1}))
    with pytest.raises(UserError, match=f"written by another normlab version \\(schema {SCHEMA + 1}"):
        read_run(later, CONFIG_A)


def test_finished_work_is_never_replaced_unasked(finished):
    before = (finished / METRICS_JSON).read_bytes()
    with pytest.raises(UserError) as e, open_run(finished, CONFIG_A):
        pass
    assert e.value.render(lambda s: "--" + s).endswith("already holds a run; add --resume to continue it, "
                                                       "--force to replace it, or choose another --out")
    with pytest.raises(UserError, match=r"made with a different config \(epochs 2, not 3\); add force"), \
            open_run(finished, quick(norm="layer", epochs=3), resume=True):
        pass
    assert (finished / METRICS_JSON).read_bytes() == before


@pytest.mark.parametrize("name, content, message", [
    (METRICS_JSON, b"", "metrics.json: cannot be read"),
    (METRICS_JSON, b"{\"a\": 1}", "metrics.json: is not a list of per-epoch rows"),
    (METRICS_JSON, b"[{\"epoch\": 1}]", "metrics.json: row 1 lacks train_loss"),
    (WEIGHTS, b"", "model.pt: not readable weights of this model"),
    (WEIGHTS, b"not a pickle at all", "model.pt: not readable weights"),
    (CONFIG, b"[1, 2]", "config.json: is not a normlab run config"),
    (CONFIG, None, "config.json: does not give the model's parameter count"),
    (CONFIG, b"\xff\xfe", "config.json: cannot be read"),
])
def test_a_broken_file_read_back_is_one_line_naming_it_and_the_fix(finished, tmp_path, name, content, message):
    """A corrupt or empty model.pt, metrics.json or config.json in a finished run: never a traceback."""
    run = copy_of(finished, tmp_path)
    if content is None:  # a config.json that parses, with this config's hash, but lacks a field
        saved = json.loads((run / CONFIG).read_text())
        del saved["parameters"]
        content = json.dumps(saved).encode()
    (run / name).write_bytes(content)
    with pytest.raises(UserError) as e:
        read_run(run, CONFIG_A)
    text = e.value.render(lambda s: "--" + s)
    assert message in text and "add --force to retrain this run" in text and "\n" not in text


def test_a_metrics_row_that_is_not_a_finite_number_is_refused(finished, tmp_path):
    run = copy_of(finished, tmp_path)
    rows = json.loads((run / METRICS_JSON).read_text())
    rows[1]["test_acc"] = "high"
    (run / METRICS_JSON).write_text(json.dumps(rows))
    with pytest.raises(UserError, match="row 2 lacks test_acc"):
        read_metrics(run, CONFIG_A)


def edited_metrics(run, change):
    rows = json.loads((run / METRICS_JSON).read_text())
    change(rows)
    (run / METRICS_JSON).write_text(json.dumps(rows))


@pytest.mark.parametrize("change, message", [
    (lambda rows: rows.pop(), "metrics.json: holds 1 of the finished run's 2 epochs"),
    (lambda rows: rows.clear(), "metrics.json: holds 0 of the finished run's 2 epochs"),
    (lambda rows: rows[0].update(test_acc=150.0), "metrics.json: row 1 holds an impossible test_acc"),
    (lambda rows: rows[1].update(train_loss=-0.5), "metrics.json: row 2 holds an impossible train_loss"),
    (lambda rows: rows[1].update(test_acc=rows[1]["test_acc"] + 1), "metrics.csv: does not hold the rows of "
                                                                      "metrics.json"),
    (None, "metrics.json: is missing from a finished run"),
])
def test_every_file_of_a_finished_run_is_checked_by_one_rule(finished, tmp_path, change, message):
    """A finished run (its weights are written last) whose metrics lost rows, vanished, hold impossible values or
    disagree with metrics.csv is a one-line error naming the file, never retrained without a word."""
    run = copy_of(finished, tmp_path)
    if change is None:
        (run / METRICS_JSON).unlink()
    else:
        edited_metrics(run, change)
        if "csv" not in message:
            (run / METRICS_CSV).write_text(metrics_csv(json.loads((run / METRICS_JSON).read_text()), CONFIG_A))
    with pytest.raises(UserError) as e:
        read_run(run, CONFIG_A)
    assert message in str(e.value) and "add force to retrain this run" in str(e.value)


def test_a_broken_checkpoint_is_one_line_and_force_starts_over(finished, tmp_path, mnist):
    run = copy_of(finished, tmp_path)
    (run / WEIGHTS).unlink()
    (run / CHECKPOINT).write_bytes(b"garbage")
    with pytest.raises(UserError, match=r"checkpoint.pt: not a readable checkpoint \(UnpicklingError\); add force"):
        train(CONFIG_A, out=run, data=mnist, progress=False, log=quiet, resume=True)
    result = train(CONFIG_A, out=run, data=mnist, progress=False, log=quiet, force=True)
    assert len(result.metrics) == 2 and is_finished(run, CONFIG_A) and not (run / CHECKPOINT).exists()


def test_resume_of_a_finished_run_reads_it_back(finished, mnist):
    logs = []
    result = train(CONFIG_A, out=finished, data=mnist, progress=False, log=logs.append, resume=True)
    assert "already holds this run, finished; nothing to do" in logs[0]
    saved = torch.load(finished / WEIGHTS, weights_only=True)
    assert all(torch.equal(saved[k], v) for k, v in result.model.state_dict().items())


@pytest.mark.parametrize("tamper, message", [
    ("config", "config.json: is not the file this run finished with (finished.json records another)"),
    ("weights", "model.pt: is not the file this run finished with"),
    ("metrics", "metrics.json: is not the file this run finished with"),
    ("failed", "failed.json: came after the run finished"),
    ("record", "finished.json: is not the record of a finished run"),
])
def test_a_finished_runs_files_are_bound_by_its_record(finished, tmp_path, mnist, tamper, message):
    """An edited config.json with its hash kept, another run's weights, metrics doctored consistently (json and
    csv), a planted failed.json: never reused as this run, never a false "failed"."""
    run = copy_of(finished, tmp_path, record=True)
    assert read_run(run, CONFIG_A).status is Status.FINISHED
    if tamper == "config":
        saved = json.loads((run / CONFIG).read_text())
        saved["parameters"] += 1
        (run / CONFIG).write_text(json.dumps(saved))
    elif tamper == "weights":
        other = train(quick(norm="layer", epochs=2, seed=1), data=mnist, progress=False, log=quiet)
        torch.save(other.model.state_dict(), run / WEIGHTS)
    elif tamper == "metrics":
        edited_metrics(run, lambda rows: rows[1].update(test_acc=rows[1]["test_acc"] + 1))
        (run / METRICS_CSV).write_text(metrics_csv(json.loads((run / METRICS_JSON).read_text()), CONFIG_A))
    elif tamper == "failed":
        (run / "failed.json").write_text(json.dumps({"epoch": 1, "step": 3, "reason": "planted"}))
    else:
        (run / RECORD).write_text("[]")
    with pytest.raises(UserError) as e:
        read_run(run, CONFIG_A)
    assert message in str(e.value) and "add force to retrain this run" in str(e.value)


@pytest.mark.parametrize("damage, message", [
    ("longer", "holds 3 epochs of a 2-epoch run"),
    ("optimizer", "lacks the optimizer's state"),
    ("rng", "lacks the random generators' states"),
    ("schedule", "its schedule is not 1 epochs"),
    ("model", "its state does not fit this run (RuntimeError)"),
])
def test_a_checkpoint_that_loads_but_does_not_fit_is_one_line_and_kept(tmp_path, mnist, damage, message):
    """Never a false "done" with the wrong weights, never a deleted resume point, never a traceback."""
    run = tmp_path / "partial"

    def stop_in_epoch_2(line):  # epoch 1 is saved; epoch 2's row is logged before it would be
        if line.lstrip().startswith("2 "):
            raise Interrupted(2)

    with pytest.raises(Interrupted):
        train(CONFIG_A, out=run, data=mnist, progress=False, log=stop_in_epoch_2)
    state = torch.load(run / CHECKPOINT, weights_only=True)
    if damage == "longer":
        state["metrics"] += [{**state["metrics"][0], "epoch": 2}, {**state["metrics"][0], "epoch": 3}]
    elif damage == "optimizer":
        del state["optimizer"]
    elif damage == "rng":
        del state["rng"]["generator"]
    elif damage == "schedule":
        state["schedule"]["last_epoch"] = 0
    else:
        name = next(iter(state["model"]))
        state["model"][name] = torch.zeros(3)
    torch.save(state, run / CHECKPOINT)
    before = (run / CHECKPOINT).read_bytes()
    with pytest.raises(UserError) as e:
        train(CONFIG_A, out=run, data=mnist, progress=False, log=quiet, resume=True)
    assert message in str(e.value) and "checkpoint.pt" in str(e.value) and "force" in str(e.value)
    assert (run / CHECKPOINT).read_bytes() == before and not (run / WEIGHTS).exists()


def test_packed_answers_round_trip_and_a_bad_or_oversized_string_is_refused():
    correct = np.random.default_rng(0).random(10_000) < 0.99
    packed = pack(correct)
    assert len(packed) < 400 and np.array_equal(unpack(packed, 10_000), correct)
    bomb = base64.b64encode(zlib.compress(bytes(50_000_000))).decode()  # 50 MB of zeros in about 70 kB
    for text in (packed[:-8], "not base64!", bomb, pack(correct[:9000])):
        with pytest.raises(ValueError, match="answers"):
            unpack(text, 10_000)


def test_a_run_stopped_in_its_final_evaluation_resumes_to_the_uninterrupted_result(finished, tmp_path, mnist):
    """Every epoch is in the checkpoint; what is left is the evaluation and the weights (before: 'holds 2 epochs of
    a 2-epoch run', and the whole run lost to --force)."""
    run = tmp_path / "run"

    def stop_after_the_last_epoch(epoch):
        if epoch == CONFIG_A.epochs:
            raise Interrupted(15)

    with pytest.raises(Interrupted):
        train(CONFIG_A, out=run, data=mnist, progress=False, log=quiet, on_epoch=stop_after_the_last_epoch)
    assert (run / CHECKPOINT).is_file() and not (run / WEIGHTS).exists()
    result = train(CONFIG_A, out=run, data=mnist, progress=False, log=quiet, resume=True)
    assert without_seconds(result.metrics) == without_seconds(read_run(finished, CONFIG_A).metrics)
    assert (run / WEIGHTS).read_bytes() == (finished / WEIGHTS).read_bytes() and not (run / CHECKPOINT).exists()


@pytest.mark.parametrize("plant, message", [
    ("fifo", "checkpoint.pt: is a FIFO, not a file"),
    ("zero", "model.pt: is a symbolic link, which normlab never makes there"),
    ("folder", "metrics.csv: is a folder, not a file"),
    ("sparse", "config.json: is 8,589,934,592 bytes, more than such a file can be"),
    ("missing", "model.pt: is missing from a finished run (finished.json records it)"),
])
def test_a_run_file_that_is_no_file_or_no_file_of_its_size_is_one_line_never_read(finished, tmp_path, plant, message):
    """A FIFO would hang the read, /dev/zero or a sparse 8 GB file would fill the memory, a finished run without its
    weights would be retrained without a word (each before: a hang, a MemoryError, a silent retraining)."""
    import os

    run = copy_of(finished, tmp_path, record=True)
    if plant == "fifo":
        os.mkfifo(run / CHECKPOINT)
    elif plant == "zero":
        (run / WEIGHTS).unlink()
        (run / WEIGHTS).symlink_to("/dev/zero")
    elif plant == "folder":
        (run / METRICS_CSV).unlink()
        (run / METRICS_CSV).mkdir()
    elif plant == "sparse":
        os.truncate(run / CONFIG, 8 * 2**30)
    else:
        (run / WEIGHTS).unlink()
    with pytest.raises(UserError, match="add force to retrain this run") as e:
        read_run(run, CONFIG_A)
    assert message in str(e.value)


def test_an_evaluation_that_disagrees_with_the_runs_metrics_is_one_line(tmp_path, mnist):
    run = tmp_path / "bn"
    config = quick(norm="batch", epochs=1)
    train(config, out=run, data=mnist, progress=False, log=quiet)
    (run / RECORD).unlink()  # as a run finished before records: its files are checked each on its own rules
    evaluation = json.loads((run / "evaluation.json").read_text())
    for change, message in (({"moving": 99.0}, "under the moving averages, where the last epoch of metrics.json"),
                            ({"group": 0}, "the test batch group (at least 1)")):
        (run / "evaluation.json").write_text(json.dumps({**evaluation, **change}))
        with pytest.raises(UserError, match=r"evaluation\.json") as e:
            read_run(run, config)
        assert message in str(e.value)
