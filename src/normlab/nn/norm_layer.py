"""A norm spec as a layer factory: ``norm_layer("gn:8")`` is a ``channels -> nn.Module`` for torchvision's
``norm_layer=`` convention, every registry norm with its settings checked once.

A spec is a registry name or alias (bn, gn, ln, brn, frn, evonorm-s0, dyt, ...), ``:G`` for a grouped norm's
group count and, where convs can change (normlab.nn.swap), ``+ws`` for Weight Standardization; keyword arguments
are the settings of NormSettings (bn_batch for ghost statistics, eps, momentum, r_max, d_max, ...).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from torch import nn

from normlab.errors import UserError
from normlab.nn.norms import NORMS, NormSettings, canonical_norm

SETTINGS = [f.name for f in fields(NormSettings) if f.name != "copies"]


@dataclass(frozen=True)
class NormLayer:
    """A ``channels -> nn.Module`` factory for one registry norm and its settings (picklable, printable).
    ``given``: the settings the user named; swap_norms takes the others (ε, momentum) from each replaced layer."""

    name: str
    settings: NormSettings
    spec: str
    given: frozenset[str] = frozenset()

    def __call__(self, channels: int) -> nn.Module:
        if NORMS[self.name].grouped and channels % self.settings.groups:
            raise UserError(f"{self.settings.groups} groups do not divide {channels} channels; give a group count "
                            f"that divides every norm's channels (as {self.name}:G)")
        return NORMS[self.name].build(channels, self.settings)

    def __repr__(self) -> str:
        return f"norm_layer({self.spec!r})"


def check_settings(values: dict[str, object]) -> NormSettings:
    """The keyword settings as NormSettings, each checked: one line naming the setting otherwise."""
    unknown = sorted(set(values) - set(SETTINGS))
    if unknown:
        raise UserError(f"unknown norm setting {unknown[0]!r}; the settings are {', '.join(SETTINGS)}")

    def number(name: str, low: float, high: float = math.inf, whole: bool = False, low_open: bool = False,
               optional: bool = False) -> None:
        value = values.get(name)
        if name not in values or (optional and value is None):
            return
        kind = int if whole else (int, float)
        if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value) \
                or value < low or (low_open and value == low) or value > high:
            what = "a whole number" if whole else "a finite number"
            bound = f"above {low:g}" if low_open else f"at least {low:g}"
            raise UserError(f"norm setting {name}={value!r}: must be {what} {bound}"
                            f"{f' and at most {high:g}' if math.isfinite(high) else ''}")

    number("groups", 1, whole=True)
    number("bn_batch", 2, whole=True, optional=True)
    number("eps", 0, low_open=True, optional=True)
    number("momentum", 0, 1, low_open=True)
    number("r_max", 1)
    number("d_max", 0)
    number("relax_from", 0, whole=True)
    number("relax_to", 0, whole=True)
    settings = NormSettings(**values)  # type: ignore[arg-type]
    if settings.relax_from > settings.relax_to:
        raise UserError(f"norm settings relax_from={settings.relax_from} and relax_to={settings.relax_to}: the clips "
                        "widen from the first step to the second, so relax_from must not be above relax_to")
    return settings


def parse_spec(spec: object, settings: dict[str, object]) -> tuple[NormLayer, bool]:
    """The factory a spec and settings name, and whether the spec asks for Weight Standardization (+ws)."""
    if not isinstance(spec, str):
        raise UserError(f"a norm spec is a string such as 'gn:8' or 'bn', not {type(spec).__name__} {spec!r}")
    base, *suffixes = spec.strip().lower().split("+")
    if any(s.strip() != "ws" for s in suffixes) or len(suffixes) > 1:
        raise UserError(f"norm spec {spec!r}: a norm, then :G for a group count, then +ws for Weight "
                        "Standardization (as gn:8+ws)")
    name, colon, groups = base.strip().partition(":")
    if not name:
        raise UserError(f"norm spec {spec!r} names no norm; give one of {', '.join(NORMS)} (as gn:8)")
    name = canonical_norm(name)
    if colon:
        if not NORMS[name].grouped:
            grouped = ", ".join(n for n, e in NORMS.items() if e.grouped)
            raise UserError(f"norm spec {spec!r}: only a grouped norm ({grouped}) takes a group count, as gn:8")
        if not (groups.isascii() and groups.isdecimal() and int(groups) > 0):
            raise UserError(f"norm spec {spec!r}: the group count after ':' must be a whole number above 0, as gn:8")
        if "groups" in settings:
            raise UserError(f"norm spec {spec!r} gives the group count, and so does groups={settings['groups']!r}: "
                            "give it once")
        settings = {**settings, "groups": int(groups)}
    return NormLayer(name, check_settings(settings), spec, frozenset(settings)), bool(suffixes)


def norm_layer(spec: str, **settings: object) -> NormLayer:
    """A ``channels -> nn.Module`` factory for ``spec`` (``"gn:8"``, ``"bn"``, ``"brn"``), as torchvision's
    ``norm_layer=`` takes. A norm that is its own activation (frn, evonorm) keeps whatever activation the model
    applies after it; swap_norms removes it where it can."""
    layer, ws = parse_spec(spec, settings)
    if ws:
        raise UserError(f"norm spec {spec!r}: Weight Standardization changes the convs, not the norm: use "
                        "swap_norms(model, spec) or normlab.nn.norms.StdConv2d")
    return layer



def check_groups(groups: int, channels: tuple[int, ...]) -> None:
    """GroupNorm needs ``groups`` to divide the channels of every layer; say which counts would (a user's model,
    whose channels are not known up front: each layer when its norm is made)."""
    if not channels:
        return
    valid = [g for g in range(1, min(channels) + 1) if all(c % g == 0 for c in channels)]
    if groups not in valid:
        raise UserError(f"does not divide the channel counts {list(channels)} of every layer; "
                        f"use one of {', '.join(map(str, valid))}", "groups", groups)
