"""Pickles from outside read safely: an unpickler that rebuilds numpy arrays and plain containers, nothing else.

The datasets that ship as pickles (MNIST's mnist.pkl.gz, CIFAR-10's batches) are checked against their checksums
first; this is the second door: a planted pickle cannot name any callable but numpy's array constructors.
"""

from __future__ import annotations

import codecs
import pickle
from typing import ClassVar

import numpy as np


class ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild numpy arrays (and bytes) and nothing else: no other callable can be named."""

    _allowed: ClassVar[dict[tuple[str, str], object]] = {
        ("numpy.core.multiarray", "_reconstruct"): np.ndarray((0,)).__reduce__()[0],
        ("numpy._core.multiarray", "_reconstruct"): np.ndarray((0,)).__reduce__()[0],
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        # Python 3 writes bytes into a protocol-2 pickle as codecs.encode(text, "latin1"): a pure conversion.
        ("_codecs", "encode"): codecs.encode,
    }

    def find_class(self, module: str, name: str) -> object:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays are allowed") from None
