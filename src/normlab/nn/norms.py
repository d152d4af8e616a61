"""The one home of a normalization: its name, how to build it, and what the rest of normlab needs to know.

    >>> NORMS["group"].build(16, NormSettings(groups=4))
    >>> NORMS["batch"].batch_stats, NORMS["frn"].activation   # (True, True)

Each entry says how to build the layer from a channel count and the run's settings, which of those
settings it takes, whether its statistics come from the batch (then ghost sweeps group its images, its
evaluation statistics differ from its training ones, and it needs two images per batch), and whether it
is its own activation (FRN's TLU, EvoNorm: the block then has no ReLU). Weight Standardization modifies
the conv, not the norm, so it combines with any of them (``gn+ws``): ``StdConv2d``.

A new norm is one entry in NORMS plus its from-scratch version in normlab.report.explain.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from normlab.errors import UserError

GROUPS = 4  # a grouped norm's channel groups unless a run says otherwise: every layer's channels divide by it


@dataclass(frozen=True)
class NormSettings:
    """What a norm layer may take from the run's config; each entry reads the ones it needs."""

    groups: int = GROUPS          # channel groups (GroupNorm, EvoNorm-S0)
    bn_batch: int | None = None   # images per batch-statistics group (ghost); None: the whole batch
    eps: float | None = None      # None: the entry's own default
    momentum: float = 0.1         # running averages: running += momentum · (batch − running)
    r_max: float = 3.0            # Batch Renorm's final clip of r = σ_B / σ, and of d = (μ_B − μ) / σ
    d_max: float = 5.0
    relax_from: int = 0           # Batch Renorm is plain BN (r = 1, d = 0) until this step, then its clips widen
    relax_to: int = 0             # linearly to r_max, d_max at this step (the defaults: open from the start)
    copies: int = 1               # models stacked side by side on the channels (normlab.engine.fused): a per-sample
                                  # norm keeps its groups within each copy's channels


@dataclass(frozen=True)
class Norm:
    """One normalization of the registry: ``layer(channels, settings, eps)`` builds it."""

    layer: Callable[[int, NormSettings, float], nn.Module]
    eps: float                    # its ε unless the settings say otherwise
    batch_stats: bool = False     # statistics over the images of a batch (ghost-capable, BN-like at eval)
    activation: bool = False      # it is its own nonlinearity: no ReLU in its block
    grouped: bool = False         # it takes a group count
    shift: bool = True            # it adds a learned shift (without one, the conv before it keeps its bias)

    def build(self, channels: int, settings: NormSettings) -> nn.Module:
        return self.layer(channels, settings, self.eps if settings.eps is None else settings.eps)


def image_groups(x: Tensor, images: int | None) -> list[Tensor]:
    """``x`` (N, C, H, W) as tensors (k, G, C, H, W) of k groups of G images: one of the whole batch, or groups of
    ``images`` and a short last group of its own."""
    if images is None or len(x) <= images:
        return [x.unsqueeze(0)]
    k, rest = divmod(len(x), images)
    groups = [x[:k * images].unflatten(0, (k, images))]
    return [*groups, x[k * images:].unsqueeze(0)] if rest else groups


def group_stats(g: Tensor) -> tuple[Tensor, Tensor]:
    """Per group and channel of ``g`` (k, G, C, H, W): the mean and the biased variance, each (k, 1, C, 1, 1)."""
    var, mean = torch.var_mean(g, dim=(1, 3, 4), correction=0, keepdim=True)
    return mean, var


class GhostBatchNorm2d(nn.BatchNorm2d):
    """Batch norm whose training statistics come from groups of ``images`` images of the batch: the GroupNorm
    paper's BN with a few images per GPU and no synchronisation between GPUs, at any SGD batch size. The
    running averages move towards the mean of the groups' statistics; evaluation is plain batch norm."""

    def __init__(self, channels: int, images: int | None, eps: float = 1e-5, momentum: float | None = 0.1) -> None:
        super().__init__(channels, eps=eps, momentum=momentum)
        self.images = images

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.images is None or len(x) <= self.images:
            return super().forward(x)
        n, c, h, w = x.shape
        k, rest = divmod(n, self.images)
        # The k groups as images × (k·C) channels, in the N×H×W×C memory order of the model's channels-last
        # tensors: batch norm's own kernel normalizes each group's channels and returns their statistics.
        stacked = x[:n - rest].permute(0, 2, 3, 1).reshape(k, self.images, h, w, c).permute(1, 2, 3, 0, 4) \
            .reshape(self.images, h, w, k * c).permute(0, 3, 1, 2)
        means, variances = x.new_zeros(k * c), x.new_ones(k * c)
        y = F.batch_norm(stacked, means, variances, self.weight.repeat(k), self.bias.repeat(k), training=True,
                         momentum=1.0, eps=self.eps)  # momentum 1: the buffers get the groups' statistics
        with torch.no_grad():  # the running averages move towards the mean of the groups' statistics
            self.running_mean.lerp_(means.view(k, c).mean(0), self.momentum)
            self.running_var.lerp_(variances.view(k, c).mean(0), self.momentum)
            self.num_batches_tracked.add_(1)
        y = y.permute(0, 2, 3, 1).reshape(self.images, h, w, k, c).permute(3, 0, 1, 2, 4) \
            .reshape(n - rest, h, w, c).permute(0, 3, 1, 2)
        if rest:  # a short last group is a group of its own
            tail = F.batch_norm(x[n - rest:], None, None, self.weight, self.bias, training=True, eps=self.eps)
            y = torch.cat([y, tail])
        return y


class RunningStats(nn.Module):
    """Per-channel running mean and (unbiased) variance of batch statistics, as BatchNorm keeps them (momentum
    None: the plain average of every batch since the last reset, as BatchNorm's)."""

    def __init__(self, channels: int, momentum: float | None) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))
        self.register_buffer("num_batches_tracked", torch.zeros((), dtype=torch.long))

    def reset_running_stats(self) -> None:
        self.running_mean.zero_()
        self.running_var.fill_(1)
        self.num_batches_tracked.zero_()

    @torch.no_grad()
    def update(self, groups: list[Tensor], means: list[Tensor], variances: list[Tensor]) -> None:
        """Towards the mean over full groups of their means and unbiased variances (a short last group counts
        only when it is the only group)."""
        full = [i for i, g in enumerate(groups) if g.shape[1] == groups[0].shape[1]]
        size = groups[0].shape[1] * groups[0].shape[3] * groups[0].shape[4]
        mean = torch.cat([means[i].flatten(0, 1) for i in full]).mean(0).flatten()
        var = torch.cat([variances[i].flatten(0, 1) for i in full]).mean(0).flatten() * size / max(size - 1, 1)
        weight = 1 / (self.num_batches_tracked + 1) if self.momentum is None else self.momentum
        self.running_mean.lerp_(mean, weight)
        self.running_var.lerp_(var, weight)
        self.num_batches_tracked.add_(1)

    def view(self) -> tuple[Tensor, Tensor]:
        return self.running_mean.view(1, -1, 1, 1), self.running_var.view(1, -1, 1, 1)


class BatchRenorm2d(nn.Module):
    """Batch Renormalization (Ioffe 2017): training normalizes with the batch's statistics corrected towards the
    running ones, x̂ = (x − μ_B)/σ_B · r + d with r = σ_B/σ and d = (μ_B − μ)/σ clipped to [1/r_max, r_max] and
    [−d_max, d_max] and not differentiated; evaluation uses μ, σ, as training then nearly does. The clips
    start at plain BN (1, 0) and widen between steps ``relax_from`` and ``relax_to``. Ghost-capable."""

    def __init__(self, channels: int, s: NormSettings = NormSettings(), eps: float = 1e-5) -> None:
        super().__init__()
        self.eps, self.images, self.s = eps, s.bn_batch, s
        self.weight, self.bias = nn.Parameter(torch.ones(channels)), nn.Parameter(torch.zeros(channels))
        self.stats = RunningStats(channels, s.momentum)

    def clips(self) -> tuple[Tensor, Tensor]:
        """r_max and d_max at the current step, from the step counter (a tensor: CUDA graphs replay it)."""
        s, t = self.s, self.stats.num_batches_tracked.float()
        ramp = ((t - s.relax_from + 1) / max(s.relax_to - s.relax_from, 1)).clamp(0, 1)
        return 1 + (s.r_max - 1) * ramp, s.d_max * ramp

    def forward(self, x: Tensor) -> Tensor:
        mu, var = self.stats.view()
        sigma = torch.sqrt(var + self.eps)
        if not self.training:
            return (x - mu) / sigma * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        r_max, d_max = self.clips()
        groups = image_groups(x, self.images)
        stats = [group_stats(g) for g in groups]
        out = []
        for g, (mean, v) in zip(groups, stats, strict=True):
            std = torch.sqrt(v + self.eps)
            r = (std.detach() / sigma.unsqueeze(0)).clamp(1 / r_max, r_max)
            d = ((mean.detach() - mu.unsqueeze(0)) / sigma.unsqueeze(0)).clamp(-d_max, d_max)
            out.append(((g - mean) / std * r + d).flatten(0, 1))
        self.stats.update(groups, [m for m, _ in stats], [v for _, v in stats])
        return torch.cat(out) * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


class FilterResponseNorm2d(nn.Module):
    """FRN + TLU (Singh & Krishnan 2019): per sample and channel, x / √(ν² + ε) with ν² the mean of x² over
    (H, W), no mean subtracted, then γ·x̂ + β and the learned threshold max(·, τ) in place of ReLU."""

    def __init__(self, channels: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight, self.bias = nn.Parameter(torch.ones(channels)), nn.Parameter(torch.zeros(channels))
        self.tau = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        nu2 = x.pow(2).mean((2, 3), keepdim=True)
        y = x * torch.rsqrt(nu2 + self.eps) * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        return torch.maximum(y, self.tau.view(1, -1, 1, 1))


class EvoNormS0(nn.Module):
    """EvoNorm-S0 (Liu et al. 2020): x·sigmoid(v·x) / √(group variance + ε) · γ + β, the variance per sample and
    group of channels over (C/G, H, W); batch-independent, its own activation."""

    def __init__(self, channels: int, groups: int, eps: float) -> None:
        super().__init__()
        self.groups, self.eps = groups, eps
        self.weight, self.bias = nn.Parameter(torch.ones(channels)), nn.Parameter(torch.zeros(channels))
        self.v = nn.Parameter(torch.ones(channels))

    def forward(self, x: Tensor) -> Tensor:
        n, c = x.shape[:2]
        var = x.reshape(n, self.groups, -1).var(2, correction=0, keepdim=True)
        std = torch.sqrt(var + self.eps).repeat_interleave(c // self.groups, 1).view(n, c, 1, 1)
        y = x * torch.sigmoid(self.v.view(1, -1, 1, 1) * x) / std
        return y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


class EvoNormB0(nn.Module):
    """EvoNorm-B0 (Liu et al. 2020): x / max(√(batch variance + ε), v·x + √(instance variance + ε)) · γ + β; the
    batch variance per channel over (N, H, W) in training (ghost-capable), its running average at evaluation;
    the instance variance per sample and channel over (H, W). Its own activation."""

    def __init__(self, channels: int, s: NormSettings = NormSettings(), eps: float = 1e-5) -> None:
        super().__init__()
        self.eps, self.images = eps, s.bn_batch
        self.weight, self.bias = nn.Parameter(torch.ones(channels)), nn.Parameter(torch.zeros(channels))
        self.v = nn.Parameter(torch.ones(channels))
        self.stats = RunningStats(channels, s.momentum)

    def forward(self, x: Tensor) -> Tensor:
        instance = torch.sqrt(x.var((2, 3), correction=0, keepdim=True) + self.eps)
        if self.training:
            groups = image_groups(x, self.images)
            stats = [group_stats(g) for g in groups]
            batch = torch.cat([torch.sqrt(v + self.eps).expand(-1, g.shape[1], -1, -1, -1).flatten(0, 1)
                               for g, (_, v) in zip(groups, stats, strict=True)])
            self.stats.update(groups, [m for m, _ in stats], [v for _, v in stats])
        else:
            batch = torch.sqrt(self.stats.view()[1] + self.eps)
        y = x / torch.maximum(batch, self.v.view(1, -1, 1, 1) * x + instance)
        return y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


class DynamicTanh(nn.Module):
    """Dynamic Tanh (Zhu et al. 2025, "Transformers without Normalization"): γ·tanh(α·x) + β, no statistics at all,
    α a learned scalar (one per copy of a fused model) starting at the paper's default 0.5. A normalization-free
    baseline: it squashes like a norm's output range, but nothing about the batch or the sample is measured."""

    def __init__(self, channels: int, copies: int = 1, alpha: float = 0.5) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.full((copies,), alpha))
        self.weight, self.bias = nn.Parameter(torch.ones(channels)), nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        alpha = self.alpha.repeat_interleave(x.shape[1] // len(self.alpha)).view(1, -1, 1, 1)
        return torch.tanh(alpha * x) * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


class FrozenBatchNorm2d(nn.Module):
    """Batch norm with its statistics frozen: in training too it normalizes with the running averages it holds
    (FrozenBN: Wu & Johnson 2021's population statistics, detectron2's FrozenBatchNorm2d), so no image depends on
    the others in its batch; γ, β stay learned parameters unless ``affine`` is False (then buffers, as
    detectron2's). Made from a trained layer by normlab.nn.swap.freeze_batch_norms."""

    def __init__(self, channels: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__()
        self.eps = eps
        weight, bias = torch.ones(channels), torch.zeros(channels)
        if affine:
            self.weight, self.bias = nn.Parameter(weight), nn.Parameter(bias)
        else:
            self.register_buffer("weight", weight)
            self.register_buffer("bias", bias)
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: Tensor) -> Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)


class StdConv2d(nn.Conv2d):
    """Weight Standardization (Qiao et al. 2019): the conv uses its weights standardized per output channel,
    (W − mean) / √(var + ε) over (C_in, kH, kW); the stored weights stay as SGD moves them."""

    def __init__(self, *args: object, eps: float = 1e-5, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        var, mean = torch.var_mean(self.weight, dim=(1, 2, 3), correction=0, keepdim=True)
        return self._conv_forward(x, (self.weight - mean) / torch.sqrt(var + self.eps), self.bias)


def batch_norm(c: int, s: NormSettings, eps: float) -> nn.Module:
    """BatchNorm2d, or its ghost form when the settings give images per statistics group."""
    if s.bn_batch:
        return GhostBatchNorm2d(c, s.bn_batch, eps, s.momentum)
    return nn.BatchNorm2d(c, eps=eps, momentum=s.momentum)


NORMS: dict[str, Norm] = {
    "batch": Norm(batch_norm, 1e-5, batch_stats=True),
    "brn": Norm(BatchRenorm2d, 1e-5, batch_stats=True),
    "group": Norm(lambda c, s, eps: nn.GroupNorm(s.groups * s.copies, c, eps=eps), 1e-5, grouped=True),
    "layer": Norm(lambda c, s, eps: nn.GroupNorm(s.copies, c, eps=eps), 1e-5),  # per sample over (C, H, W)
    "instance": Norm(lambda c, s, eps: nn.GroupNorm(c, c, eps=eps), 1e-5),
    "frn": Norm(lambda c, s, eps: FilterResponseNorm2d(c, eps), 1e-6, activation=True),
    "evonorm-s0": Norm(lambda c, s, eps: EvoNormS0(c, s.groups * s.copies, eps), 1e-5, activation=True,
                       grouped=True),
    "evonorm-b0": Norm(EvoNormB0, 1e-5, batch_stats=True, activation=True),
    "dyt": Norm(lambda c, s, eps: DynamicTanh(c, s.copies), 0.0),  # no statistics, so no ε
    "none": Norm(lambda c, s, eps: nn.Identity(), 0.0, shift=False),
}
BATCH_STAT_LAYERS = (nn.BatchNorm2d, BatchRenorm2d, EvoNormB0)  # the layers of the entries with batch_stats


def batch_stat_layers(model: nn.Module) -> list[nn.Module]:
    """The layers of ``model`` that normalize with batch statistics in training and keep running averages."""
    return [m for m in model.modules() if isinstance(m, BATCH_STAT_LAYERS)]


ALIASES = {"bn": "batch", "gn": "group", "ln": "layer", "in": "instance"}
CONV_MODIFIERS = ("ws",)  # Weight Standardization, written norm+ws: StdConv2d in place of every block's conv


def canonical_norm(name: str) -> str:
    """The registry name for ``name`` or an alias; a clear error listing the valid names otherwise."""
    key = ALIASES.get(name.lower(), name.lower())
    if key not in NORMS:
        valid = ", ".join([*NORMS, *(f"{a} (={n})" for a, n in ALIASES.items())])
        raise UserError(f"unknown norm; choose one of: {valid}", "norm", name)
    return key


def names_where(attribute: str) -> str:
    """The registry's norms that have ``attribute`` (grouped, batch_stats, ...), for error messages."""
    return ", ".join(name for name, entry in NORMS.items() if getattr(entry, attribute))


class SegmentedNorm(nn.Module):
    """The norm of a fused model whose copies differ in it: each segment of its channels (the copies of one kind)
    normalized by a layer of its own."""

    def __init__(self, parts: list[nn.Module], channels: list[int]) -> None:
        super().__init__()
        self.parts, self.channels = nn.ModuleList(parts), channels

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([part(chunk) for part, chunk in zip(self.parts, x.split(self.channels, 1), strict=True)], 1)
