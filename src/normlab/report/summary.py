"""Per-layer table of the model: output shape, receptive field, parameters, multiply-adds."""

from __future__ import annotations

import torch
from torch import nn

from normlab.nn.net import Net, count_parameters


def layer_table(model: Net, shape: tuple[int, int, int] = (1, 28, 28)) -> list[dict[str, object]]:
    """One row per top-level layer, measured on one image of ``shape`` (C, H, W) with forward hooks."""
    shapes: dict[str, tuple[int, ...]] = {}
    layers = [*model.features.named_children(), ("gap", model.gap), ("head", model.head)]
    hooks = [m.register_forward_hook(lambda mod, inp, out, name=name: shapes.__setitem__(name, tuple(out.shape[1:])))
             for name, m in layers]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, *shape, device=next(model.parameters()).device))
    model.train(was_training)
    for h in hooks:
        h.remove()

    rows, rf, jump, size = [], 1, 1, shape[-1]
    for name, module in layers:
        conv = next((m for m in module.modules() if isinstance(m, nn.Conv2d)), None)
        macs = 0
        if conv is not None:
            k = conv.kernel_size[0]
            rf, jump = rf + (k - 1) * jump, jump * conv.stride[0]
            c, h, w = shapes[name]
            macs = h * w * c * conv.in_channels * k * k // conv.groups
        elif isinstance(module, nn.MaxPool2d):
            k = int(module.kernel_size)  # type: ignore[arg-type]
            rf, jump = rf + (k - 1) * jump, jump * k
        elif isinstance(module, nn.AdaptiveAvgPool2d):
            rf += (size - 1) * jump  # global pooling: a kernel as large as its input
        size = shapes[name][-1]
        rows.append({"layer": name, "output": shapes[name], "rf": rf,
                     "params": count_parameters(module), "macs": macs})
    return rows


def module_table(model: nn.Module, shape: tuple[int, int, int] = (1, 28, 28)) -> list[dict[str, object]]:
    """Any model: one row per top-level child, its output shape, parameters and the multiply-adds of the convs and
    linear layers inside it, measured on one image of ``shape`` with forward hooks."""
    macs: dict[str, int] = {}
    shapes: dict[str, tuple[int, ...]] = {}

    def count(name: str) -> object:
        def hook(module: nn.Module, _: object, out: torch.Tensor) -> None:
            if isinstance(module, nn.Conv2d):
                per_output = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
                macs[name] = macs.get(name, 0) + out[0].numel() * per_output
            elif isinstance(module, nn.Linear):
                macs[name] = macs.get(name, 0) + module.in_features * module.out_features
        return hook

    children: list[tuple[str, nn.Module]] = []
    for name, child in model.named_children():
        if isinstance(child, nn.Sequential) and all(any(c.children()) for c in child.children()):
            children += [(f"{name}.{sub}", c) for sub, c in child.named_children()]  # blocks: a row each
        else:
            children.append((name, child))

    def record(name: str) -> object:
        return lambda module, _, out: shapes.__setitem__(name, tuple(out.shape[1:]))

    hooks = [m.register_forward_hook(count(name)) for name, child in children for m in child.modules()]
    hooks += [child.register_forward_hook(record(name)) for name, child in children]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, *shape, device=next(model.parameters()).device))
    model.train(was_training)
    for h in hooks:
        h.remove()
    return [{"layer": name, "output": shapes.get(name, ()), "rf": "", "params": count_parameters(child),
             "macs": macs.get(name, 0)} for name, child in children]


def format_summary(model: nn.Module, shape: tuple[int, int, int] = (1, 28, 28)) -> str:
    """normlab's Net with receptive fields; any other model by its top-level layers; on one image of ``shape``."""
    if not isinstance(model, Net):
        rows = module_table(model, shape)
        norm = getattr(model, "norm", None)  # normlab's own models say which norm they hold
        lines = [f"{type(model).__name__}(norm={norm!r})" if isinstance(norm, str) else type(model).__name__]
    else:
        rows = layer_table(model, shape)
        lines = [f"Net(norm={model.norm!r}{f', groups={model.groups}' if model.groups is not None else ''}"
                 f"{', weight_std=True' if model.weight_std else ''})"]
    lines.append(f"{'layer':<8} {'output (C, H, W)':<17} {'RF':>3} {'params':>7} {'mult-adds':>10}")
    lines.append(f"{'input':<8} {shape!s}")
    for r in rows:
        lines.append(f"{r['layer']:<8} {r['output']!s:<17} {r['rf']:>3} {r['params']:>7,} {r['macs']:>10,}")
    lines.append(f"{'total':<8} {'':<17} {'':>3} {count_parameters(model):>7,} {sum(r['macs'] for r in rows):>10,}")
    return "\n".join(lines)
