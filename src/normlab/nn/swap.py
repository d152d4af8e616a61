"""normlab's norms in any model: a ``channels -> layer`` factory (torchvision's ``norm_layer=``), and the swap of
every normalization layer of a model that already exists.

    >>> resnet18(norm_layer=norm_layer("gn:8"))             # a model that takes a factory
    >>> swap_norms(model, "gn:8")                           # one that does not: its norms replaced in place
    >>> swap_norms(model, "brn", momentum=0.01, skip=["fc.bn"])
    >>> freeze_batch_norms(model)                           # FrozenBN: the running averages, in training too

A spec is a registry name or alias (bn, gn, ln, brn, frn, evonorm-s0, ...), ``:G`` for a grouped norm's group
count and, for swap_norms, ``+ws`` for Weight Standardization of every Conv2d; keyword arguments are the
settings of NormSettings (bn_batch for ghost statistics, eps, momentum, r_max, d_max, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import nn

from normlab.errors import UserError
from normlab.nn.norms import (
    NORMS,
    BatchRenorm2d,
    EvoNormB0,
    EvoNormS0,
    FilterResponseNorm2d,
    FrozenBatchNorm2d,
    NormSettings,
    StdConv2d,
    canonical_norm,
)

SETTINGS = [f.name for f in fields(NormSettings) if f.name != "copies"]
ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.SiLU, nn.GELU, nn.ELU, nn.Mish, nn.Hardswish)


@dataclass(frozen=True)
class NormLayer:
    """A ``channels -> nn.Module`` factory for one registry norm and its settings (picklable, printable)."""

    name: str
    settings: NormSettings
    spec: str

    def __call__(self, channels: int) -> nn.Module:
        if NORMS[self.name].grouped and channels % self.settings.groups:
            raise UserError(f"{self.settings.groups} groups do not divide {channels} channels; give a group count "
                            f"that divides every norm's channels (as {self.name}:G)")
        return NORMS[self.name].build(channels, self.settings)

    def __repr__(self) -> str:
        return f"norm_layer({self.spec!r})"


def parse_spec(spec: str, settings: dict[str, object]) -> tuple[NormLayer, bool]:
    """The factory a spec and settings name, and whether the spec asks for Weight Standardization (+ws)."""
    base, *suffixes = spec.strip().lower().split("+")
    if any(s != "ws" for s in suffixes) or len(suffixes) > 1:
        raise UserError(f"norm spec {spec!r}: a norm, then :G for a group count, then +ws for Weight "
                        "Standardization (as gn:8+ws)")
    name, _, groups = base.partition(":")
    name = canonical_norm(name)
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        raise UserError(f"unknown norm setting {unknown[0]!r}; the settings are {', '.join(SETTINGS)}")
    if groups:
        if not NORMS[name].grouped or not (groups.isascii() and groups.isdecimal()) or int(groups) < 1:
            grouped = ", ".join(n for n, e in NORMS.items() if e.grouped)
            raise UserError(f"norm spec {spec!r}: only a grouped norm ({grouped}) takes a group count, as gn:8")
        settings = {**settings, "groups": int(groups)}
    try:
        values = NormSettings(**settings)  # type: ignore[arg-type]
    except TypeError as e:
        raise UserError(f"norm spec {spec!r}: {e}") from None
    return NormLayer(name, values, spec), bool(suffixes)


def norm_layer(spec: str, **settings: object) -> NormLayer:
    """A ``channels -> nn.Module`` factory for ``spec`` (``"gn:8"``, ``"bn"``, ``"brn"``), as torchvision's
    ``norm_layer=`` takes. A norm that is its own activation (frn, evonorm) keeps whatever activation the model
    applies after it; swap_norms removes it where it can."""
    layer, ws = parse_spec(spec, settings)
    if ws:
        raise UserError(f"norm spec {spec!r}: Weight Standardization changes the convs, not the norm: use "
                        "swap_norms(model, spec) or normlab.nn.norms.StdConv2d")
    return layer


def norm_channels(module: nn.Module) -> int | None:
    """The channel count of a normalization layer normlab can replace; None for any other module."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm | nn.modules.instancenorm._InstanceNorm):
        return module.num_features
    if isinstance(module, nn.GroupNorm):
        return module.num_channels
    if isinstance(module, nn.LayerNorm):
        return module.normalized_shape[0]
    if isinstance(module, BatchRenorm2d | EvoNormB0 | EvoNormS0 | FilterResponseNorm2d) or frozen_bn(module):
        return module.weight.shape[0]
    return None


def frozen_bn(module: nn.Module) -> bool:
    """normlab's, torchvision's and detectron2's FrozenBatchNorm2d (matched by name: the others are no dependency)."""
    return type(module).__name__ == "FrozenBatchNorm2d" and hasattr(module, "running_var")


def check_replaceable(name: str, module: nn.Module, layer: NormLayer) -> None:
    """Refuse, naming the layer, what a 2-d image norm cannot replace."""
    if isinstance(module, nn.LayerNorm) and len(module.normalized_shape) != 3:
        raise UserError(f"layer {name!r} is a LayerNorm over its last {len(module.normalized_shape)} dimension(s), "
                        "not over (C, H, W); normlab cannot tell its channels: leave it with skip=[...]")
    one_d = isinstance(module, nn.BatchNorm1d | nn.InstanceNorm1d)
    other = one_d or isinstance(module, nn.BatchNorm3d | nn.InstanceNorm3d)
    if other and not (layer.name in ("group", "layer", "none") or (one_d and layer.name == "batch"
                      and not layer.settings.bn_batch)):
        raise UserError(f"layer {name!r} is a {type(module).__name__} (not 2-d image maps), which {layer.spec} "
                        f"cannot replace: leave it with skip=[{name!r}]")
    if NORMS[layer.name].grouped and norm_channels(module) % layer.settings.groups:  # type: ignore[operator]
        raise UserError(f"layer {name!r} has {norm_channels(module)} channels, which {layer.settings.groups} groups "
                        "do not divide; choose a group count that divides every norm's channels")


def build_like(module: nn.Module, layer: NormLayer) -> nn.Module:
    """The new norm for ``module``: its channels, and the affine weights and running statistics that carry over."""
    channels = norm_channels(module)
    assert channels is not None
    eps = NORMS["batch"].eps if layer.settings.eps is None else layer.settings.eps
    new = nn.BatchNorm1d(channels, eps, layer.settings.momentum) \
        if isinstance(module, nn.BatchNorm1d) and layer.name == "batch" else layer(channels)
    old_state, new_state = module.state_dict(), new.state_dict()
    stats = new.stats.state_dict() if hasattr(new, "stats") else new_state  # Batch Renorm, EvoNorm-B0 keep theirs
    carried = {key: old_state[key] for key in ("weight", "bias") if key in old_state and key in new_state
               and old_state[key].shape == new_state[key].shape}
    moved = {key: old_state[key] for key in ("running_mean", "running_var", "num_batches_tracked")
             if old_state.get(key) is not None and key in stats and old_state[key].shape == stats[key].shape}
    with torch.no_grad():
        for key, value in carried.items():
            getattr(new, key).copy_(value)
        target = new.stats if hasattr(new, "stats") else new
        for key, value in moved.items():
            getattr(target, key).copy_(value)
    like = next((v for v in old_state.values() if v.is_floating_point()), None)
    return new if like is None else new.to(like.device, like.dtype)


def std_conv(conv: nn.Conv2d) -> StdConv2d:
    """``conv`` as a Weight-Standardized conv with the same shape, settings, weights and bias."""
    new = StdConv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,  # type: ignore[arg-type]
                    conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode,
                    device=conv.weight.device, dtype=conv.weight.dtype)
    new.load_state_dict(conv.state_dict())
    return new


def swap_norms(model: nn.Module, spec: str, *, skip: list[str] | tuple[str, ...] = (), **settings: object) -> nn.Module:
    """Replace every normalization layer of ``model`` (BatchNorm, SyncBatchNorm, GroupNorm, InstanceNorm, a LayerNorm
    over (C, H, W), FrozenBatchNorm2d, normlab's own) by ``spec``'s, in place, keeping channel counts and copying
    affine weights and running statistics where the new layer has them; ``+ws`` also standardizes every Conv2d.
    A layer shared by several places stays one layer. A norm that is its own activation (frn, evonorm) takes the
    place of the activation that follows it as the next module of a Sequential and refuses where there is none;
    one replaced by a norm that is not gets a ReLU after it. Returns the model (the new layer if it is one)."""
    layer, ws = parse_spec(spec, settings)
    own_activation = NORMS[layer.name].activation
    places = slots(model)
    replaced: dict[int, nn.Module] = {}
    dropped: dict[tuple[int, str], nn.Module] = {}  # (parent, name) of each activation a norm takes over
    for parent, child_name, child, name in places:
        if name in skip:
            continue
        if norm_channels(child) is not None:
            check_replaceable(name, child, layer)
            if own_activation and parent is not None:  # a norm on its own has no activation to take over
                after = activation_after(parent, child_name, name)
                dropped[id(after[0]), after[1]] = after[0]
            if id(child) not in replaced:
                new = build_like(child, layer)
                was_activation = isinstance(child, EvoNormB0 | EvoNormS0 | FilterResponseNorm2d)
                replaced[id(child)] = nn.Sequential(new, nn.ReLU()) if was_activation and not own_activation else new
        elif ws and type(child) is nn.Conv2d and id(child) not in replaced:
            replaced[id(child)] = std_conv(child)
    for (_, name), parent in dropped.items():
        setattr(parent, name, nn.Identity())
    return put(places, replaced)


Slot = tuple[nn.Module | None, str, nn.Module, str]  # (parent, attribute, module, qualified name)


def slots(model: nn.Module) -> list[Slot]:
    """Every place a module sits in ``model``, a shared layer once per place, the root last (parent None): collected
    before anything is replaced, so no module's children change while they are walked."""
    return [*((parent, child_name, child, f"{parent_name}.{child_name}".lstrip("."))
              for parent_name, parent in model.named_modules(remove_duplicate=False)
              for child_name, child in parent._modules.items() if child is not None), (None, "", model, "")]


def put(places: list[Slot], replaced: dict[int, nn.Module]) -> nn.Module:
    """Each module of ``replaced`` (by id) into every place it sat; the model, or the root's replacement."""
    for parent, child_name, child, _ in places:
        if parent is not None and id(child) in replaced:
            setattr(parent, child_name, replaced[id(child)])
    return replaced.get(id(places[-1][2]), places[-1][2])


def activation_after(parent: nn.Module | None, child_name: str, name: str) -> tuple[nn.Module, str]:
    """Where the activation after the norm ``child_name`` of ``parent`` is, when it is the next module of a
    Sequential; a one-line refusal naming the layer otherwise."""
    if isinstance(parent, nn.Sequential):
        names = [n for n, _ in parent.named_children()]
        i = names.index(child_name)
        if i + 1 < len(names) and isinstance(getattr(parent, names[i + 1]), ACTIVATIONS):
            return parent, names[i + 1]
    raise UserError(f"layer {name!r}: the norm is its own activation, and the activation after {name!r} is not the "
                    "next module of a Sequential (it may be called in forward), so normlab cannot remove it; "
                    "choose a norm without its own activation, or swap this one by hand")


def freeze_batch_norms(model: nn.Module, *, affine: bool = True) -> nn.Module:
    """Every BatchNorm2d, SyncBatchNorm and Batch Renorm of ``model`` as a FrozenBatchNorm2d holding its running
    averages, ε and γ, β (trainable unless ``affine`` is False): FrozenBN, the model's function in training what
    it is in evaluation. A shared layer stays one layer; EvoNorm-B0, whose batch variance is part of its
    activation, is refused naming the layer. Returns the model (the new layer if it is one)."""
    places = slots(model)
    replaced: dict[int, nn.Module] = {}
    for _, _, child, name in places:
        if isinstance(child, EvoNormB0):
            raise UserError(f"layer {name!r} is EvoNorm-B0, whose batch variance is part of its activation; "
                            "normlab freezes only batch norms (BatchNorm2d, SyncBatchNorm, brn)")
        if id(child) in replaced:
            continue
        if isinstance(child, nn.BatchNorm2d | nn.SyncBatchNorm) and child.track_running_stats:
            stats, eps, affine_from = child, child.eps, child if child.affine else None
        elif isinstance(child, BatchRenorm2d):
            stats, eps, affine_from = child.stats, child.eps, child
        else:
            continue
        new = FrozenBatchNorm2d(stats.running_mean.shape[0], eps, affine)
        with torch.no_grad():
            new.running_mean.copy_(stats.running_mean)
            new.running_var.copy_(stats.running_var)
            if affine_from is not None:
                new.weight.copy_(affine_from.weight)
                new.bias.copy_(affine_from.bias)
        replaced[id(child)] = new.to(stats.running_mean.device)
    return put(places, replaced)
