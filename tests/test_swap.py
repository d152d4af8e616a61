"""normlab's norms in models it did not build: the factory, and the swap on the structures users bring (residual
blocks with downsample branches, nested Sequentials, a UNet-like model, a layer used twice, heads with 1-d norms)."""

import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from normlab import norm_layer, swap_norms  # the library face
from normlab.errors import UserError
from normlab.nn.net import Net
from normlab.nn.norms import (
    NORMS,
    BatchRenorm2d,
    EvoNormB0,
    EvoNormS0,
    FilterResponseNorm2d,
    FrozenBatchNorm2d,
    StdConv2d,
)
from normlab.nn.swap import freeze_batch_norms


class BasicBlock(nn.Module):
    """torchvision's ResNet block in shape: conv-bn-relu-conv-bn, a downsample branch, the ReLU called in forward."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))) + identity)


class ResNetLike(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = nn.Sequential(BasicBlock(8, 8, 1), BasicBlock(8, 16, 2))
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.layer1(self.relu(self.bn1(self.conv1(x))))
        return self.fc(x.mean((2, 3)))


class UNetLike(nn.Module):
    """An encoder, a decoder and skip connections concatenated on the channels; norms in nested Sequentials."""

    def __init__(self) -> None:
        super().__init__()

        def block(cin, cout):
            first = nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU())
            second = nn.Sequential(nn.Conv2d(cout, cout, 3, padding=1), nn.InstanceNorm2d(cout, affine=True), nn.ReLU())
            return nn.Sequential(first, second)
        self.down = nn.ModuleDict({"d1": block(1, 8), "d2": block(8, 16)})
        self.up = nn.ConvTranspose2d(16, 8, 2, stride=2)
        self.decode = block(16, 8)
        self.out = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        a = self.down["d1"](x)
        b = self.down["d2"](F.max_pool2d(a, 2))
        return self.out(self.decode(torch.cat([a, self.up(b)], 1)))


def norms_of(model):
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm2d | nn.GroupNorm | nn.InstanceNorm2d)]


@pytest.mark.parametrize("name", list(NORMS))
def test_norm_layer_builds_every_registry_norm_for_any_channel_count(name):
    factory = norm_layer(name)
    for channels in (4, 12):
        layer = factory(channels)
        assert isinstance(layer, type(NORMS[name].build(channels, factory.settings)))
        x = torch.randn(4, channels, 5, 5)
        assert layer.train()(x).shape == x.shape and layer.eval()(x).shape == x.shape
    assert pickle.loads(pickle.dumps(factory))(8) is not None  # a factory travels (Ray, deepcopy)
    assert repr(factory) == f"norm_layer({name!r})"


def test_norm_layer_takes_groups_in_the_spec_and_settings_as_keywords():
    gn = norm_layer("gn:8", eps=1e-3)(32)
    assert (gn.num_groups, gn.eps) == (8, 1e-3)
    brn = norm_layer("brn", momentum=0.01, r_max=2.0, bn_batch=4)(16)
    assert (brn.stats.momentum, brn.s.r_max, brn.images) == (0.01, 2.0, 4)
    ghost = norm_layer("bn", bn_batch=2)(8)
    assert ghost.images == 2


@pytest.mark.parametrize("spec, settings, words", [
    ("batchy", {}, "unknown norm"),
    ("bn:2", {}, "only a grouped norm"),
    ("gn:x", {}, "must be a whole number above 0"),
    ("gn+ws", {}, "Weight Standardization changes the convs"),
    ("gn+l1", {}, r"then \+ws for Weight"),
    ("gn", {"group": 2}, "unknown norm setting 'group'"),
])
def test_norm_layer_refuses_what_it_cannot_build_in_one_line(spec, settings, words):
    with pytest.raises(UserError, match=words):
        norm_layer(spec, **settings)


def test_a_group_count_that_does_not_divide_the_channels_is_named():
    with pytest.raises(UserError, match="8 groups do not divide 12 channels"):
        norm_layer("gn:8")(12)


def test_swap_on_a_residual_network_replaces_every_norm_and_keeps_the_affine_weights():
    torch.manual_seed(0)
    model = ResNetLike()
    for bn in norms_of(model):
        nn.init.normal_(bn.weight)
        nn.init.normal_(bn.bias)
    before = {name: (m.weight.clone(), m.bias.clone()) for name, m in model.named_modules()
              if isinstance(m, nn.BatchNorm2d)}
    assert len(before) == 6  # the stem, two per block, one in the downsample branch
    assert swap_norms(model, "gn:4") is model
    after = {name: m for name, m in model.named_modules() if isinstance(m, nn.GroupNorm)}
    assert set(after) == set(before) and not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    for name, (weight, bias) in before.items():
        assert after[name].num_groups == 4 and torch.equal(after[name].weight, weight)
        assert torch.equal(after[name].bias, bias)
    assert model(torch.randn(2, 1, 12, 12)).shape == (2, 10)


def test_running_statistics_carry_over_to_a_norm_that_keeps_them():
    model = ResNetLike().train()
    model(torch.randn(8, 1, 12, 12) * 3 + 1)  # the running averages move off 0 and 1
    means = {name: m.running_mean.clone() for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    swap_norms(model, "brn", momentum=0.01)
    renorms = {name: m for name, m in model.named_modules() if isinstance(m, BatchRenorm2d)}
    assert set(renorms) == set(means)
    for name, mean in means.items():
        assert torch.equal(renorms[name].stats.running_mean, mean) and renorms[name].stats.momentum == 0.01


def test_a_layer_used_twice_stays_one_layer():
    shared = nn.BatchNorm2d(4)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), shared, nn.ReLU(), nn.Conv2d(4, 4, 3), shared)
    swap_norms(model, "ln")
    assert isinstance(model[1], nn.GroupNorm) and model[1] is model[4]
    assert len(list(model.parameters())) == 2 + 2 + 2  # two convs, one norm


def test_a_unet_like_model_with_nested_sequentials_and_a_module_dict():
    model = UNetLike()
    swap_norms(model, "gn:2")
    assert len(norms_of(model)) == 6 and all(isinstance(m, nn.GroupNorm) for m in norms_of(model))
    assert model(torch.randn(2, 1, 16, 16)).shape == (2, 2, 16, 16)


def test_a_norm_that_is_its_own_activation_takes_the_place_of_the_next_relu():
    model = UNetLike()
    swap_norms(model, "frn")
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())
    assert sum(isinstance(m, FilterResponseNorm2d) for m in model.modules()) == 6
    assert model(torch.randn(2, 1, 16, 16)).shape == (2, 2, 16, 16)


def test_an_activation_called_in_forward_cannot_be_removed_so_the_swap_is_refused_naming_the_layer():
    model = ResNetLike()
    with pytest.raises(UserError, match="layer 'bn1': the norm is its own activation"):
        swap_norms(model, "evonorm-b0")
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 6  # nothing was changed


def test_a_norm_that_was_its_own_activation_gets_a_relu_when_replaced():
    net = Net("frn")
    swap_norms(net, "bn")
    block = net.features.conv1
    assert isinstance(block[2], nn.Sequential) and isinstance(block[2][1], nn.ReLU)
    assert net(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_swapping_normlabs_own_net_gives_the_net_built_with_that_norm():
    """Net('batch') swapped to gn is Net('group'): the same parameters, and with the same weights the same outputs."""
    torch.manual_seed(0)
    swapped = swap_norms(Net("batch"), "gn")
    built = Net("group")
    built.load_state_dict(swapped.state_dict())  # strict: the same names and shapes
    x = torch.randn(3, 1, 28, 28)
    assert torch.equal(swapped(x), built(x))


def test_ws_standardizes_every_conv_with_the_same_weights():
    model = ResNetLike()
    convs = {name: m.weight.clone() for name, m in model.named_modules() if type(m) is nn.Conv2d}
    swap_norms(model, "gn+ws")
    std = {name: m for name, m in model.named_modules() if isinstance(m, StdConv2d)}
    assert set(std) == set(convs)
    for name, weight in convs.items():
        assert torch.equal(std[name].weight, weight)
    conv = model.layer1[1].downsample[0]
    x = torch.randn(2, 8, 6, 6)
    w = conv.weight
    standardized = (w - w.mean((1, 2, 3), keepdim=True)) / torch.sqrt(w.var((1, 2, 3), correction=0, keepdim=True)
                                                                     + 1e-5)
    assert torch.allclose(conv(x), F.conv2d(x, standardized, None, 2), atol=1e-5)


def test_a_group_count_that_does_not_divide_a_layer_names_the_layer():
    with pytest.raises(UserError, match=r"layer 'layer1\.1\.bn1' has 16 channels, which 3 groups do not divide"):
        swap_norms(ResNetLike(), "gn:3", skip=["bn1", "layer1.0.bn1", "layer1.0.bn2"])


def test_one_d_norms_and_layer_norms_over_features_are_named_and_can_be_skipped():
    head = nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 16),
                         nn.BatchNorm1d(16), nn.LayerNorm(16), nn.Linear(16, 10))
    with pytest.raises(UserError, match=r"layer '5' is a BatchNorm1d .* leave it with skip=\['5'\]"):
        swap_norms(head, "brn")
    with pytest.raises(UserError, match="layer '6' is a LayerNorm over its last 1 dimension"):
        swap_norms(head, "gn:2")
    swap_norms(head, "gn:2", skip=["6"])
    assert isinstance(head[1], nn.GroupNorm) and isinstance(head[5], nn.GroupNorm) and isinstance(head[6], nn.LayerNorm)
    assert head(torch.randn(4, 1, 6, 6)).shape == (4, 10)


def test_every_registry_norm_swaps_into_a_residual_network_that_then_learns(mnist):
    """On real digits: each norm swapped into the residual model (activation norms into the Sequential-only version)
    lowers the training loss over a few SGD steps, so the swapped layers are wired into the gradient."""
    x = mnist.train_images[:64].float().unsqueeze(1) / 255
    y = mnist.train_labels[:64].long()
    for name in NORMS:
        torch.manual_seed(0)
        model = swap_norms(nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 16, 3),
                                         nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                         nn.Linear(16, 10)), name)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        losses = []
        for _ in range(15):
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        assert losses[-1] < losses[0], (name, losses)


def test_the_root_itself_can_be_a_norm():
    assert isinstance(swap_norms(nn.BatchNorm2d(8), "gn:2"), nn.GroupNorm)
    assert isinstance(swap_norms(nn.BatchNorm2d(8), "evonorm-b0"), EvoNormB0)


def test_frozen_batch_norms_compute_in_training_what_the_trained_layers_computed_in_evaluation():
    torch.manual_seed(0)
    model = ResNetLike().train()
    for _ in range(3):
        model(torch.randn(8, 1, 12, 12) * 2 + 1)  # running averages of their own
    x = torch.randn(4, 1, 12, 12)
    expected = model.eval()(x)
    freeze_batch_norms(model)
    frozen = [m for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert len(frozen) == 6 and not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert torch.allclose(model.train()(x), expected, atol=1e-6)
    assert torch.allclose(model(x[:1]), expected[:1], atol=1e-6)  # no image depends on the others any more
    model(x).sum().backward()
    assert all(m.weight.grad is not None for m in frozen)  # γ, β still learn
    fixed = freeze_batch_norms(ResNetLike(), affine=False)
    assert sum(p.numel() for p in fixed.parameters()) == sum(p.numel() for p in ResNetLike().parameters()) - 2 * 72


def test_batch_renorm_freezes_with_its_running_statistics_and_evonorm_b0_is_refused():
    model = swap_norms(nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU()), "brn").train()
    model(torch.randn(6, 1, 8, 8) * 3)
    x = torch.randn(2, 1, 8, 8)
    expected = model.eval()(x)
    assert torch.allclose(freeze_batch_norms(model).train()(x), expected, atol=1e-6)
    with pytest.raises(UserError, match="layer '1' is EvoNorm-B0"):
        freeze_batch_norms(nn.Sequential(nn.Conv2d(1, 4, 3), EvoNormB0(4)))


def test_a_frozen_model_can_be_swapped_again():
    model = freeze_batch_norms(ResNetLike())
    swap_norms(model, "gn:4")
    assert sum(isinstance(m, nn.GroupNorm) for m in model.modules()) == 6


def seq(norm):
    return nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), norm, nn.ReLU())


def test_a_new_layer_keeps_the_mode_the_device_type_and_the_frozen_parameters_of_the_old():
    model = seq(nn.BatchNorm2d(8)).eval()
    model[1].requires_grad_(False)
    swap_norms(model, "bn", bn_batch=2)
    assert not model[1].training and not any(p.requires_grad for p in model[1].parameters())
    stateless = seq(nn.InstanceNorm2d(8)).double()
    swap_norms(stateless, "gn:2")
    assert stateless(torch.randn(2, 8, 4, 4, dtype=torch.float64)).dtype == torch.float64
    frozen = freeze_batch_norms(seq(nn.BatchNorm2d(8)).double())
    assert frozen(torch.randn(2, 8, 4, 4, dtype=torch.float64)).dtype == torch.float64


def test_running_statistics_kept_by_normlabs_own_layers_carry_over_too():
    model = swap_norms(seq(nn.BatchNorm2d(8)), "brn").train()
    model(torch.randn(6, 8, 5, 5) * 3 + 2)
    mean = model[1].stats.running_mean.clone()
    swap_norms(model, "bn")
    assert torch.equal(model[1].running_mean, mean)


def test_eps_and_momentum_carry_over_unless_the_spec_gives_them():
    assert swap_norms(seq(nn.BatchNorm2d(8, eps=1e-3)), "gn:2")[1].eps == 1e-3
    assert swap_norms(seq(nn.BatchNorm2d(8, eps=1e-3)), "gn:2", eps=1e-6)[1].eps == 1e-6
    assert swap_norms(seq(nn.BatchNorm2d(8, momentum=0.01)), "brn")[1].stats.momentum == 0.01


@pytest.mark.parametrize("make, words", [
    (lambda: seq(BatchNormAct2d(8)), "a BatchNorm2d with a forward of its own"),
    (lambda: seq(hooked(nn.BatchNorm2d(8))), "has forward hooks"),
    (lambda: seq(parametrized(nn.BatchNorm2d(8))), "has parametrized weights"),
    (lambda: seq(trained_layer_norm()), "trained weights per position"),
    (lambda: seq(nn.LazyBatchNorm2d()), "lazy layer not yet initialized"),
    (lambda: nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU()), "found no normalization layer"),
    (lambda: torch.jit.script(seq(nn.BatchNorm2d(8))), "a TorchScript model cannot be changed"),
    (lambda: Net("batch", copies=2), "several fused copies"),
    (lambda: "not a model", "not of str"),
])
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_what_a_swap_would_lose_is_refused_in_one_line_and_nothing_changes(make, words):
    model = make()
    before = repr(model)
    with pytest.raises(UserError, match=words):
        swap_norms(model, "gn:2")
    assert repr(model) == before


class BatchNormAct2d(nn.BatchNorm2d):
    """timm's shape: a batch norm with its activation inside its forward."""

    def forward(self, x):
        return F.relu(super().forward(x))


def hooked(layer):
    layer.register_forward_hook(lambda *_: None)
    return layer


def parametrized(layer):
    torch.nn.utils.parametrize.register_parametrization(layer, "weight", nn.Identity())
    return layer


def trained_layer_norm():
    layer = nn.LayerNorm([8, 4, 4])
    with torch.no_grad():
        layer.weight[0, 0, 0] = 3
    return layer


@pytest.mark.parametrize("conv, words", [
    (nn.Conv2d(8, 8, 1, groups=8), "one weight per output channel"),
    (type("MyConv", (nn.Conv2d,), {})(8, 8, 3), "not a plain Conv2d"),
])
def test_convs_that_weight_standardization_cannot_take_are_named(conv, words):
    with pytest.raises(UserError, match=words):
        swap_norms(nn.Sequential(conv, nn.BatchNorm2d(8), nn.ReLU()), "gn:2+ws")


def test_skip_takes_names_of_the_model_and_everything_inside_them():
    model = ResNetLike()
    swap_norms(model, "gn:4", skip=["layer1.1"])
    assert isinstance(model.layer1[0].bn1, nn.GroupNorm) and isinstance(model.layer1[1].downsample[1], nn.BatchNorm2d)
    for skip, words in (("bn1", "a list of layer names"), (["bn9"], "skip names 'bn9', which is no layer")):
        with pytest.raises(UserError, match=words):
            swap_norms(ResNetLike(), "gn:4", skip=skip)


def test_a_norm_that_is_its_own_activation_can_be_swapped_for_another():
    model = swap_norms(UNetLike(), "frn")
    swap_norms(model, "evonorm-s0")
    assert sum(isinstance(m, EvoNormS0) for m in model.modules()) == 6


@pytest.mark.parametrize("spec, settings, words", [
    (None, {}, "a norm spec is a string"),
    ("", {}, "names no norm"),
    ("gn:0", {}, "must be a whole number above 0"),
    ("gn:", {}, "must be a whole number above 0"),
    ("gn:8", {"groups": 4}, "give it once"),
    ("gn", {"groups": 0}, "groups=0: must be a whole number at least 1"),
    ("bn", {"eps": -1.0}, "eps=-1.0: must be a finite number above 0"),
    ("bn", {"momentum": 5}, "momentum=5: must be a finite number above 0 and at most 1"),
    ("bn", {"bn_batch": 1}, "bn_batch=1: must be a whole number at least 2"),
    ("brn", {"r_max": 0.5}, "r_max=0.5: must be a finite number at least 1"),
    ("brn", {"relax_from": 5, "relax_to": 2}, "relax_from must not be above relax_to"),
])
def test_bad_specs_and_settings_are_one_line(spec, settings, words):
    with pytest.raises(UserError, match=words):
        norm_layer(spec, **settings)
