"""Per-layer table of the model: output shape, receptive field, parameters, multiply-adds."""

from __future__ import annotations

import torch
from torch import nn

from normlab.nn.net import Net, count_parameters


def layer_table(model: Net) -> list[dict[str, object]]:
    """One row per top-level layer, measured on a 1×1×28×28 input with forward hooks."""
    shapes: dict[str, tuple[int, ...]] = {}
    layers = [*model.features.named_children(), ("gap", model.gap), ("head", model.head)]
    hooks = [m.register_forward_hook(lambda mod, inp, out, name=name: shapes.__setitem__(name, tuple(out.shape[1:])))
             for name, m in layers]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 1, 28, 28, device=next(model.parameters()).device))
    model.train(was_training)
    for h in hooks:
        h.remove()

    rows, rf, jump, size = [], 1, 1, 28
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


def format_summary(model: Net) -> str:
    rows = layer_table(model)
    lines = [f"Net(norm={model.norm!r}{f', groups={model.groups}' if model.groups is not None else ''}"
             f"{', weight_std=True' if model.weight_std else ''})",
             f"{'layer':<8} {'output (C, H, W)':<17} {'RF':>3} {'params':>7} {'mult-adds':>10}"]
    for r in rows:
        lines.append(f"{r['layer']:<8} {r['output']!s:<17} {r['rf']:>3} {r['params']:>7,} {r['macs']:>10,}")
    lines.append(f"{'total':<8} {'':<17} {'':>3} {count_parameters(model):>7,} {sum(r['macs'] for r in rows):>10,}")
    return "\n".join(lines)
