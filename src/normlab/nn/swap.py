"""normlab's norms in a model that already exists: every normalization layer swapped, and FrozenBN.

    >>> swap_norms(model, "gn:8")                           # every norm of the model replaced in place
    >>> swap_norms(model, "brn", momentum=0.01, skip=["fc.bn"])
    >>> freeze_batch_norms(model)                           # FrozenBN: the running averages, in training too

The spec is norm_layer's (normlab.nn.norm_layer), and ``+ws`` standardizes every Conv2d. What a new layer
cannot carry over (a subclass's extra work, hooks, parametrizations, per-position weights) is refused naming the
layer, never dropped in silence.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from normlab.errors import UserError
from normlab.nn.net import Net
from normlab.nn.norm_layer import NormLayer, parse_spec
from normlab.nn.norms import (
    NORMS,
    BatchRenorm2d,
    DynamicTanh,
    EvoNormB0,
    EvoNormS0,
    FilterResponseNorm2d,
    FrozenBatchNorm2d,
    GhostBatchNorm2d,
    StdConv2d,
)
from normlab.nn.resnet import ResNet

ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.SiLU, nn.GELU, nn.ELU, nn.CELU, nn.SELU, nn.Mish,
               nn.Hardswish, nn.Hardtanh, nn.Tanh, nn.Sigmoid, nn.Softplus)
OWN_ACTIVATION = (EvoNormB0, EvoNormS0, FilterResponseNorm2d)  # normlab's layers that are their own nonlinearity
KNOWN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm, nn.InstanceNorm1d,
         nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LayerNorm, GhostBatchNorm2d, BatchRenorm2d, FrozenBatchNorm2d,
         DynamicTanh, *OWN_ACTIVATION)
WITH_STATS = (BatchRenorm2d, EvoNormB0)  # normlab's layers that keep their running statistics in ``.stats``


def frozen_bn(module: nn.Module) -> bool:
    """torchvision's and detectron2's FrozenBatchNorm2d (matched by name: neither is a dependency)."""
    return type(module).__name__ == "FrozenBatchNorm2d" and hasattr(module, "running_var")


def norm_channels(module: nn.Module) -> int | None:
    """The channel count of a normalization layer; None for any other module."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm | nn.modules.instancenorm._InstanceNorm):
        return module.num_features
    if isinstance(module, nn.GroupNorm):
        return module.num_channels
    if isinstance(module, nn.LayerNorm):
        return module.normalized_shape[0]
    if isinstance(module, KNOWN) or frozen_bn(module):
        return module.weight.shape[0]
    return None


def check_layer(name: str, module: nn.Module, known: tuple[type[nn.Module], ...] = KNOWN) -> None:
    """Refuse, naming the layer, a layer whose replacement would lose something: its own forward (a subclass of a
    ``known`` type that overrides it), hooks, parametrizations, or weights not yet made."""
    if isinstance(module, nn.modules.lazy.LazyModuleMixin) and module.has_uninitialized_params():
        raise UserError(f"layer {name!r} is a lazy layer not yet initialized: run one batch through the model "
                        "first, then swap")
    if type(module) not in known and not frozen_bn(module):
        base = next(k for k in known if isinstance(module, k))
        if type(module).forward is not base.forward:
            raise UserError(f"layer {name!r} is a {type(module).__name__}, a {base.__name__} with a forward of its "
                            "own (an activation inside?) that a new layer would not do: swap it by hand, or leave it "
                            f"with skip=[{name!r}]")
    if module._forward_hooks or module._forward_pre_hooks:
        raise UserError(f"layer {name!r} has forward hooks, which its replacement would not carry: remove them "
                        f"first, or leave the layer with skip=[{name!r}]")
    if parametrize.is_parametrized(module):
        raise UserError(f"layer {name!r} has parametrized weights, which its replacement would not carry: remove "
                        f"the parametrization first, or leave the layer with skip=[{name!r}]")


def check_replaceable(name: str, module: nn.Module, layer: NormLayer) -> None:
    """Refuse, naming the layer, what a 2-d image norm cannot replace."""
    check_layer(name, module)
    if isinstance(module, nn.LayerNorm):
        if len(module.normalized_shape) != 3:
            raise UserError(f"layer {name!r} is a LayerNorm over its last {len(module.normalized_shape)} "
                            "dimension(s), not over (C, H, W); normlab cannot tell its channels: leave it with "
                            f"skip=[{name!r}]")
        trained = [t for t, init in ((module.weight, 1), (module.bias, 0)) if t is not None and (t != init).any()]
        if trained:
            raise UserError(f"layer {name!r} is a LayerNorm with trained weights per position (C, H, W), which a "
                            f"norm's per-channel γ, β cannot hold: swap before training, or leave it with "
                            f"skip=[{name!r}]")
    one_d = isinstance(module, nn.BatchNorm1d | nn.InstanceNorm1d)
    other = one_d or isinstance(module, nn.BatchNorm3d | nn.InstanceNorm3d)
    if other and not (layer.name in ("group", "layer", "none") or (one_d and layer.name == "batch"
                                                                   and not layer.settings.bn_batch)):
        raise UserError(f"layer {name!r} is a {type(module).__name__} (not 2-d image maps), which {layer.spec} "
                        f"cannot replace: leave it with skip=[{name!r}]")
    if NORMS[layer.name].grouped and norm_channels(module) % layer.settings.groups:  # type: ignore[operator]
        raise UserError(f"layer {name!r} has {norm_channels(module)} channels, which {layer.settings.groups} groups "
                        "do not divide; choose a group count that divides every norm's channels")


def as_before(module: nn.Module, new: nn.Module, fallback: Tensor | None) -> nn.Module:
    """``new`` on the device and dtype of ``module`` (or of the model, for a layer without tensors), in its mode,
    each parameter as trainable as the one of the same name was."""
    reference = next((t for t in [*module.parameters(), *module.buffers()] if t.is_floating_point()), fallback)
    if reference is not None:
        new = new.to(reference.device, reference.dtype)
    old = dict(module.named_parameters())
    for key, parameter in new.named_parameters():
        if key in old:
            parameter.requires_grad_(old[key].requires_grad)
    return new.train(module.training)


def build_like(module: nn.Module, layer: NormLayer, fallback: Tensor | None) -> nn.Module:
    """The new norm for ``module``: its channels, its ε and momentum unless the spec gives them, and the affine
    weights and running statistics that carry over."""
    channels = norm_channels(module)
    assert channels is not None
    source_stats = module.stats if isinstance(module, WITH_STATS) else module
    inherited = {"eps": getattr(module, "eps", None), "momentum": getattr(source_stats, "momentum", None)}
    settings = replace(layer.settings, **{k: v for k, v in inherited.items() if k not in layer.given
                                          and isinstance(v, float) and v > 0 and (k == "eps" or v <= 1)})
    if isinstance(module, nn.BatchNorm1d) and layer.name == "batch":
        new: nn.Module = nn.BatchNorm1d(channels, settings.eps or NORMS["batch"].eps, settings.momentum)
    else:
        new = replace(layer, settings=settings)(channels)
    target_stats = new.stats if isinstance(new, WITH_STATS) else new
    with torch.no_grad():
        for key in ("weight", "bias"):
            old, fresh = getattr(module, key, None), getattr(new, key, None)
            if isinstance(old, Tensor) and isinstance(fresh, Tensor) and old.shape == fresh.shape:
                fresh.copy_(old)
        for key in ("running_mean", "running_var", "num_batches_tracked"):
            old, fresh = getattr(source_stats, key, None), getattr(target_stats, key, None)
            if isinstance(old, Tensor) and isinstance(fresh, Tensor) and old.shape == fresh.shape:
                fresh.copy_(old)
    if isinstance(module, OWN_ACTIVATION) and not NORMS[layer.name].activation:
        new = nn.Sequential(new, nn.ReLU())  # the nonlinearity the old layer was stays
    return as_before(module, new, fallback)


def std_conv(name: str, conv: nn.Conv2d) -> StdConv2d:
    """``conv`` as a Weight-Standardized conv with the same shape, settings, weights and bias."""
    if type(conv) is not nn.Conv2d:
        raise UserError(f"layer {name!r} is a {type(conv).__name__}, not a plain Conv2d, so +ws cannot tell what it "
                        f"computes: leave it with skip=[{name!r}]")
    check_layer(name, conv, (nn.Conv2d,))
    if hasattr(conv, "weight_g"):
        raise UserError(f"layer {name!r} uses torch.nn.utils.weight_norm, which Weight Standardization would "
                        f"undo; remove it first, or leave the conv with skip=[{name!r}]")
    if conv.in_channels // conv.groups * conv.kernel_size[0] * conv.kernel_size[1] == 1:
        raise UserError(f"layer {name!r} has one weight per output channel, which standardizing makes 0: leave it "
                        f"with skip=[{name!r}]")
    new = StdConv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,  # type: ignore[arg-type]
                    conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode)
    new.load_state_dict(conv.state_dict())
    return as_before(conv, new, None)  # type: ignore[return-value]


Slot = tuple[nn.Module | None, str, nn.Module, str]  # (parent, attribute, module, qualified name)


def slots(model: object) -> list[Slot]:
    """Every place a module sits in ``model``, a shared layer once per place, the root last (parent None): collected
    before anything is replaced, so no module's children change while they are walked."""
    if not isinstance(model, nn.Module):
        raise UserError(f"normlab swaps the norms of a torch.nn.Module, not of {type(model).__name__}")
    if isinstance(model, torch.jit.ScriptModule):
        raise UserError("a TorchScript model cannot be changed: swap the norms of the model, then script it")
    if isinstance(model, Net) and model.copies != 1:
        raise UserError("this Net holds several fused copies, whose norms keep groups within each copy: build it "
                        "with the norm you want instead (Net(norm, copies=...))")
    return [*((parent, child_name, child, f"{parent_name}.{child_name}".lstrip("."))
              for parent_name, parent in model.named_modules(remove_duplicate=False)
              for child_name, child in parent._modules.items() if child is not None), (None, "", model, "")]


def skipped(places: list[Slot], skip: object) -> set[int]:
    """The modules ``skip`` leaves as they are (by id): each named one and everything inside it, a shared layer
    wherever it sits. A name that is no module of the model is an error, not a silent no-op."""
    if isinstance(skip, str) or not isinstance(skip, list | tuple | set) or not all(isinstance(s, str) for s in skip):
        raise UserError(f"skip takes a list of layer names, as skip=['fc.bn'], not {skip!r}")
    names = {name for *_, name in places}
    missing = sorted(set(skip) - names)
    if missing:
        raise UserError(f"skip names {missing[0]!r}, which is no layer of the model (names as model.named_modules() "
                        "gives them)")
    return {id(module) for *_, module, name in places if any(name == s or name.startswith(s + ".") for s in skip)}


def put(places: list[Slot], replaced: dict[int, nn.Module]) -> nn.Module:
    """Each module of ``replaced`` (by id) into every place it sat; the model, or the root's replacement."""
    for parent, child_name, child, _ in places:
        if parent is not None and id(child) in replaced:
            setattr(parent, child_name, replaced[id(child)])
    return replaced.get(id(places[-1][2]), places[-1][2])


def swap_norms(model: nn.Module, spec: str, *, skip: list[str] | tuple[str, ...] = (), **settings: object) -> nn.Module:
    """Replace every normalization layer of ``model`` (BatchNorm, SyncBatchNorm, GroupNorm, InstanceNorm, a LayerNorm
    over (C, H, W), FrozenBatchNorm2d, normlab's own) by ``spec``'s, in place: channel counts, affine weights,
    running statistics, ε and momentum (unless given), device, dtype, training mode and frozen parameters carry
    over; ``+ws`` also standardizes every Conv2d. A layer shared by several places stays one layer; ``skip`` names
    layers (and what is inside them) to leave. A norm that is its own activation (frn, evonorm) takes the place
    of the activation that follows it as the next module of a Sequential, and is refused where there is none; one
    replaced by a norm that is not gets a ReLU after it. Returns the model (the new layer if it is one)."""
    layer, ws = parse_spec(spec, settings)
    places = slots(model)
    leave = skipped(places, skip)
    fallback = next((t for t in [*model.parameters(), *model.buffers()] if t.is_floating_point()), None)
    replaced: dict[int, nn.Module] = {}
    dropped: dict[tuple[int, str], nn.Module] = {}  # (parent, name) of each activation a norm takes over
    for parent, child_name, child, name in places:
        if id(child) in leave:
            continue
        if norm_channels(child) is not None:
            check_replaceable(name, child, layer)
            if NORMS[layer.name].activation and parent is not None and not isinstance(child, OWN_ACTIVATION):
                after = activation_after(parent, child_name, name)
                dropped[id(after[0]), after[1]] = after[0]
            if id(child) not in replaced:
                replaced[id(child)] = build_like(child, layer, fallback)
        elif ws and isinstance(child, nn.Conv2d) and not isinstance(child, StdConv2d) and id(child) not in replaced:
            replaced[id(child)] = std_conv(name, child)
    if not any(norm_channels(child) is not None for *_, child, _ in places if id(child) in replaced):
        raise UserError(f"found no normalization layer to replace with {spec!r} (BatchNorm, GroupNorm, InstanceNorm, "
                        "LayerNorm over (C, H, W), FrozenBatchNorm2d or normlab's norms), outside skip")
    for (_, name), parent in dropped.items():
        setattr(parent, name, nn.Identity())
    if isinstance(model, Net | ResNet):  # normlab's own models say which norm they hold
        model.norm, model.groups = layer.name, layer.settings.groups if NORMS[layer.name].grouped else None
        model.weight_std = model.weight_std or ws
    return put(places, replaced)


def standardize_convs(model: nn.Module) -> nn.Module:
    """Every Conv2d of ``model`` Weight-Standardized, its norms left as they are (+ws for a model that built its
    own norms)."""
    places = slots(model)
    replaced = {id(child): std_conv(name, child) for _, _, child, name in places
                if isinstance(child, nn.Conv2d) and not isinstance(child, StdConv2d)}
    return put(places, replaced)


def activation_after(parent: nn.Module, child_name: str, name: str) -> tuple[nn.Module, str]:
    """Where the activation after the norm ``child_name`` of ``parent`` is, when it is the next module of a
    Sequential; a one-line refusal naming the layer otherwise."""
    if isinstance(parent, nn.Sequential):
        names = [n for n, _ in parent.named_children()]
        i = names.index(child_name)
        if i + 1 < len(names) and isinstance(getattr(parent, names[i + 1]), ACTIVATIONS):
            return parent, names[i + 1]
    raise UserError(f"layer {name!r}: the norm is its own activation, and no activation follows {name!r} as the "
                    "next module of a Sequential (one may be called in forward), so normlab cannot remove it; "
                    "choose a norm without its own activation, or swap this one by hand")


def freeze_batch_norms(model: nn.Module, *, affine: bool = True) -> nn.Module:
    """Every BatchNorm2d, SyncBatchNorm and Batch Renorm of ``model`` as a FrozenBatchNorm2d holding its running
    averages, ε and γ, β (trainable unless ``affine`` is False or the layer had none): FrozenBN, the model's
    function in training what it is in evaluation. A shared layer stays one layer; EvoNorm-B0, whose batch
    variance is part of its activation, is refused naming the layer. Returns the model (the new layer if it is
    one)."""
    if not isinstance(affine, bool):
        raise UserError(f"affine is True or False, not {affine!r}")
    places = slots(model)
    replaced: dict[int, nn.Module] = {}
    for _, _, child, name in places:
        if isinstance(child, EvoNormB0):
            raise UserError(f"layer {name!r} is EvoNorm-B0, whose batch variance is part of its activation; "
                            "normlab freezes only batch norms (BatchNorm2d, SyncBatchNorm, brn)")
        if id(child) in replaced or not isinstance(child, nn.BatchNorm2d | nn.SyncBatchNorm | BatchRenorm2d):
            continue
        check_layer(name, child)
        stats = child.stats if isinstance(child, BatchRenorm2d) else child
        if stats.running_mean is None:  # track_running_stats=False: nothing to freeze to
            raise UserError(f"layer {name!r} keeps no running statistics (track_running_stats=False), so it has "
                            f"nothing to freeze to: leave it as it is")
        has_affine = getattr(child, "affine", True)
        new = FrozenBatchNorm2d(stats.running_mean.shape[0], child.eps, affine and has_affine)
        with torch.no_grad():
            new.running_mean.copy_(stats.running_mean)
            new.running_var.copy_(stats.running_var)
            if has_affine:
                new.weight.copy_(child.weight)
                new.bias.copy_(child.bias)
        replaced[id(child)] = as_before(child, new, None)
    if not replaced:
        raise UserError("found no batch norm to freeze (BatchNorm2d, SyncBatchNorm or brn)")
    return put(places, replaced)
