import torch

from normlab.data.augment import Affine, CropFlip
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


def test_crop_flip_shifts_by_whole_pixels_within_the_pad_and_flips_half_the_images():
    images = torch.rand(4000, 3, 8, 8)
    out = CropFlip(2, flip=True)(images, torch.Generator().manual_seed(0))
    assert out.shape == images.shape
    found, flips = set(), 0
    padded = torch.nn.functional.pad(images, (2,) * 4)
    for i in range(200):
        matches = [(dx, dy, f) for f in (False, True) for dx in range(5) for dy in range(5)
                   if torch.equal(out[i], (padded[i].flip(-1) if f else padded[i])[:, dy:dy + 8, dx:dx + 8])]
        assert len(matches) == 1  # every output is one crop of the padded image, flipped or not
        found.add(matches[0][:2])
        flips += matches[0][2]
    assert len(found) == 25 and 70 < flips < 130  # every shift of ±2 px in x and y; about half flipped


def test_crop_flip_without_flip_or_pad_is_the_identity_and_color_channels_move_together():
    images = torch.rand(16, 3, 8, 8)
    assert torch.equal(CropFlip(0, flip=False)(images, torch.Generator().manual_seed(1)), images)
    out = CropFlip(3, flip=True)(images, torch.Generator().manual_seed(1))
    again = CropFlip(3, flip=True)(images, torch.Generator().manual_seed(1))
    assert torch.equal(out, again)  # the run's generator decides it all
    same = images.clone()
    same[:, 1], same[:, 2] = images[:, 0], images[:, 0]
    moved = CropFlip(3, flip=True)(same, torch.Generator().manual_seed(1))
    assert torch.equal(moved[:, 0], moved[:, 1]) and torch.equal(moved[:, 0], moved[:, 2])
