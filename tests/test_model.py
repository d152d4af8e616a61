import pytest
import torch
from torch import nn

from normlab.config import TrainConfig
from normlab.model import Net, count_parameters
from normlab.norms import NORMS


@pytest.mark.parametrize("norm", list(NORMS))
def test_every_norm_is_small_and_classifies(norm):
    model = TrainConfig(norm=norm).model()
    assert count_parameters(model) <= 8000
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10)


@pytest.mark.parametrize("norm", ["batch", "group", "layer"])
def test_channels_last_is_a_layout_only(norm):
    """Net keeps channels-last memory for speed; the same weights in NCHW compute the same outputs and gradients."""
    torch.manual_seed(0)
    fast = TrainConfig(norm=norm).model()
    plain = TrainConfig(norm=norm).model()
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
    model = TrainConfig(norm="gn", groups=2, dropout=0.1).model()
    assert (model.norm, model.groups) == ("group", 2)
    assert [m.num_groups for m in model.modules() if isinstance(m, nn.GroupNorm)] == [2] * 5
    assert sum(isinstance(m, nn.Dropout2d) for m in model.modules()) == 5
    with pytest.raises(ValueError, match="needs groups"):
        Net("group")


def norm_layers(model):
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm2d | nn.GroupNorm)]


def test_layer_norm_uses_each_sample_over_c_h_w():
    layer = norm_layers(Net("layer"))[1]
    assert isinstance(layer, nn.GroupNorm) and layer.num_groups == 1
    x = torch.randn(4, layer.num_channels, 5, 5) * 3 + torch.arange(4.0).view(4, 1, 1, 1)
    y = layer(x)
    assert torch.allclose(y.mean(dim=(1, 2, 3)), torch.zeros(4), atol=1e-5)
    assert torch.allclose(y.var(dim=(1, 2, 3), unbiased=False), torch.ones(4), atol=1e-3)
    # each channel alone is not normalized: statistics are shared across channels
    assert not torch.allclose(y.mean(dim=(2, 3)), torch.zeros(4, layer.num_channels), atol=1e-2)


def test_group_norm_uses_g_groups_of_channels():
    layer = norm_layers(Net("group", groups=4))[1]
    n, c = 3, layer.num_channels
    x = torch.randn(n, c, 6, 6) + torch.arange(float(c)).view(1, c, 1, 1)
    y = layer(x).view(n, 4, c // 4, 6, 6)
    assert torch.allclose(y.mean(dim=(2, 3, 4)), torch.zeros(n, 4), atol=1e-5)
    assert torch.allclose(y.var(dim=(2, 3, 4), unbiased=False), torch.ones(n, 4), atol=1e-3)


def test_batch_norm_batch_stats_in_training_running_stats_in_eval():
    layer = norm_layers(Net("batch"))[0]
    x = torch.randn(16, layer.num_features, 4, 4) * 2 + 5
    layer.train()
    y = layer(x)
    assert torch.allclose(y.mean(dim=(0, 2, 3)), torch.zeros(layer.num_features), atol=1e-5)
    assert torch.allclose(layer.running_mean, 0.1 * x.mean(dim=(0, 2, 3)), atol=1e-5)  # momentum 0.1 from 0
    layer.eval()
    expected = (x - layer.running_mean.view(1, -1, 1, 1)) / torch.sqrt(layer.running_var.view(1, -1, 1, 1) + 1e-5)
    assert torch.allclose(layer(x), expected, atol=1e-5)
