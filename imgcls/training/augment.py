"""Batched augmentation for in-memory image batches: random parameters drawn once, applied to the whole batch.

Follows airbench: the batch stays a tensor on its device and every op handles all images at once, so a
batch costs a handful of kernel launches however large it is. Each image gets its own parameters (shift,
flip, angle, factors, rectangle), drawn as one (N, 13) tensor from the caller's generator, so a training
run is reproducible and resumable from (seed, epoch).

`rrc` (RandomResizedCrop back to the same size) draws its boxes first, from the caller's generator, by
torchvision's rule (`crop_boxes`), and resamples them with torchvision's resized_crop; drawing them
first lets the workers that decode a streamed batch draw the same boxes ahead and crop while decoding
(imgcls.data.stream), so the trainer takes the batch as it comes (augment_batch's `cropped`).
Stronger policies come from torchvision's transforms v2 on uint8 pixels: `randaugment`,
`trivialaugment` and `autoaugment`. They run image by image, so each image gets its own ops, inside
`torch.random.fork_rng` seeded from the caller's generator: the draws replay from (seed, epoch) and
torch's global RNG is left as it was. That loop is the price. Measured
on 2 CPU threads, a batch of 128 28x28 images (1 channel / 3 channels) costs: crop,flip 0.2 / 1.5 ms;
rrc 6 / 6 ms; trivialaugment 7 / 9 ms; autoaugment 9 / 11 ms; randaugment=2:9 13 / 17 ms; rrc with
randaugment 22 / 26 ms; mixup or cutmix 0.1-0.3 ms. Groups of 8 images sharing their ops would be about
5x faster but less varied, so every image gets its own.

`mixup` and `cutmix` mix images and labels across the batch (`mix`); the targets become soft (class
probabilities, or multi-hot rows mixed into [0, 1]), which both tasks' losses accept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from imgcls.data.images import crop_frames
from imgcls.errors import ImgclsError

PAD_MODES = ("reflect", "zeros")
POLICIES = ("none", "randaugment", "trivialaugment", "autoaugment")
SPEC_NAMES = ("none", "crop", "flip", "rotate", "jitter", "brightness", "contrast", "saturation", "sharpness",
              "erase", "pad", "rrc", "randaugment", "trivialaugment", "autoaugment", "mixup", "cutmix")
# What a bare name in a spec means; crop=4 is the usual padding for 28-32 px images, and rrc keeps at
# least 35% of the area (torchvision's 8% leaves too little of a 28 px image). mixup=0.2 and cutmix=1.0
# are the alphas of the MixUp and CutMix papers' ImageNet runs.
SPEC_DEFAULTS = {"crop": 4, "rotate": 15.0, "jitter": 0.4, "brightness": 0.4, "contrast": 0.4, "saturation": 0.4,
                 "sharpness": 0.5, "erase": 0.5, "rrc": 0.35, "mixup": 0.2, "cutmix": 1.0}
RANDAUGMENT_DEFAULT = (2, 9)  # num_ops, magnitude (of 0..30), torchvision's defaults
_FIELDS = {"crop": "crop_padding", "rotate": "rotation", "erase": "erasing", "pad": "pad_mode", "rrc": "rrc_scale"}
_UNIT_FIELDS = ("brightness", "contrast", "saturation", "sharpness", "erasing")
_GRAY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights, so colour ops match its functional ops
_ERASE_AREA = (0.02, 0.33)  # torchvision RandomErasing's defaults: fraction of the image, then aspect ratio
_ERASE_ASPECT = (0.3, 3.3)
_DRAWS = 13  # uniforms per image, in a fixed layout so enabling one op never changes another op's draws


@dataclass(frozen=True)
class AugmentConfig:
    """Which augmentations `augment_batch` applies; all off by default.

    crop_padding: random translation by up to this many pixels (random crop of the padded image).
    pad_mode: "reflect" or "zeros": what fills pixels shifted or rotated in from outside the image.
    flip: random horizontal flip with probability 1/2.
    alternating_flip: with flip, the trainer flips each image in every other epoch instead (a
        random half of the images in even epochs, the other half in odd ones: airbench's
        alternating flip, so consecutive epochs see both sides); see `augment_batch`'s flips.
    rotation: maximum angle in degrees; each image turns by a uniform angle in [-rotation, rotation].
    brightness, contrast, saturation: colour jitter, factors uniform in [1 - x, 1 + x]; saturation
        only touches 3-channel images.
    sharpness: factor uniform in [1 - x, 1 + x], blending with a blurred copy like torchvision's
        adjust_sharpness (> 1 sharpens, < 1 blurs).
    erasing: probability of erasing one rectangle per image (2%-33% of its area, aspect 0.3-3.3),
        filled with 0, i.e. black in the 0..255 pixel space (not the dataset mean).
    rrc_scale: RandomResizedCrop's minimum area fraction (0 is off): a crop of rrc_scale..100% of the
        area, aspect 3/4..4/3, resized back to the image's size.
    policy: "none", "randaugment", "trivialaugment" or "autoaugment" (ImageNet policy), torchvision's.
    policy_ops, policy_magnitude: RandAugment's number of ops per image and magnitude (0..30).
    mixup, cutmix: Beta(alpha, alpha) parameters of batch-level MixUp and CutMix (0 is off), applied
        by `mix`; with both on, each batch uses one of them, chosen with probability 1/2.
    """

    crop_padding: int = 0
    pad_mode: str = "reflect"
    flip: bool = False
    alternating_flip: bool = False
    rotation: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    sharpness: float = 0.0
    erasing: float = 0.0
    rrc_scale: float = 0.0
    policy: str = "none"
    policy_ops: int = RANDAUGMENT_DEFAULT[0]
    policy_magnitude: int = RANDAUGMENT_DEFAULT[1]
    mixup: float = 0.0
    cutmix: float = 0.0

    def __post_init__(self) -> None:
        if self.pad_mode not in PAD_MODES:
            raise ImgclsError(f"pad_mode must be one of {', '.join(PAD_MODES)}, got {self.pad_mode!r}")
        if not isinstance(self.crop_padding, int) or self.crop_padding < 0:
            raise ImgclsError(f"crop padding must be a whole number >= 0, got {self.crop_padding!r}")
        if not 0 <= self.rotation <= 180:
            raise ImgclsError(f"rotation must be between 0 and 180 degrees, got {self.rotation!r}")
        for name in _UNIT_FIELDS:
            if not 0 <= getattr(self, name) <= 1:
                raise ImgclsError(f"{name} must be between 0 and 1, got {getattr(self, name)!r}")
        if not 0 <= self.rrc_scale <= 1:
            raise ImgclsError(f"rrc scale must be between 0 and 1, got {self.rrc_scale!r}")
        if self.policy not in POLICIES:
            raise ImgclsError(f"policy must be one of {', '.join(POLICIES)}, got {self.policy!r}")
        if not (isinstance(self.policy_ops, int) and self.policy_ops >= 1
                and isinstance(self.policy_magnitude, int) and 0 <= self.policy_magnitude <= 30):
            raise ImgclsError(f"randaugment needs num_ops >= 1 and a magnitude of 0..30, "
                              f"got {self.policy_ops!r}:{self.policy_magnitude!r}")
        for name in ("mixup", "cutmix"):
            if not getattr(self, name) >= 0:
                raise ImgclsError(f"{name} alpha must be >= 0, got {getattr(self, name)!r}")

    @property
    def changes_images(self) -> bool:
        """True when `augment_batch` changes images (pad_mode alone changes nothing)."""
        return bool(self.crop_padding or self.flip or self.rotation or any(getattr(self, n) for n in _UNIT_FIELDS)
                    or self.rrc_scale or self.policy != "none")

    @property
    def mixes(self) -> bool:
        """True when `mix` mixes images and targets across the batch."""
        return bool(self.mixup or self.cutmix)

    @property
    def is_identity(self) -> bool:
        """True when no augmentation is on."""
        return not (self.changes_images or self.mixes)

    @classmethod
    def from_spec(cls, spec: str) -> AugmentConfig:
        """Parse a comma list such as "crop,flip" or "crop=4,flip,rotate=10,jitter=0.2,erase=0.25".

        Bare names take SPEC_DEFAULTS; jitter=x sets brightness, contrast and saturation to x;
        flip=alternate flips every other epoch (see alternating_flip);
        pad=zeros switches the padding mode; randaugment=2:9 sets its num_ops:magnitude; one policy
        at a time (randaugment, trivialaugment, autoaugment); "none" or "" is no augmentation.
        Later items win.
        """
        values: dict[str, object] = {}
        for item in filter(None, (part.strip() for part in spec.split(","))):
            name, has_value, text = (s.strip() for s in item.partition("="))
            name = name.lower()
            if name not in SPEC_NAMES:
                raise ImgclsError(f"unknown augmentation {name!r} in {spec!r}; valid names: {', '.join(SPEC_NAMES)}")
            if name in ("none", "trivialaugment", "autoaugment") and has_value:
                raise ImgclsError(f"augmentation {name!r} takes no value, got {item!r}")
            if name == "flip":
                if has_value and text != "alternate":
                    raise ImgclsError(f"flip takes no value, or flip=alternate, got {item!r}")
                values.update(flip=True, alternating_flip=bool(has_value))
            elif name in POLICIES[1:]:
                ops, magnitude = _parse_randaugment(text) if has_value else RANDAUGMENT_DEFAULT
                values.update(policy=name, policy_ops=ops, policy_magnitude=magnitude)
            elif name == "pad":
                values["pad_mode"] = text
            elif name != "none":
                value = _parse_number(name, text) if has_value else SPEC_DEFAULTS[name]
                fields = ("brightness", "contrast", "saturation") if name == "jitter" else (_FIELDS.get(name, name),)
                values.update(dict.fromkeys(fields, value))
        return cls(**values)

    def to_spec(self) -> str:
        """The spec string `from_spec` turns back into this config, for writing into run configs."""
        flip = "alternate" if self.flip and self.alternating_flip else self.flip
        items: dict[str, object] = {"crop": self.crop_padding, "flip": flip, "rotate": self.rotation}
        if self.brightness == self.contrast == self.saturation:
            items["jitter"] = self.brightness
        else:
            items.update(brightness=self.brightness, contrast=self.contrast, saturation=self.saturation)
        items.update(sharpness=self.sharpness, erase=self.erasing, rrc=self.rrc_scale)
        if self.policy != "none":
            custom = (self.policy_ops, self.policy_magnitude) != RANDAUGMENT_DEFAULT and self.policy == "randaugment"
            items[self.policy] = f"{self.policy_ops}:{self.policy_magnitude}" if custom else True
        items.update(mixup=self.mixup, cutmix=self.cutmix)
        parts = [name if value is True else f"{name}={_format_number(value)}" for name, value in items.items() if value]
        if self.pad_mode != "reflect":
            parts.append(f"pad={self.pad_mode}")
        return ",".join(parts) or "none"


def _parse_number(name: str, text: str) -> int | float:
    try:
        return int(text) if name == "crop" else float(text)
    except ValueError:
        kind = "a whole number" if name == "crop" else "a number"
        raise ImgclsError(f"augmentation {name!r} needs {kind}, got {text!r}") from None


def _parse_randaugment(text: str) -> tuple[int, int]:
    ops, _, magnitude = text.partition(":")
    try:
        return int(ops), int(magnitude) if magnitude else RANDAUGMENT_DEFAULT[1]
    except ValueError:
        raise ImgclsError(f"randaugment takes NUM_OPS:MAGNITUDE in whole numbers, e.g. 2:9, got {text!r}") from None


def _format_number(value: object) -> str:
    if isinstance(value, str):
        return value
    text = repr(value)
    return text[:-2] if text.endswith(".0") else text  # "rotate=10", not "rotate=10.0"


def crop_boxes(count: int, size: tuple[int, int], cfg: AugmentConfig, generator: torch.Generator
               ) -> torch.Tensor | None:
    """The random resized crops of a batch of `count` images of size (height, width): (count, 4)
    int64 rows (top, left, height, width), or None when cfg has no rrc. torchvision's
    RandomResizedCrop rule (rrc_scale..100% of the area, aspect 3/4..4/3, ten tries, then the
    centre crop of the nearest allowed aspect), drawn for all images at once from one seed taken
    from generator: the first draw augment_batch makes, so a batch's crops can be drawn ahead,
    from the batch's own generator, by whoever decodes its images."""
    if not cfg.rrc_scale:
        return None
    height, width = int(size[0]), int(size[1])
    draws = torch.rand(count, 10, 4, generator=torch.Generator().manual_seed(_seed(generator)), dtype=torch.float64)
    area = height * width * (cfg.rrc_scale + (1 - cfg.rrc_scale) * draws[..., 0])
    aspect = torch.exp(math.log(3 / 4) + math.log(16 / 9) * draws[..., 1])
    w, h = (area * aspect).sqrt().round(), (area / aspect).sqrt().round()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.to(torch.uint8).argmax(1, keepdim=True)            # the first try that fits
    pick = (lambda t: t.gather(1, first)[:, 0])
    h, w = pick(h), pick(w)
    top, left = (pick(draws[..., 2]) * (height - h + 1)).floor(), (pick(draws[..., 3]) * (width - w + 1)).floor()
    boxes = torch.stack([top, left, h, w], 1).long()
    if not fits.any(1).all():                       # none of the ten fit: torchvision's centre crop
        ratio = width / height
        ch, cw = ((round(width * 4 / 3), width) if ratio < 3 / 4 else
                  (height, round(height * 4 / 3)) if ratio > 4 / 3 else (height, width))
        boxes[~fits.any(1)] = torch.tensor([(height - ch) // 2, (width - cw) // 2, ch, cw])
    return boxes


def augment_batch(images: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator,
                  cropped: bool = False, flips: torch.Tensor | None = None) -> torch.Tensor:
    """Augment a batch (N, C, H, W) of uint8 or float pixels in 0..255; returns float32 in 0..255, same shape.

    flips (N,) bool, where given, says which images cfg.flip mirrors instead of a random draw (the
    trainer's alternating flip).

    The input is converted to float32 once and never modified; an identity config returns that
    conversion as is (the input itself when it is already float32). Random parameters are drawn on
    the generator's device and moved to images.device in one small copy, so a CPU generator serves
    CUDA images too and gives the same draws on any device (a CUDA generator also works). Op order:
    rrc and the policy (torchvision's, on uint8 pixels: a float input is rounded first), then crop,
    flip, rotation, brightness, contrast, saturation, sharpness, erasing. rrc's boxes are drawn
    first (crop_boxes: one seed), then each of the others reads its own columns of one (N, 13)
    draw, and the policy draws from one seed taken after it, so turning an op on or off leaves the
    others' draws as they were. cropped: the images are this batch's rrc crops already (cut while
    decoding, from boxes drawn by crop_boxes on a generator in the same state): the boxes are drawn,
    so the later draws match, but not applied. The result is clamped once at the end where an op
    could leave 0..255 (brightness, contrast, saturation, sharpness). A channels_last input gives a
    channels_last output. Mixing is separate: see `mix`.
    """
    if images.dim() != 4:
        raise ImgclsError(f"augment_batch expects a batch shaped (N, C, H, W), got shape {tuple(images.shape)}")
    if not cfg.changes_images or len(images) == 0:
        return images.to(torch.float32)
    boxes = crop_boxes(len(images), images.shape[2:], cfg, generator)
    u = torch.rand(len(images), _DRAWS, generator=generator, device=generator.device).to(images.device)
    x = images
    if boxes is not None and not cropped:
        x = crop_frames(_uint8(x), boxes)
    if cfg.policy != "none":
        x = _policy(_uint8(x), cfg, _seed(generator))
    shift, flip, angle, bright, contrast, saturation, sharp, erase = u[:, :2], *u[:, 2:8].unbind(1), u[:, 8:]
    if cfg.crop_padding or cfg.flip:
        # A gather moves pixels without changing them: on uint8, before the float conversion, it
        # moves a quarter of the bytes (4x faster on a batch of 224 px photos).
        mirrored = (flip < 0.5 if flips is None else flips.to(x.device)) if cfg.flip else None
        x = _shift_flip(x, shift, mirrored, cfg.crop_padding, cfg.pad_mode)
    x = x.to(torch.float32)
    if cfg.rotation:
        x = _rotate(x, (2 * angle - 1) * cfg.rotation, cfg.pad_mode)
    if cfg.brightness or cfg.contrast:
        x = _brightness_contrast(x, bright, contrast, cfg.brightness, cfg.contrast)
    if cfg.saturation and x.size(1) == 3:
        x = torch.lerp(_gray(x), x, _factors(saturation, cfg.saturation))
    if cfg.sharpness:
        x = _sharpen(x, _factors(sharp, cfg.sharpness))
    if cfg.erasing:
        x = _erase(x, erase, cfg.erasing)
    if cfg.brightness or cfg.contrast or cfg.saturation or cfg.sharpness:   # the ops that can leave 0..255
        x = x.clamp(0, 255)  # out of place: with only a no-op enabled, x may still be the caller's tensor
    return x.contiguous(memory_format=torch.channels_last) if _is_channels_last(images) else x


def _seed(generator: torch.Generator) -> int:
    return int(torch.randint(2**62, (1,), generator=generator, device=generator.device))


def _uint8(images: torch.Tensor) -> torch.Tensor:
    return images if images.dtype == torch.uint8 else images.round().clamp(0, 255).to(torch.uint8)


def _policy(pixels: torch.Tensor, cfg: AugmentConfig, seed: int) -> torch.Tensor:
    """The policy, image by image (each its own ops), on uint8, drawing from a fork of the global RNG
    seeded with seed: torchvision draws from the global RNG, which is left untouched."""
    from torchvision.transforms import v2       # here: importing torchvision costs a training run ~150 MB
    transform = {"randaugment": lambda: v2.RandAugment(cfg.policy_ops, cfg.policy_magnitude),
                 "trivialaugment": v2.TrivialAugmentWide, "autoaugment": v2.AutoAugment}[cfg.policy]()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torch.stack([transform(image) for image in pixels])


def mix(images: torch.Tensor, targets: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator,
        multi_label: bool, n_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """MixUp or CutMix a batch: (images, soft targets) with targets lam * y + (1 - lam) * y[perm].

    targets are class indices (N,), made one-hot over n_classes, or multi-hot rows (N, C) when
    multi_label. Returns the inputs (targets as they are) when cfg mixes nothing. One permutation and
    one lam ~ Beta(alpha, alpha) per batch, as in timm; with both on, mixup or cutmix with probability
    1/2. CutMix pastes one box of area (1 - lam) of the image, clipped at the borders, from the
    permuted batch into every image and sets lam to 1 minus the pasted fraction. All draws come from
    one seed taken from generator. Label smoothing is left to the loss: it is linear in the targets,
    so smoothing the mixed targets equals mixing the smoothed ones. (With class weights, torch's
    cross-entropy on soft targets does not divide by the batch's total weight as it does for indices,
    so the loss's scale differs from training on hard labels.)
    """
    if not cfg.mixes or len(images) == 0:
        return images, targets
    rng = np.random.default_rng(_seed(generator))
    use_cutmix = cfg.cutmix and (not cfg.mixup or rng.random() < 0.5)
    lam = float(rng.beta(cfg.cutmix, cfg.cutmix) if use_cutmix else rng.beta(cfg.mixup, cfg.mixup))
    perm = torch.from_numpy(rng.permutation(len(images))).to(images.device)
    y = targets.float() if multi_label else F.one_hot(targets.long(), n_classes).float()
    if use_cutmix:
        h, w = images.shape[2:]
        cut_h, cut_w = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
        cy, cx = int(rng.integers(h)), int(rng.integers(w))
        top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, h)
        left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, w)
        images = images.clone()
        images[:, :, top:bottom, left:right] = images[perm][:, :, top:bottom, left:right]
        lam = 1 - (bottom - top) * (right - left) / (h * w)
    else:
        images = torch.lerp(images[perm], images, lam)
    return images, torch.lerp(y[perm], y, lam)


def _is_channels_last(images: torch.Tensor) -> bool:
    return images.is_contiguous(memory_format=torch.channels_last) and not images.is_contiguous()


def _factors(u: torch.Tensor, amount: float) -> torch.Tensor:
    """Per-image factors uniform in [1 - amount, 1 + amount], shaped to broadcast over (C, H, W)."""
    return (1 + amount * (2 * u - 1)).view(-1, 1, 1, 1)


def _brightness_contrast(x: torch.Tensor, u_brightness: torch.Tensor, u_contrast: torch.Tensor,
                         brightness: float, contrast: float) -> torch.Tensor:
    """Scale by a brightness factor, then blend with the image's mean luminance by a contrast factor.

    Luminance is linear, so both together are one affine map per image, applied in a single pass.
    """
    b, c = _factors(u_brightness, brightness), _factors(u_contrast, contrast)
    mean = _gray(x).mean((1, 2, 3), keepdim=True) if contrast else 0.0
    return torch.addcmul((1 - c) * b * mean, x, c * b)


def _gray(x: torch.Tensor) -> torch.Tensor:
    """Luminance (N, 1, H, W); single-channel images are their own luminance."""
    if x.size(1) != 3:
        return x.mean(1, keepdim=True)
    return (x * x.new_tensor(_GRAY).view(1, 3, 1, 1)).sum(1, keepdim=True)


def _shift_flip(x: torch.Tensor, shift: torch.Tensor, flip: torch.Tensor | None, pad: int, mode: str) -> torch.Tensor:
    """Shift each image by its own (dy, dx) in [-pad, pad] and mirror those where flip (bool) is set, in one gather.

    A random crop of the padded image is such a shift; folding the flip into the column index saves a
    pass over the batch, and reflect mode maps outside pixels to their sources instead of padding.
    """
    n, c, h, w = x.shape
    if mode == "reflect" and pad >= min(h, w):
        raise ImgclsError(f"reflect padding needs crop padding < image size, got {pad} for {h}x{w} images")
    dy, dx = ((shift * (2 * pad + 1)).long().clamp_(max=2 * pad) - pad).unbind(1)  # u < 1, but rounding can hit 1
    rows = dy[:, None] + torch.arange(h, device=x.device)
    cols = torch.arange(w, device=x.device).expand(n, w)
    if flip is not None:
        cols = torch.where(flip[:, None], cols.flip(1), cols)
    cols = dx[:, None] + cols
    if mode == "reflect":
        rows, cols = _reflect(rows, h), _reflect(cols, w)
    else:
        x, rows, cols = F.pad(x, (pad,) * 4), rows + pad, cols + pad
    # Index into the whole flattened batch: index_select with int32 indices is the fastest CPU gather.
    dtype = torch.int32 if x.numel() < 2**31 else torch.int64
    src_h, src_w = x.shape[2:]
    first = torch.arange(0, x.numel(), src_h * src_w, device=x.device, dtype=dtype).view(n, c, 1, 1)
    index = first + (rows.to(dtype) * src_w)[:, None, :, None] + cols.to(dtype)[:, None, None, :]
    return x.reshape(-1).index_select(0, index.view(-1)).view(n, c, h, w)


def _reflect(position: torch.Tensor, size: int) -> torch.Tensor:
    """Map positions in [-size + 1, 2 * size - 2] into the image by mirroring at the edge pixels, like F.pad reflect."""
    position = position.abs()
    return torch.where(position >= size, 2 * (size - 1) - position, position)


def _rotate(x: torch.Tensor, degrees: torch.Tensor, mode: str) -> torch.Tensor:
    """Rotate each image about its centre by its own angle (bilinear)."""
    n, _, h, w = x.shape
    radians = torch.deg2rad(degrees).view(n, 1, 1)
    cos, sin = radians.cos(), radians.sin()
    # Pixel centres in grid_sample's [-1, 1] coordinates. Built here rather than by affine_grid, whose
    # batched matmul costs more than the sampling itself on the CPU; stacking on dim 1 and permuting
    # (grid_sample takes the strided view) is faster than stacking on the last dim.
    xs = torch.linspace(1 / w - 1, 1 - 1 / w, w, device=x.device)
    ys = torch.linspace(1 / h - 1, 1 - 1 / h, h, device=x.device).view(h, 1)
    # The h / w factors keep non-square images turning rigidly instead of shearing.
    grid = torch.stack([cos * xs - sin * (h / w) * ys, sin * (w / h) * xs + cos * ys], dim=1).permute(0, 2, 3, 1)
    padding = "reflection" if mode == "reflect" else "zeros"
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding, align_corners=False)


def _sharpen(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """torchvision's adjust_sharpness with a factor per image, as one grouped convolution.

    torchvision blends each image with a blur (kernel [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13) of its
    interior, border pixels kept. The blend is linear, so each image gets its own blended 3x3 kernel
    and one group per (image, channel) applies them all; this also runs several times faster on the CPU
    than groups=channels.
    """
    n, c, h, w = x.shape
    if h < 3 or w < 3:
        return x
    blur = x.new_tensor([[1, 1, 1], [1, 5, 1], [1, 1, 1]]) / 13
    identity = x.new_tensor([[0, 0, 0], [0, 1, 0], [0, 0, 0]])
    kernels = torch.lerp(blur, identity, factor.view(n, 1, 1)).repeat_interleave(c, 0).unsqueeze(1)
    out = x.clone()
    out[:, :, 1:-1, 1:-1] = F.conv2d(x.reshape(1, n * c, h, w), kernels, groups=n * c).view(n, c, h - 2, w - 2)
    return out


def _erase(x: torch.Tensor, u: torch.Tensor, probability: float) -> torch.Tensor:
    """Zero one rectangle in each chosen image, the rectangle being an outer product of row and column ranges.

    Unlike torchvision, which redraws a rectangle that does not fit, sides are clamped to the image and
    the other side adjusted, so the area stays within 2%-33% for roughly square images.
    """
    h, w = x.shape[2:]
    chosen, area, aspect, top, left = u.unbind(1)
    lo, hi = (f * h * w for f in _ERASE_AREA)
    area = lo + (hi - lo) * area
    aspect = torch.exp(math.log(_ERASE_ASPECT[0]) + math.log(_ERASE_ASPECT[1] / _ERASE_ASPECT[0]) * aspect)
    rect_h = (area * aspect).sqrt().round().clamp(1, h)
    rect_w = (area / rect_h).round().clamp(torch.ceil(lo / rect_h), torch.floor(hi / rect_h)).clamp(1, w)
    top = (top * (h - rect_h + 1)).floor()
    left = (left * (w - rect_w + 1)).floor()
    rows = torch.arange(h, device=x.device, dtype=x.dtype)
    cols = torch.arange(w, device=x.device, dtype=x.dtype)
    in_rows = (rows >= top[:, None]) & (rows < (top + rect_h)[:, None])
    in_cols = (cols >= left[:, None]) & (cols < (left + rect_w)[:, None]) & (chosen < probability)[:, None]
    # Multiplying by a float mask is about twice as fast on the CPU as masked_fill with a broadcast bool mask.
    return x * (1 - in_rows[:, :, None].to(x.dtype) * in_cols[:, None, :].to(x.dtype)).unsqueeze(1)
