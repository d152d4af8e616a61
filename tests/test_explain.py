import pytest
import torch
from torch import nn

from normlab.explain import batch_norm_eval, batch_norm_running_update, explain, reference_norm


def torch_layer(kind, channels, groups):
    return {
        "batch": lambda: nn.BatchNorm2d(channels),
        "layer": lambda: nn.GroupNorm(1, channels),
        "group": lambda: nn.GroupNorm(groups, channels),
        "instance": lambda: nn.InstanceNorm2d(channels),
    }[kind]()


@pytest.mark.parametrize("kind", ["batch", "layer", "group", "instance"])
@pytest.mark.parametrize("shape, groups", [((2, 4, 2, 2), 2), ((5, 6, 3, 7), 3), ((3, 8, 5, 5), 4)])
def test_from_scratch_norms_match_torch_in_training_mode(kind, shape, groups):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(sum(shape))) * 3 + 1
    layer = torch_layer(kind, shape[1], groups).train()
    ours, mean, var = reference_norm(x, kind, groups)
    assert torch.allclose(ours, layer(x), atol=1e-5)
    assert mean.numel() == {"batch": shape[1], "layer": shape[0], "group": shape[0] * groups,
                            "instance": shape[0] * shape[1]}[kind]
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


def test_explain_text_and_markdown():
    text = explain()
    for title in ("BatchNorm", "LayerNorm (= GroupNorm(1, C))", "GroupNorm (G=2)", "InstanceNorm", "running_var"):
        assert title in text
    md = explain("markdown")
    assert "| shares statistics | values | mean | var | normalized |" in md
    assert md.count("### ") == 5
