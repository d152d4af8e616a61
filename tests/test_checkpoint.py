import errno

import pytest
import torch

from normlab.engine.checkpoint import load_checkpoint, restore_training_state, save_checkpoint, training_state
from normlab.engine.config import TrainConfig
from normlab.engine.train import sgd_one_cycle
from normlab.errors import UserError


def setup(seed):
    config = TrainConfig(norm="batch", dropout=0.1)
    torch.manual_seed(seed)
    model = config.build_model()
    optimizer, schedule = sgd_one_cycle(model.parameters(), config)
    return model, optimizer, schedule, torch.Generator().manual_seed(seed)


def steps(model, optimizer, schedule, generator, n=3):
    """A few training steps that draw from both RNGs (dropout: torch's; data: the generator)."""
    losses = []
    for _ in range(n):
        x = torch.rand(8, 1, 28, 28, generator=generator)
        loss = model(x).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    return losses


def test_a_restored_state_continues_exactly(tmp_path):
    model, optimizer, schedule, generator = setup(0)
    model.train()
    steps(model, optimizer, schedule, generator)
    save_checkpoint(tmp_path / "c.pt", training_state(model, optimizer, schedule, generator, [{"epoch": 1}], "h"))
    expected = steps(model, optimizer, schedule, generator)

    other = setup(1)  # other weights, other RNG states
    other[0].train()
    state = load_checkpoint(tmp_path / "c.pt")
    assert restore_training_state(state, *other) == [{"epoch": 1}] and state["config_hash"] == "h"
    assert steps(*other) == expected


def test_a_write_failing_half_way_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"config_hash": "x", "epoch": 2, "weights": torch.arange(1000.0)})

    def full_disk(obj, f):
        f.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError):
        save_checkpoint(path, {"config_hash": "x", "epoch": 3})
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["epoch"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary file left behind


@pytest.mark.parametrize("content", [b"", b"garbage", None])
def test_a_file_that_is_not_a_checkpoint_is_one_line(tmp_path, content):
    path = tmp_path / "checkpoint.pt"
    if content is None:
        torch.save({"a": torch.ones(2)}, path)  # a valid torch file, but no checkpoint
    else:
        path.write_bytes(content)
    with pytest.raises(UserError, match="not a readable checkpoint") as e:
        load_checkpoint(path)
    assert "\n" not in str(e.value)
