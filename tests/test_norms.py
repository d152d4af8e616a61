import pytest
import torch
import torch.nn.functional as F
from torch import nn

from normlab.errors import UserError
from normlab.nn.norms import (
    ALIASES,
    NORMS,
    BatchRenorm2d,
    EvoNormB0,
    GhostBatchNorm2d,
    NormSettings,
    StdConv2d,
    canonical_norm,
)


@pytest.mark.parametrize("name, kind, groups", [("batch", nn.BatchNorm2d, None), ("group", nn.GroupNorm, 4),
                                                 ("layer", nn.GroupNorm, 1), ("instance", nn.GroupNorm, 12),
                                                 ("none", nn.Identity, None)])
def test_each_torch_entry_builds_its_layer(name, kind, groups):
    layer = NORMS[name].build(12, NormSettings(groups=4))
    assert isinstance(layer, kind)
    if groups is not None:
        assert layer.num_groups == groups
    assert layer(torch.randn(2, 12, 5, 5)).shape == (2, 12, 5, 5)


@pytest.mark.parametrize("name", list(NORMS))
def test_batch_stats_says_whether_a_sample_depends_on_the_others_in_training(name):
    """The flag the study and the schedulers act on is checked against the layer itself: in training, does
    sample 0's output change when the rest of the batch does?"""
    torch.manual_seed(0)
    layer = NORMS[name].build(8, NormSettings(groups=4)).train()
    x = torch.randn(6, 8, 4, 4)
    other = x.clone()
    other[1:] = other[1:] * 3 + 2
    depends = not torch.allclose(layer(x)[0], layer(other)[0], atol=1e-6)
    assert depends == NORMS[name].batch_stats


@pytest.mark.parametrize("name", list(NORMS))
def test_eps_and_momentum_come_from_the_settings_or_the_registry(name):
    layer = NORMS[name].build(8, NormSettings(eps=1e-3, momentum=0.3))
    default = NORMS[name].build(8, NormSettings())
    for built, eps in ((layer, 1e-3), (default, NORMS[name].eps)):
        found = [m.eps for m in [built, *built.modules()] if hasattr(m, "eps")]
        assert not found or set(found) == {eps}
    assert all(m.momentum == 0.3 for m in layer.modules() if hasattr(m, "momentum"))


def test_names_and_aliases():
    assert set(ALIASES.values()) <= set(NORMS)
    assert canonical_norm("GN") == "group" and canonical_norm("evonorm-b0") == "evonorm-b0"
    with pytest.raises(UserError, match="norm bogus: unknown norm; choose one of: batch, brn, group"):
        canonical_norm("bogus")


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


@pytest.mark.parametrize("images", [None, 4])
def test_batch_renorm_is_ghost_batch_norm_until_its_clips_relax_and_keeps_the_same_running_statistics(images):
    torch.manual_seed(0)
    x = torch.randn(14, 6, 5, 5) * 3 + 1
    held = BatchRenorm2d(6, NormSettings(bn_batch=images, relax_from=5, relax_to=10))
    bn = GhostBatchNorm2d(6, images) if images else nn.BatchNorm2d(6)
    for _ in range(3):  # steps 0-2 of the hold: r = 1, d = 0
        assert torch.allclose(held(x), bn(x), atol=1e-5)
    assert torch.allclose(held.stats.running_mean, bn.running_mean, atol=1e-5)
    assert torch.allclose(held.stats.running_var, bn.running_var, atol=1e-4)
    held.eval()
    bn.eval()
    assert torch.allclose(held(x), bn(x), atol=1e-5)


def test_batch_renorm_clips_widen_linearly_between_its_steps():
    layer = BatchRenorm2d(4, NormSettings(r_max=3.0, d_max=5.0, relax_from=10, relax_to=20))
    seen = []
    for step in (0, 9, 14, 19, 30):
        layer.stats.num_batches_tracked.fill_(step)
        seen.append(tuple(round(float(v), 4) for v in layer.clips()))
    assert seen == [(1.0, 0.0), (1.0, 0.0), (2.0, 2.5), (3.0, 5.0), (3.0, 5.0)]


def test_evonorm_b0_ghost_groups_take_their_own_batch_variance():
    torch.manual_seed(0)
    x = torch.randn(8, 4, 3, 3)
    x[4:] *= 10  # the second group of 4 images has a far larger variance
    ghost, whole = EvoNormB0(4, NormSettings(bn_batch=4)), EvoNormB0(4)
    halves = torch.cat([EvoNormB0(4)(x[:4]), EvoNormB0(4)(x[4:])])
    assert torch.allclose(ghost(x), halves, atol=1e-6) and not torch.allclose(whole(x), halves, atol=1e-3)


def test_weight_standardization_convolves_with_standardized_weights_and_keeps_the_stored_ones():
    torch.manual_seed(0)
    conv = StdConv2d(3, 5, 3, bias=False)
    stored = conv.weight.detach().clone()
    x = torch.randn(2, 3, 7, 7)
    w = stored - stored.mean((1, 2, 3), keepdim=True)
    w = w / torch.sqrt(stored.var((1, 2, 3), unbiased=False, keepdim=True) + 1e-5)
    assert torch.allclose(conv(x), F.conv2d(x, w), atol=1e-5) and torch.equal(conv.weight, stored)
    conv.weight.data.mul_(7)  # the scale of the stored weights no longer matters (but for ε against their variance)
    assert torch.allclose(conv(x), F.conv2d(x, w), rtol=1e-3, atol=1e-4)
