import torch

from normlab.data.augment import Affine
from normlab.engine.config import TrainConfig

STUDY = TrainConfig()


def test_augmentation_is_seeded_and_keeps_shape():
    x = torch.rand(8, 1, 28, 28)
    affine = Affine(STUDY.rotate, STUDY.shift, STUDY.scale)
    a = affine(x, torch.Generator().manual_seed(0))
    b = affine(x, torch.Generator().manual_seed(0))
    assert a.shape == x.shape and torch.equal(a, b)
    assert not torch.equal(a, x)


def test_zero_ranges_are_the_identity():
    x = torch.rand(8, 1, 28, 28)
    assert torch.allclose(Affine(0, 0, 0)(x, torch.Generator().manual_seed(0)), x, atol=1e-5)


def test_a_shift_moves_the_image_by_at_most_that_many_pixels():
    x = torch.zeros(64, 1, 28, 28)
    x[:, :, 14, 14] = 1.0
    moved = Affine(0, 2, 0)(x, torch.Generator().manual_seed(1))
    rows, cols = torch.arange(28).view(28, 1), torch.arange(28).view(1, 28)
    mass = moved[:, 0].sum((1, 2))
    centre_r = (moved[:, 0] * rows).sum((1, 2)) / mass
    centre_c = (moved[:, 0] * cols).sum((1, 2)) / mass
    assert ((centre_r - 14).abs() <= 2.01).all() and ((centre_c - 14).abs() <= 2.01).all()
    assert (centre_r - 14).abs().max() > 1  # and it does move
