"""normlab: a normalization & regularization study of small MNIST CNNs."""

__version__ = "0.1.0"
