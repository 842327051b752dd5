"""Batched augmentation: every op checked against its definition or torchvision's functional op."""

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF

from imgcls.data.load import DataOptions, from_arrays, load_dataset
from imgcls.errors import ImgclsError
from imgcls.models import create_model
from imgcls.task import MultiLabel, SingleLabel
from imgcls.data.images import crop_frames
from imgcls.training.augment import SPEC_NAMES, AugmentConfig, augment_batch, crop_boxes, mix

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
    ("rrc,randaugment", AugmentConfig(rrc_scale=0.35, policy="randaugment")),
    ("randaugment=3:15,mixup", AugmentConfig(policy="randaugment", policy_ops=3, policy_magnitude=15, mixup=0.2)),
    ("randaugment=3", AugmentConfig(policy="randaugment", policy_ops=3)),
    ("randaugment,trivialaugment,rrc=0.5", AugmentConfig(policy="trivialaugment", rrc_scale=0.5)),
    ("autoaugment,cutmix,mixup=0.4", AugmentConfig(policy="autoaugment", cutmix=1.0, mixup=0.4)),
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
    for spec in ("crop=x", "flip=1", "jitter=2", "rotate=-5", "pad=wrap", "crop=1.5", "rrc=1.5", "randaugment=a:b",
                 "randaugment=2:31", "randaugment=0:9", "trivialaugment=1", "mixup=-1", "cutmix=x"):
        with pytest.raises(ImgclsError):
            AugmentConfig.from_spec(spec)
    with pytest.raises(ImgclsError, match="reflect padding"):
        augment(pixels((2, 1, 4, 4)), AugmentConfig(crop_padding=4))


# -- torchvision's policies and RandomResizedCrop --------------------------------------------------

TORCHVISION_SPECS = ["rrc", "rrc=0.5", "randaugment", "randaugment=3:15", "trivialaugment", "autoaugment"]


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("spec", TORCHVISION_SPECS)
def test_torchvision_ops_are_per_image_reproducible_and_leave_the_global_rng_alone(spec, channels):
    images = pixels((64, channels, 28, 28))
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first, again, other = augment(images, spec, 1), augment(images, spec, 1), augment(images, spec, 2)
    assert torch.equal(torch.get_rng_state(), state)
    assert first.shape == images.shape and first.dtype == torch.float32
    assert torch.equal(first, first.round()) and first.min() >= 0 and first.max() <= 255  # uint8 pixels
    assert torch.equal(first, again) and not torch.equal(first, other)
    changed = (first != images).flatten(1).any(1)
    assert changed.float().mean() > 0.5  # most images change (a policy may draw the identity for some)
    # each image draws its own ops: duplicating one image does not give duplicate outputs
    copies = augment(images[:1].expand(32, -1, -1, -1), spec, 3)
    assert len({tuple(image.flatten().tolist()) for image in copies}) > 8
    assert torch.equal(augment(images.float(), spec, 1), first)  # float pixels are rounded to the same uint8


def test_crop_boxes_are_drawn_as_torchvisions_random_resized_crop_draws_them():
    """rrc draws every box of a batch at once from the batch's generator; their distribution is
    torchvision's RandomResizedCrop's (compared on 20,000 draws each), its centre-crop fallback
    included, and crop_frames resamples a box to the pixel as torchvision's resized_crop does."""
    from torchvision.transforms import v2
    count, size = 20_000, (24, 40)
    ours = crop_boxes(count, size, AugmentConfig(rrc_scale=0.35), torch.Generator().manual_seed(0)).double()
    rrc, image = v2.RandomResizedCrop(size, scale=(0.35, 1.0)), torch.empty(3, *size)
    torch.manual_seed(0)
    theirs = torch.tensor([list(rrc.make_params([image]).values()) for _ in range(count)], dtype=torch.float64)
    for column, name in enumerate(("top", "left", "height", "width")):
        a, b = ours[:, column], theirs[:, column]
        standard_error = (a.var() / count + b.var() / count).sqrt()
        assert abs(a.mean() - b.mean()) < 4 * standard_error, name
        assert abs(a.std() - b.std()) < 0.03 * b.std() + 0.05, name
    assert ((ours[:, 0] + ours[:, 2] <= 24) & (ours[:, 1] + ours[:, 3] <= 40) & (ours >= 0).all(1)).all()
    # a 10 x 40 strip: no box of the whole area and aspect 3/4..4/3 fits, so both take the centre crop
    wide = crop_boxes(50, (10, 40), AugmentConfig(rrc_scale=1.0), torch.Generator().manual_seed(1))
    fallback = v2.RandomResizedCrop((10, 40), scale=(1.0, 1.0)).make_params([torch.empty(1, 10, 40)])
    assert (wide == torch.tensor(list(fallback.values()))).all()
    images = pixels((len(ours[:64]), 3, *size))
    boxes = ours[:64].long()
    expected = torch.stack([TF.resized_crop(image, *box.tolist(), list(size), antialias=True)
                            for image, box in zip(images, boxes)])
    assert torch.equal(crop_frames(images, boxes), expected)


def test_a_batch_cropped_while_decoding_augments_as_the_whole_batch_would():
    """cropped=True: the caller cut the batch's crops (from crop_boxes on the same generator);
    every other op, and mix after it, then draws and does exactly what it would have done."""
    cfg = AugmentConfig.from_spec("rrc,flip,jitter=0.2,erase=0.5")
    images = pixels((16, 3, 20, 20))
    whole = augment_batch(images, cfg, torch.Generator().manual_seed(5))
    boxes = crop_boxes(16, (20, 20), cfg, torch.Generator().manual_seed(5))
    cut = augment_batch(crop_frames(images, boxes), cfg, torch.Generator().manual_seed(5), cropped=True)
    assert torch.equal(whole, cut)


def test_rrc_shows_a_part_of_the_image_at_full_size():
    """A horizontal ramp cropped and resized stays a monotone ramp over a narrower range of values."""
    ramp = torch.linspace(0, 255, 32).round().to(torch.uint8).expand(1, 1, 32, 32)
    out = augment(ramp.expand(64, -1, -1, -1), "rrc=0.35")
    assert torch.equal(out, out[:, :, :1].expand_as(out))  # rows stay equal: only columns are cropped
    rows = out[:, 0, 0]
    assert (rows.diff(dim=1) >= -1).all()  # still increasing (antialiasing may wobble by a level)
    spans = rows[:, -1] - rows[:, 0]
    assert spans.max() <= 255 and spans.min() < 200  # narrower crops than the whole ramp
    # torchvision's aspect range 3/4..4/3 bounds the crop's width at sqrt(4/3 * 1) of the side
    assert spans.min() >= 0.35 ** 0.5 * 0.75 ** 0.5 * 255 - 16


# -- mixup and cutmix --------------------------------------------------------------------------------

def mixed(images, cfg, seed, targets=None, multi_label=False):
    """mix with labels 0..N-1 over N classes, so the soft targets reveal perm and lambda."""
    n = len(images)
    cfg = AugmentConfig.from_spec(cfg) if isinstance(cfg, str) else cfg
    labels = torch.arange(n) if targets is None else targets
    x, y = mix(images, labels, cfg, torch.Generator().manual_seed(seed), multi_label, n)
    return x, y


def perm_and_lam(y):
    """From soft targets of labels 0..N-1: each row's partner and its own weight (lam)."""
    own = y.diagonal()
    partner = torch.where(own < 1, (y - torch.diag(own)).argmax(1), torch.arange(len(y)))
    return partner, own


@pytest.mark.parametrize("seed", range(5))
def test_mixup_blends_images_and_targets_with_one_lambda_and_permutation(seed):
    images = pixels((32, 3, 8, 8)).float()
    x, y = mixed(images, "mixup=0.4", seed)
    perm, own = perm_and_lam(y)
    moved = perm != torch.arange(32)
    lam = own[moved][0].item()  # rows paired with themselves carry 1
    assert 0 < lam < 1 and moved.sum() > 16
    torch.testing.assert_close(own[moved], torch.full((int(moved.sum()),), lam))
    assert sorted(perm.tolist()) == list(range(32))  # a permutation
    one_hot = torch.eye(32)
    torch.testing.assert_close(y, lam * one_hot + (1 - lam) * one_hot[perm])
    torch.testing.assert_close(x, lam * images + (1 - lam) * images[perm])
    # multi-hot targets with the same seed mix with the same lam and permutation
    multi_hot = pixels((32, 5), high=2, seed=seed)
    _, soft = mixed(images, "mixup=0.4", seed, multi_hot, multi_label=True)
    torch.testing.assert_close(soft, lam * multi_hot.float() + (1 - lam) * multi_hot[perm].float())
    assert soft.min() >= 0 and soft.max() <= 1


@pytest.mark.parametrize("seed", range(8))
def test_cutmix_pastes_one_box_and_lambda_is_the_unpasted_fraction(seed):
    n, h, w = 40, 12, 16
    images = torch.arange(1, n + 1, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 2, h, w)  # image i is all i+1
    x, y = mixed(images, "cutmix", seed)
    perm, own = perm_and_lam(y)
    pasted = x != images
    moved = perm != torch.arange(n)
    assert torch.equal(x, torch.where(pasted, images[perm], images))  # pixels come from the image or its partner
    box = pasted[moved][0, 0]
    assert torch.equal(pasted[moved], box.expand(int(moved.sum()), 2, h, w))  # one box for the batch
    rows, cols = box.any(1).nonzero()[:, 0], box.any(0).nonzero()[:, 0]
    if len(rows):
        assert box.sum() == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)  # a rectangle
    torch.testing.assert_close(own[moved], torch.full((int(moved.sum()),), 1 - box.float().mean().item()))


def test_mixup_and_cutmix_together_pick_one_per_batch_about_half_the_time():
    images = pixels((16, 1, 8, 8)).float()
    kinds = []
    for seed in range(200):
        x, _ = mixed(images, "mixup=1,cutmix=1", seed)
        blended = (x != x.round()).any()  # mixup's blends leave whole pixel values
        kinds.append(bool(blended))
    assert 70 <= sum(kinds) <= 130


def test_mixing_is_reproducible_and_leaves_the_global_rng_alone():
    images, cfg = pixels((16, 3, 8, 8)).float(), "mixup,cutmix"
    state = torch.get_rng_state()
    first, again, other = mixed(images, cfg, 1), mixed(images, cfg, 1), mixed(images, cfg, 2)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[1], other[1])
    assert mixed(images, "crop", 1)[1].tolist() == list(range(16))  # no mixing: the labels as they are


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_label_smoothing_on_mixed_targets_matches_torch(smoothing):
    """The loss on mixed targets with smoothing equals torch's cross-entropy on the smoothed one-hot
    targets mixed, and the mix of torch's losses on the two hard labels."""
    n = 12
    logits = torch.randn(n, n, generator=torch.Generator().manual_seed(0))
    _, y = mixed(pixels((n, 1, 4, 4)).float(), "mixup=1", 3)
    perm, own = perm_and_lam(y)
    lam = own[perm != torch.arange(n)][0]
    smoothed = torch.eye(n) * (1 - smoothing) + smoothing / n
    ours = SingleLabel().loss(logits, y, label_smoothing=smoothing)
    torch.testing.assert_close(ours, F.cross_entropy(logits, lam * smoothed + (1 - lam) * smoothed[perm]))
    labels = torch.arange(n)
    torch.testing.assert_close(ours, lam * F.cross_entropy(logits, labels, label_smoothing=smoothing)
                               + (1 - lam) * F.cross_entropy(logits, labels[perm], label_smoothing=smoothing))


def test_correct_counts_the_dominant_label_of_soft_targets():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    assert SingleLabel().correct(logits, torch.tensor([[0.7, 0.3, 0.0], [0.8, 0.2, 0.0]])) == 1.0
    multi = torch.tensor([[1.0, -1.0], [1.0, 1.0]])
    assert MultiLabel().correct(multi, torch.tensor([[0.7, 0.3], [0.6, 0.2]])) == 1.0
    assert MultiLabel().correct(multi, torch.tensor([[1, 0], [1, 1]], dtype=torch.uint8)) == 2.0


def test_training_with_randaugment_and_mixup_learns_single_and_multi_label(quadrants):
    digits = load_dataset("digits")
    params = dict(epochs=4, batch_size=64, bf16="off", hidden="64", augment="randaugment,mixup=0.2,cutmix")
    model = create_model("mlp", **params).fit(digits.train, validation=digits.val)
    assert all(math.isfinite(r["train_loss"]) for r in model.history_)
    assert model.history_[-1]["val_accuracy"] > 0.5  # 10 classes: chance is 0.1
    x, y = quadrants(400)
    splits = from_arrays(x, y, class_names=["a", "b", "c"], options=DataOptions(val_fraction=0.2, test_fraction=0.0))
    multi = create_model("mlp", **{**params, "epochs": 6, "augment": "randaugment,mixup=0.2"}).fit(
        splits.train, validation=splits.val)
    assert multi.task_.multi_label and 0 <= multi.history_[-1]["train_accuracy"] <= 1
    assert multi.history_[-1]["val_mAP"] > 0.7
