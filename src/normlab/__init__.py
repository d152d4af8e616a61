"""normlab: normalization & regularization studies of CNNs, and normalizations that drop into any model.

    >>> from normlab import Net, norm_layer, swap_norms
    >>> swap_norms(my_model, "gn:8")               # every norm of a model replaced, weights carried over
    >>> resnet18(norm_layer=norm_layer("brn"))     # a factory for models that take one
    >>> freeze_batch_norms(my_model)               # FrozenBN: the running averages, in training too
"""

import importlib

__version__ = "0.1.0"
FACE = {"Net": "normlab.nn.net", "norm_layer": "normlab.nn.norm_layer", "swap_norms": "normlab.nn.swap",
        "freeze_batch_norms": "normlab.nn.swap"}
__all__ = ["__version__", *FACE]


def __getattr__(name: str) -> object:
    """The library face, imported on first use: ``import normlab`` imports no torch, so that the command line
    (``python -m normlab``) handles a signal from its first moment."""
    if name in FACE:
        return getattr(importlib.import_module(FACE[name]), name)
    raise AttributeError(f"module 'normlab' has no attribute {name!r}")
