"""Batched augmentation: every op checked against its definition or torchvision's functional op."""

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF

from imgcls.errors import ImgclsError
from imgcls.training.augment import SPEC_NAMES, AugmentConfig, augment_batch

EVERYTHING = AugmentConfig.from_spec("crop=4,flip,rotate=10,jitter=0.2,sharpness=0.3,erase=0.25")


def augment(images: torch.Tensor, cfg: AugmentConfig | str, seed: int = 0) -> torch.Tensor:
    cfg = AugmentConfig.from_spec(cfg) if isinstance(cfg, str) else cfg
    return augment_batch(images, cfg, torch.Generator().manual_seed(seed))


def pixels(shape: tuple[int, ...], low: int = 0, high: int = 256, seed: int = 0) -> torch.Tensor:
    return torch.randint(low, high, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_identity_returns_the_input_as_float():
    images = pixels((8, 3, 12, 12))
    for cfg in (AugmentConfig(), AugmentConfig.from_spec("none"), AugmentConfig.from_spec("")):
        assert cfg.is_identity
        out = augment(images, cfg)
        assert out.dtype == torch.float32
        assert torch.equal(out, images.float())
    assert not EVERYTHING.is_identity


def test_same_seed_same_output_other_seed_other_output():
    images = pixels((32, 3, 28, 28)).float()
    before = images.clone()
    first, again, other = augment(images, EVERYTHING, 1), augment(images, EVERYTHING, 1), augment(images, EVERYTHING, 2)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert torch.equal(images, before)  # the caller's batch is never written to


def test_uint8_and_float_inputs_give_the_same_result():
    images = pixels((32, 3, 28, 28))
    assert torch.equal(augment(images, EVERYTHING, 5), augment(images.float(), EVERYTHING, 5))


@pytest.mark.parametrize("pad_mode", ["zeros", "reflect"])
def test_crop_shifts_each_image_by_at_most_the_padding(pad_mode):
    p, size = 4, 15
    image = torch.arange(1, size * size + 1, dtype=torch.float32).view(1, 1, size, size)  # unique, non-zero values
    out = augment(image.expand(256, -1, -1, -1), AugmentConfig(crop_padding=p, pad_mode=pad_mode))
    padded = F.pad(image[0], (p,) * 4, mode="reflect" if pad_mode == "reflect" else "constant")
    centre = size // 2
    shifts = set()
    for shifted in out[:, 0]:
        row, col = (shifted == image[0, 0, centre, centre]).nonzero()[0].tolist()
        dy, dx = centre - row, centre - col  # shifted[i, j] == image[i + dy, j + dx]
        assert abs(dy) <= p and abs(dx) <= p
        shifts.add((dy, dx))
        rows, cols = slice(max(0, -dy), size - max(0, dy)), slice(max(0, -dx), size - max(0, dx))
        source_rows, source_cols = slice(max(0, dy), size + min(0, dy)), slice(max(0, dx), size + min(0, dx))
        assert torch.equal(shifted[rows, cols], image[0, 0, source_rows, source_cols])
        assert torch.equal(shifted, padded[0, p + dy:p + dy + size, p + dx:p + dx + size])  # the borders too
    assert len(shifts) > 60  # of the 81 possible shifts
    assert {dy for dy, _ in shifts} == {dx for _, dx in shifts} == set(range(-p, p + 1))


def test_flip_mirrors_about_half_the_images():
    image = pixels((1, 3, 8, 8)).float()
    out = augment(image.expand(512, -1, -1, -1), "flip")
    flipped = (out == image.flip(3)).flatten(1).all(1)
    assert (flipped | (out == image).flatten(1).all(1)).all()
    assert 0.4 * 512 <= flipped.sum() <= 0.6 * 512


def test_zero_rotation_changes_nothing_and_large_rotations_change_pixels():
    images = pixels((16, 1, 28, 28))
    assert torch.equal(augment(images, AugmentConfig(rotation=0.0)), images.float())
    out = augment(images, AugmentConfig(rotation=90.0))
    assert out.shape == images.shape
    assert (out != images).flatten(1).any(1).all()


@pytest.mark.parametrize("size", [(33, 33), (33, 49)])
def test_rotation_turns_images_rigidly_within_the_limit(size):
    h, w = size
    image = torch.zeros(1, 1, h, w)
    image[..., h // 2 + 5:h // 2 + 8, w // 2 + 7:w // 2 + 10] = 255  # a blob 10 px from the centre, at (6, 8)
    out = augment(image.expand(128, -1, -1, -1), AugmentConfig(rotation=30.0, pad_mode="zeros"))[:, 0]
    ys, xs = torch.meshgrid(torch.arange(h) - h // 2, torch.arange(w) - w // 2, indexing="ij")
    mass = out.sum((1, 2))
    cy, cx = (out * ys).sum((1, 2)) / mass, (out * xs).sum((1, 2)) / mass
    torch.testing.assert_close(torch.hypot(cy, cx), torch.full((128,), 10.0), atol=0.25, rtol=0)
    angles = torch.rad2deg(torch.atan2(cy, cx) - math.atan2(6, 8))
    assert angles.abs().max() <= 30.5
    assert angles.min() < -20 and angles.max() > 20


def test_brightness_only_scales_each_image():
    images = pixels((64, 3, 16, 16), low=20, high=251).float()
    out = augment(images, AugmentConfig(brightness=0.2))
    ratio = out / images
    darkest = images.flatten(1).argmin(1, keepdim=True)  # 20 * 1.2 cannot clamp
    factor = ratio.flatten(1).gather(1, darkest).view(-1, 1, 1, 1)
    unclamped = out < 255
    torch.testing.assert_close(ratio[unclamped], factor.expand_as(ratio)[unclamped])
    assert (out[~unclamped] == 255).all() and (images * factor)[~unclamped].min() >= 255 - 1e-3
    assert factor.min() >= 0.8 - 1e-6 and factor.max() <= 1.2 + 1e-6 and factor.std() > 0.05


def _least_squares_factor(out: torch.Tensor, image: torch.Tensor, base: torch.Tensor) -> float:
    """The f with out = base + f * (image - base), the form of every torchvision colour blend."""
    return float(((out - base) * (image - base)).sum() / ((image - base) ** 2).sum())


def _contrast_base(image: torch.Tensor) -> torch.Tensor:
    gray = TF.rgb_to_grayscale(image) if image.size(0) == 3 else image
    return gray.mean().expand_as(image)


COLOUR_OPS = {  # op: (torchvision's op, the image it blends with)
    "brightness": (TF.adjust_brightness, torch.zeros_like),
    "contrast": (TF.adjust_contrast, _contrast_base),
    "saturation": (TF.adjust_saturation, lambda image: TF.rgb_to_grayscale(image).expand_as(image)),
    "sharpness": (TF.adjust_sharpness, lambda image: TF.adjust_sharpness(image, 0.0)),
}


def _recovered_factors(op: str, images: torch.Tensor, out: torch.Tensor) -> list[float]:
    return [_least_squares_factor(augmented, image, COLOUR_OPS[op][1](image)) for image, augmented in zip(images, out)]


@pytest.mark.parametrize("op, channels", [("brightness", 3), ("contrast", 1), ("contrast", 3), ("saturation", 3),
                                          ("sharpness", 1), ("sharpness", 3)])
def test_colour_ops_match_torchvision(op, channels):
    """Recover each image's factor from the output, then ask torchvision for that factor's result."""
    images = pixels((24, channels, 16, 16), low=64, high=193).float() / 255  # mid-range: nothing clamps
    out = augment(images * 255, AugmentConfig(**{op: 0.3})) / 255
    factors = _recovered_factors(op, images, out)
    for image, augmented, factor in zip(images, out, factors):
        torch.testing.assert_close(augmented, COLOUR_OPS[op][0](image, factor), atol=2e-5, rtol=0)
    assert 0.7 - 1e-4 <= min(factors) < 0.85 and 1.15 < max(factors) <= 1.3 + 1e-4


def test_colour_ops_compose_in_order_each_with_its_own_draws():
    """All four together equal torchvision's ops in turn, with the factors each op draws when alone."""
    ops = ("brightness", "contrast", "saturation", "sharpness")
    images = pixels((16, 3, 16, 16), low=80, high=177).float() / 255
    factors = {op: _recovered_factors(op, images, augment(images * 255, AugmentConfig(**{op: 0.15}), 7) / 255)
               for op in ops}
    out = augment(images * 255, AugmentConfig(**dict.fromkeys(ops, 0.15)), 7) / 255
    assert out.max() < 1  # nothing clamped, as torchvision clamps after every op
    for i, (image, augmented) in enumerate(zip(images, out)):
        expected = image
        for op in ops:
            expected = COLOUR_OPS[op][0](expected, factors[op][i])
        torch.testing.assert_close(augmented, expected, atol=5e-5, rtol=0)


def test_saturation_leaves_single_channel_images_alone():
    images = pixels((8, 1, 12, 12))
    assert torch.equal(augment(images, AugmentConfig(saturation=0.5)), images.float())


def test_erasing_zeroes_one_rectangle_of_2_to_33_percent():
    h, w = 28, 28
    out = augment(torch.full((256, 3, h, w), 255, dtype=torch.uint8), AugmentConfig(erasing=1.0))
    assert ((out == 0) | (out == 255)).all()
    zero = out[:, 0] == 0
    assert torch.equal(zero[:, None].expand_as(out), out == 0)  # the same pixels in every channel
    for mask in zero:
        rows, cols = mask.any(1).nonzero()[:, 0], mask.any(0).nonzero()[:, 0]
        box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        assert mask.sum() == box  # one filled rectangle
        assert 0.02 * h * w <= box <= 0.33 * h * w
    areas = zero.flatten(1).float().mean(1)
    assert areas.min() < 0.05 and areas.max() > 0.28  # the whole range is drawn
    half = augment(torch.full((512, 1, h, w), 255.0), AugmentConfig(erasing=0.5))
    assert 0.4 * 512 <= (half == 0).flatten(1).any(1).sum() <= 0.6 * 512


def test_channels_last_input_gives_channels_last_output():
    images = pixels((16, 3, 28, 28))
    out = augment(images.contiguous(memory_format=torch.channels_last), EVERYTHING, 3)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, augment(images, EVERYTHING, 3), atol=1e-3, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_images_with_a_cpu_generator_match_the_cpu():
    images = pixels((32, 3, 28, 28))
    out = augment(images.cuda(), EVERYTHING, 4)
    assert out.is_cuda
    torch.testing.assert_close(out.cpu(), augment(images, EVERYTHING, 4), atol=1e-2, rtol=0)


@pytest.mark.parametrize("spec, expected", [
    ("crop,flip", AugmentConfig(crop_padding=4, flip=True)),
    ("crop=4,flip,rotate=10,jitter=0.2,sharpness=0.3,erase=0.25",
     AugmentConfig(crop_padding=4, flip=True, rotation=10.0, brightness=0.2, contrast=0.2, saturation=0.2,
                   sharpness=0.3, erasing=0.25)),
    (" Crop=2 , pad=zeros ", AugmentConfig(crop_padding=2, pad_mode="zeros")),
    ("jitter=0.4,contrast=0.1", AugmentConfig(brightness=0.4, contrast=0.1, saturation=0.4)),
    ("none", AugmentConfig()),
    ("", AugmentConfig()),
])
def test_spec_parsing_round_trips(spec, expected):
    cfg = AugmentConfig.from_spec(spec)
    assert cfg == expected
    assert AugmentConfig.from_spec(cfg.to_spec()) == cfg
    assert AugmentConfig().to_spec() == "none"


def test_unknown_names_and_bad_values_are_rejected():
    with pytest.raises(ImgclsError) as error:
        AugmentConfig.from_spec("crop,blur")
    message = str(error.value)
    assert "blur" in message and "\n" not in message
    assert all(name in message for name in SPEC_NAMES)
    for spec in ("crop=x", "flip=1", "jitter=2", "rotate=-5", "pad=wrap", "crop=1.5"):
        with pytest.raises(ImgclsError):
            AugmentConfig.from_spec(spec)
    with pytest.raises(ImgclsError, match="reflect padding"):
        augment(pixels((2, 1, 4, 4)), AugmentConfig(crop_padding=4))
