import pytest
import torch
from torch import nn

from normlab.norms import ALIASES, NORMS


@pytest.mark.parametrize("name, kind, groups", [("batch", nn.BatchNorm2d, None), ("group", nn.GroupNorm, 4),
                                                 ("layer", nn.GroupNorm, 1), ("instance", nn.GroupNorm, 12),
                                                 ("none", nn.Identity, None)])
def test_each_entry_builds_its_layer(name, kind, groups):
    layer = NORMS[name](12, 4)
    assert isinstance(layer, kind)
    if groups is not None:
        assert layer.num_groups == groups
    assert layer(torch.randn(2, 12, 5, 5)).shape == (2, 12, 5, 5)


def test_every_alias_names_an_entry():
    assert set(ALIASES.values()) <= set(NORMS)
