import pytest
import torch
from torch import nn

from normlab.nn.norms import NORMS, NormSettings, StdConv2d
from normlab.report.explain import (
    D_MAX,
    R_MAX,
    batch_norm_eval,
    batch_norm_running_update,
    batch_renorm_train,
    dynamic_tanh,
    evonorm_b0,
    evonorm_s0,
    explain,
    filter_response_norm,
    reference_norm,
    standardize_weights,
)


def torch_layer(over, channels, groups):
    return {
        "channel": lambda: nn.BatchNorm2d(channels),
        "sample": lambda: nn.GroupNorm(1, channels),
        "group": lambda: nn.GroupNorm(groups, channels),
        "map": lambda: nn.InstanceNorm2d(channels),
    }[over]()


def data(shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed + sum(shape))) * 3 + 1


@pytest.mark.parametrize("over", ["channel", "sample", "group", "map"])
@pytest.mark.parametrize("shape, groups", [((2, 4, 2, 2), 2), ((5, 6, 3, 7), 3), ((3, 8, 5, 5), 4)])
def test_from_scratch_norms_match_torch_in_training_mode(over, shape, groups):
    x = data(shape)
    layer = torch_layer(over, shape[1], groups).train()
    ours, mean, var = reference_norm(x, over, groups)
    assert torch.allclose(ours, layer(x), atol=1e-5)
    assert mean.numel() == {"channel": shape[1], "sample": shape[0], "group": shape[0] * groups,
                            "map": shape[0] * shape[1]}[over]
    assert (var >= 0).all()


@pytest.mark.parametrize("shape", [(2, 4, 2, 2), (7, 3, 4, 5)])
def test_batch_norm_running_statistics_and_eval_match_torch(shape):
    x = torch.randn(shape) * 2 + 3
    layer = nn.BatchNorm2d(shape[1]).train()
    layer(x)
    rm, rv = batch_norm_running_update(torch.zeros(shape[1]), torch.ones(shape[1]), x)
    assert torch.allclose(rm, layer.running_mean, atol=1e-6)
    assert torch.allclose(rv, layer.running_var, atol=1e-5)
    layer.eval()
    x2 = torch.randn(shape)
    assert torch.allclose(batch_norm_eval(x2, rm, rv), layer(x2), atol=1e-5)


def registry_layer(name, channels, **settings):
    """The registry's layer at γ = 1, β = 0 (and τ = 0, v = 1), as the from-scratch versions assume."""
    return NORMS[name].build(channels, NormSettings(**settings))


@pytest.mark.parametrize("shape", [(2, 4, 2, 2), (6, 3, 4, 5)])
def test_batch_renorm_from_scratch_matches_the_layer_in_training_and_eval_mode(shape):
    x = data(shape)
    layer = registry_layer("brn", shape[1], r_max=R_MAX, d_max=D_MAX).train()
    layer(data(shape, seed=1))  # a first step, so the running statistics are far from this batch's
    rm, rv = layer.stats.running_mean.clone(), layer.stats.running_var.clone()
    ours, r, d = batch_renorm_train(x, rm, rv, R_MAX, D_MAX)
    assert torch.allclose(layer(x), ours, atol=1e-5)
    assert (r < R_MAX).any() and (d.abs() > 0).all()  # the correction is at work, not the identity
    layer.eval()
    assert torch.allclose(layer(x), batch_norm_eval(x, layer.stats.running_mean, layer.stats.running_var),
                          atol=1e-5)


@pytest.mark.parametrize("shape", [(2, 4, 2, 2), (3, 8, 5, 5)])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_batch_independent_remedies_from_scratch_match_the_layers_in_either_mode(shape, mode):
    x = data(shape)
    frn, s0 = registry_layer("frn", shape[1]), registry_layer("evonorm-s0", shape[1], groups=2)
    for layer in (frn, s0):
        layer.train(mode == "train")
    assert torch.allclose(frn(x), filter_response_norm(x)[0], atol=1e-5)
    assert torch.allclose(s0(x), evonorm_s0(x, groups=2)[0], atol=1e-5)


@pytest.mark.parametrize("shape", [(2, 4, 2, 2), (5, 6, 3, 3)])
def test_evonorm_b0_from_scratch_matches_the_layer_with_batch_then_running_variance(shape):
    x = data(shape)
    layer = registry_layer("evonorm-b0", shape[1]).train()
    assert torch.allclose(layer(x), evonorm_b0(x)[0], atol=1e-5)
    rv = batch_norm_running_update(torch.zeros(shape[1]), torch.ones(shape[1]), x)[1]
    assert torch.allclose(layer.stats.running_var, rv, atol=1e-5)
    layer.eval()
    assert torch.allclose(layer(x), evonorm_b0(x, batch_var=rv)[0], atol=1e-5)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_dynamic_tanh_from_scratch_matches_the_layer_and_ignores_the_batch(mode):
    x = data((3, 4, 5, 5))
    layer = registry_layer("dyt", 4).train(mode == "train")
    assert torch.allclose(layer(x), dynamic_tanh(x), atol=1e-6)
    assert torch.allclose(layer(x[:1]), layer(x)[:1])  # each element alone: no statistics of anything


def test_weight_standardization_from_scratch_matches_the_conv():
    conv = StdConv2d(3, 4, 3, bias=False)
    x = data((2, 3, 6, 6))
    w_hat, mean, var = standardize_weights(conv.weight.detach())
    assert torch.allclose(conv(x), nn.functional.conv2d(x, w_hat), atol=1e-5)
    assert torch.allclose(w_hat.flatten(1).mean(1), torch.zeros(4), atol=1e-6) and mean.shape == var.shape == (4,)


def test_explain_text_and_markdown():
    text = explain()
    for title in ("BatchNorm", "LayerNorm (= GroupNorm(1, C))", "GroupNorm (G=2)", "InstanceNorm", "running_var",
                  "Batch Renorm", "FRN + TLU", "EvoNorm-S0", "EvoNorm-B0", "Dynamic Tanh", "Weight Standardization"):
        assert title in text
    md = explain("markdown")
    assert "| shares statistics | values | mean | var | normalized |" in md
    assert md.count("### ") == 11
