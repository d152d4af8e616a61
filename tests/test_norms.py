import pytest
import torch
import torch.nn.functional as F
from torch import nn

from normlab.norms import ALIASES, NORMS, GhostBatchNorm2d


@pytest.mark.parametrize("name, kind, groups", [("batch", nn.BatchNorm2d, None), ("group", nn.GroupNorm, 4),
                                                 ("layer", nn.GroupNorm, 1), ("instance", nn.GroupNorm, 12),
                                                 ("none", nn.Identity, None)])
def test_each_entry_builds_its_layer(name, kind, groups):
    layer = NORMS[name](12, 4, None)
    assert isinstance(layer, kind)
    if groups is not None:
        assert layer.num_groups == groups
    assert layer(torch.randn(2, 12, 5, 5)).shape == (2, 12, 5, 5)


def test_every_alias_names_an_entry():
    assert set(ALIASES.values()) <= set(NORMS)


@pytest.mark.parametrize("batch, images", [(12, 4), (14, 4), (9, 2)])
def test_ghost_batch_norm_normalizes_each_group_of_images_by_its_own_statistics(batch, images):
    """Each group of ``images`` (a short last group on its own) is plain batch norm over that group; the running
    statistics move towards the full groups' mean statistics; eval mode is plain batch norm."""
    torch.manual_seed(0)
    x = (torch.randn(batch, 6, 5, 5) * 3 + 1).contiguous(memory_format=torch.channels_last)
    ghost = GhostBatchNorm2d(6, images)
    nn.init.uniform_(ghost.weight)
    nn.init.uniform_(ghost.bias)
    y = ghost(x)
    chunks = x.split(images)
    expected = torch.cat([F.batch_norm(c, None, None, ghost.weight, ghost.bias, training=True) for c in chunks])
    assert torch.allclose(y, expected, atol=1e-5)
    full = [c for c in chunks if len(c) == images]
    means = torch.stack([c.mean((0, 2, 3)) for c in full]).mean(0)
    variances = torch.stack([c.transpose(0, 1).flatten(1).var(1) for c in full]).mean(0)
    assert torch.allclose(ghost.running_mean, 0.1 * means, atol=1e-5)
    assert torch.allclose(ghost.running_var, 0.9 + 0.1 * variances, atol=1e-4)
    ghost.eval()
    plain = nn.BatchNorm2d(6).eval()
    plain.load_state_dict(ghost.state_dict())
    assert torch.allclose(ghost(x), plain(x))


def test_ghost_batch_norm_over_the_whole_batch_is_batch_norm():
    torch.manual_seed(0)
    x = torch.randn(8, 4, 3, 3, requires_grad=True)
    ghost, plain = GhostBatchNorm2d(4, 8), nn.BatchNorm2d(4)
    assert torch.allclose(ghost(x), plain(x))
    ghost.images = 4  # two groups: gradients flow through the group statistics too
    ghost(x).pow(2).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
