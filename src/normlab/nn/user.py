"""A user's model: ``--model path/to/model.py:NAME`` or ``--model package.module:NAME``, a factory normlab calls
with what it takes.

    def Net(norm="batch"): ...                 # the exercise's contract: a registry name (batch, group, layer, ...)
    def make(norm_layer, num_classes=10): ...  # torchvision's: a channels -> layer factory (normlab.norm_layer)
    def resnet(): ...                          # neither: normlab builds it, then swaps its norms (normlab.swap_norms)

``in_channels`` (or ``in_chans``, ``channels``) and ``num_classes`` (or ``classes``) are passed when the factory
takes them. A run's identity holds the factory's name and a hash of its source, never its path: an edited file is
another model, a moved one the same. The source is the file's folder (its .py files, for the helpers it imports),
or a package's whole tree, or a lone module's file.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import inspect
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from normlab.errors import UserError
from normlab.files import NotAFile, read_regular
from normlab.nn.norm_layer import NormLayer
from normlab.nn.norms import NORMS, NormSettings
from normlab.nn.swap import standardize_convs, swap_norms

SPEC = re.compile(r"^(?P<source>.+):(?P<name>[A-Za-z_][A-Za-z0-9_]*)$")
CHANNELS, CLASSES = ("in_channels", "in_chans", "channels"), ("num_classes", "classes")


@dataclass(frozen=True)
class UserModel:
    """Where a user's factory is: a .py file (an absolute path) or an importable module, and its name there."""

    source: str
    name: str

    @property
    def spec(self) -> str:
        return f"{self.source}:{self.name}"

    def files(self) -> list[Path]:
        """What the run's identity hashes: a file's folder's .py files, a package's tree, a lone module's file
        (found without importing it)."""
        if self.source.endswith(".py"):
            return sorted(Path(self.source).parent.glob("*.py"))
        try:
            found = importlib.util.find_spec(self.source)
        except (ImportError, ValueError) as e:
            raise UserError(f"cannot find module {self.source}: {e}", "model", self.spec) from None
        if found is None or not found.origin or not found.has_location:
            raise UserError(f"no Python source for module {self.source} (not installed, or built in)", "model",
                            self.spec)
        if found.submodule_search_locations:
            return sorted(p for folder in found.submodule_search_locations for p in Path(folder).rglob("*.py"))
        return [Path(found.origin)]


def parse_user_model(spec: str) -> UserModel:
    """``path.py:NAME`` (the path made absolute) or ``package.module:NAME``; one line saying the form otherwise."""
    match = SPEC.match(spec)
    if not match:
        raise UserError("is neither a built-in model nor FILE.py:NAME or package.module:NAME (the factory that builds "
                        "the model)", "model", spec)
    source = match["source"]
    if source.endswith(".py"):
        path = Path(source).expanduser().resolve()
        if not path.is_file():
            raise UserError(f"{path} is no file; give the path of the .py file that defines {match['name']}",
                            "model", spec)
        source = str(path)
    elif not all(part.isidentifier() for part in source.split(".")):
        raise UserError("a module is a dotted Python name (as mypackage.models:Net), a file ends in .py", "model",
                        spec)
    return UserModel(source, match["name"])


LOADED: dict[str, str] = {}  # a module's name -> the digest of the source it was imported from


@functools.cache
def load_factory(model: UserModel, digest: str) -> Callable[..., Any]:
    """The factory, imported once per content of its source (``digest``; an edited module is reloaded); a file's
    folder joins the path, so that it imports the helpers beside it; one line for what fails on the way."""
    name = f"normlab_user_{hashlib.sha256(model.source.encode()).hexdigest()[:12]}_{digest[:12]}"
    try:
        if model.source.endswith(".py"):
            spec = importlib.util.spec_from_file_location(name, model.source)
            module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
            sys.modules[name] = module  # dataclasses and pickling look modules up here
            folder = str(Path(model.source).parent)
            if folder not in sys.path:  # its helpers beside it, after everything installed (no shadowing torch)
                sys.path.append(folder)
            spec.loader.exec_module(module)  # type: ignore[union-attr]
        elif model.source in sys.modules and LOADED.get(model.source) != digest:
            module = importlib.reload(sys.modules[model.source])
        else:
            module = importlib.import_module(model.source)
        LOADED[model.source] = digest
    except (Exception, SystemExit) as e:  # the user's code: whatever it raises is theirs to fix, said in one line
        sys.modules.pop(name, None)
        raise UserError(f"importing {model.source} failed: {type(e).__name__}: {e}", "model", model.spec) from None
    factory = getattr(module, model.name, None)
    if not callable(factory):
        raise UserError(f"{model.source} has no function or class {model.name!r}", "model", model.spec)
    return factory  # type: ignore[no-any-return]


def source_digest(model: UserModel) -> str:
    """A hash of the factory's source (UserModel.files), each file by its name and content. A neighbour that is no
    Python file (a folder named x.py, a FIFO, a device) is not source: left out, never waited on or read."""
    digest = hashlib.sha256()
    for path in model.files():
        try:
            digest.update(path.name.encode() + b"\0" + read_regular(path, follow=True))
        except NotAFile as e:
            if path.resolve() == Path(model.source).resolve():
                raise UserError(f"{path} {e}; give the Python file that holds {model.name}", "model",
                                model.spec) from None
        except OSError as e:
            raise UserError(f"cannot read {path}: {e.strerror}", "model", model.spec) from None
    return digest.hexdigest()


def identity(spec: str) -> str:
    """What a run's identity records of a user's model: its factory's name and its source's hash, not its path."""
    model = parse_user_model(spec)
    return f"{model.name} sha256:{source_digest(model)[:16]}"


def build_user_model(spec: str, norm: str, groups: int | None, bn_batch: int | None, weight_std: bool,
                     settings: NormSettings, image_shape: tuple[int, int, int], classes: int) -> nn.Module:
    """Call the factory with what it takes (norm or norm_layer, channels, classes), else swap the norms of what it
    builds; check the model on an input of the data's shape; one line for anything that does not fit."""
    model = parse_user_model(spec)
    factory = load_factory(model, source_digest(model))
    try:
        takes = set(inspect.signature(factory).parameters)
    except (TypeError, ValueError):
        takes = set()
    kwargs: dict[str, Any] = {}
    if "norm" in takes:
        default = NormSettings()
        own = {"groups": groups is not None and groups != default.groups, "bn_batch": bn_batch is not None,
               "norm_eps": settings.eps is not None, "norm_momentum": settings.momentum != default.momentum,
               "renorm_r_max": settings.r_max != default.r_max, "renorm_d_max": settings.d_max != default.d_max}
        if any(own.values()):
            raise UserError(f"{model.name}(norm=...) takes a norm's name only, so it cannot take "
                            f"{{{next(k for k, v in own.items() if v)}}}; give the factory norm_layer= instead "
                            "(a channels -> layer factory normlab makes with every setting), or drop it")
        kwargs["norm"] = norm
    elif "norm_layer" in takes:
        kwargs["norm_layer"] = NormLayer(norm, settings, norm)
    for names, value in ((CHANNELS, image_shape[0]), (CLASSES, classes)):
        name = next((n for n in names if n in takes), None)
        if name is not None:
            kwargs[name] = value
    try:
        built = factory(**kwargs)
    except UserError:  # normlab's own, from the norm_layer factory it was given: already one line
        raise
    except (Exception, SystemExit) as e:  # the user's code
        call = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        raise UserError(f"{model.name}({call}) failed: {type(e).__name__}: {e}", "model", spec) from None
    if not isinstance(built, nn.Module):
        raise UserError(f"{model.name}(...) returned {type(built).__name__}, not a torch.nn.Module", "model", spec)
    if "norm" not in kwargs and "norm_layer" not in kwargs:
        grouped = f":{settings.groups}" if NORMS[norm].grouped else ""
        try:
            built = swap_norms(built, f"{norm}{grouped}{'+ws' if weight_std else ''}", bn_batch=bn_batch,
                               eps=settings.eps, momentum=settings.momentum, r_max=settings.r_max,
                               d_max=settings.d_max, relax_from=settings.relax_from, relax_to=settings.relax_to)
        except UserError as e:  # said of the user's model, with what to do about it
            nothing = "found no normalization layer" in e.message
            if nothing and norm == "none" and not weight_std:  # a model without norms is its own "none" variant
                return built
            hint = "; give the factory a norm= or norm_layer= argument, or train it as it is with {norm} none" \
                if nothing else ""
            raise UserError(f"{model.name}(): {e.message}{hint}", "model", spec) from None
    elif weight_std:
        built = standardize_convs(built)
    return built


def check_output(model: nn.Module, spec: str, image_shape: tuple[int, int, int], classes: int) -> None:
    """The model takes a batch of the data's images and gives one score per class, before anything trains."""
    was = model.training
    try:
        with torch.no_grad():
            out = model.eval()(torch.zeros(2, *image_shape))
    except (Exception, SystemExit) as e:  # the user's code, on the data's shape
        raise UserError(f"fails on a batch of the data's images (2, {', '.join(map(str, image_shape))}): "
                        f"{type(e).__name__}: {e}", "model", spec) from None
    finally:
        model.train(was)
    if not any(p.requires_grad for p in model.parameters()):
        raise UserError("has no trainable parameters: SGD would have nothing to train; give it some (or unfreeze "
                        "them)", "model", spec)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UserError(f"gives {shape} for a batch of 2 images; it must give (2, {classes}), a score per class",
                        "model", spec)
