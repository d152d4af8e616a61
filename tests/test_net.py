import pytest
import torch
from torch import nn

from normlab.engine.config import TrainConfig
from normlab.errors import UserError
from normlab.nn.net import Net, count_parameters, l1_parameters
from normlab.nn.norms import ALIASES, NORMS, StdConv2d


@pytest.mark.parametrize("norm", list(NORMS))
def test_every_norm_is_small_and_classifies(norm):
    model = TrainConfig(norm=norm).build_model()
    assert count_parameters(model) <= 8000
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10)


@pytest.mark.parametrize("name", [*NORMS, *ALIASES])
def test_every_name_and_alias_builds_alone_with_the_registry_defaults(name):
    model = Net(name)
    assert model.norm == ALIASES.get(name, name) and model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert model.groups == (4 if NORMS[model.norm].grouped else None)


@pytest.mark.parametrize("norm", list(NORMS))
def test_each_block_follows_the_registry_entry(norm):
    """ReLU unless the norm is its own activation; a conv bias only where the norm adds no shift; +ws swaps in the
    standardized conv and nothing else."""
    entry, plain, ws = NORMS[norm], Net(norm), Net(norm, weight_std=True)
    for block, ws_block in zip(plain.features, ws.features, strict=True):
        if isinstance(block, nn.MaxPool2d):
            continue
        conv, act = block[0], block[1]
        assert isinstance(act, nn.Identity if entry.activation else nn.ReLU)
        assert (conv.bias is not None) == (not entry.shift)
        assert type(conv) is nn.Conv2d and type(ws_block[0]) is StdConv2d
    assert count_parameters(plain) == count_parameters(ws)


@pytest.mark.parametrize("norm", ["batch", "group", "layer", "frn"])
def test_channels_last_is_a_layout_only(norm):
    """Net keeps channels-last memory for speed; the same weights in NCHW compute the same outputs and gradients."""
    torch.manual_seed(0)
    fast = TrainConfig(norm=norm).build_model()
    plain = TrainConfig(norm=norm).build_model()
    plain.load_state_dict(fast.state_dict())
    plain.channels_last = False
    plain.to(memory_format=torch.contiguous_format)
    assert fast.features.conv2[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert not plain.features.conv2[0].weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(8, 1, 28, 28)
    out_fast, out_plain = fast(x), plain(x)
    assert torch.allclose(out_fast, out_plain, atol=1e-5)
    out_fast.square().sum().backward()
    out_plain.square().sum().backward()
    assert torch.allclose(fast.features.conv1[0].weight.grad, plain.features.conv1[0].weight.grad, atol=1e-4)


def test_the_model_is_built_from_its_config():
    model = TrainConfig(norm="gn", groups=2, dropout=0.1).build_model()
    assert (model.norm, model.groups) == ("group", 2)
    assert [m.num_groups for m in model.modules() if isinstance(m, nn.GroupNorm)] == [2] * 5
    assert sum(isinstance(m, nn.Dropout2d) for m in model.modules()) == 5
    bn = TrainConfig(norm="bn", norm_eps=1e-3, norm_momentum=0.01, bn_batch=4).build_model()
    assert {(m.eps, m.momentum, m.images) for m in bn.modules() if isinstance(m, nn.BatchNorm2d)} == {(1e-3, 0.01, 4)}
    config = TrainConfig(norm="brn", epochs=2, renorm_from=0.1, renorm_to=0.5, renorm_r_max=2.0)
    layer = next(m for m in config.build_model().modules() if hasattr(m, "clips"))
    assert (layer.s.relax_from, layer.s.relax_to, layer.s.r_max) == (round(0.1 * config.steps), config.steps // 2, 2.0)


def test_l1_penalty_covers_conv_weights_only_unless_asked():
    model = TrainConfig(norm="batch").build_model()
    weights = l1_parameters(model, include_norm=False)
    assert all(p.dim() == 4 for p in weights) and len(weights) == 6  # 5 conv blocks + head
    assert len(l1_parameters(model, include_norm=True)) == len(list(model.parameters()))


@pytest.mark.parametrize("norm", ["batch", "group", "frn"])
def test_norm_first_is_the_papers_block_order_with_the_same_weights(norm):
    """conv → norm → ReLU against conv → ReLU → norm: the same parameters under the same names, another function
    (one function where the norm is its own activation: its block has no ReLU)."""
    torch.manual_seed(0)
    exercise, papers = Net(norm), Net(norm, norm_first=True)
    papers.load_state_dict(exercise.state_dict())
    block, x = exercise.features.conv2, torch.randn(4, 8, 13, 13)
    conv, relu, layer, _ = block
    assert torch.allclose(papers.features.conv2(x), relu(layer(conv(x))))
    x = torch.randn(4, 1, 28, 28)
    assert torch.equal(exercise.eval()(x), papers.eval()(x)) == (norm == "frn")


@pytest.mark.parametrize("groups", [0, -4, 3])
def test_a_group_count_that_does_not_divide_nets_channels_is_one_line_from_the_python_api_too(groups):
    """Before: 0 built 4 groups without a word, -4 failed in forward, 3 raised torch's own ValueError."""
    with pytest.raises(UserError, match=rf"groups {groups}: does not divide the channel counts \[8, 12, 16\]"):
        Net(norm="gn", groups=groups)
