"""The package's layers: each imports only the layers below it, so a newcomer reads it bottom-up and a change
in the report cannot reach into how a run trains."""

import ast
import subprocess
import sys

from conftest import ROOT

PACKAGE = ROOT / "src" / "normlab"
GROUND = {"errors", "files", "machine"}               # the ground floor, importable by all
TOP = {"cli", "flags", "__main__", "__init__"}         # the command line and the library face: anything
BELOW = {  # a layer's own modules and these
    "ground": set(),
    "nn": {"ground"},
    "data": {"ground"},
    "engine": {"ground", "nn", "data"},
    "report": {"ground", "nn", "data", "engine"},
    "study": {"ground", "nn", "data", "engine", "report"},
}


def layer(module: str) -> str:
    """The layer of a dotted name inside normlab ('engine.train' -> 'engine', 'errors' -> 'ground')."""
    first = module.split(".")[0]
    if first in GROUND or not first:
        return "ground"
    return "top" if first in TOP else first


def imports(path):
    """Every normlab module that ``path`` imports, at the top or inside a function, as 'engine.train'."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "normlab":
            yield node.module.removeprefix("normlab").lstrip(".")
        elif isinstance(node, ast.Import):
            yield from (a.name.removeprefix("normlab.") for a in node.names if a.name.startswith("normlab."))


def test_each_layer_imports_only_the_layers_below_it():
    wrong = []
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        own = layer(name)
        if own == "top":
            continue
        wrong += [f"{name} imports normlab.{target}" for target in imports(path)
                  if layer(target) != own and layer(target) not in BELOW[own]]
    assert not wrong, wrong


def test_every_module_is_in_a_layer():
    layers = {layer(".".join(p.relative_to(PACKAGE).with_suffix("").parts)) for p in PACKAGE.rglob("*.py")}
    assert layers <= {"top", *BELOW}, layers


def test_importing_normlab_imports_no_torch_until_the_library_face_is_used():
    """The command line installs its signal handlers after ``import normlab``: that import must be instant."""
    code = ("import sys, normlab; print('torch' in sys.modules); "
            "from normlab import Net, norm_layer, swap_norms; print('torch' in sys.modules, callable(swap_norms))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "True", "True"]
