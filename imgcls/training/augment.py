"""Batched augmentation for in-memory image batches: random parameters drawn once, applied to the whole batch.

Follows airbench: the batch stays a tensor on its device and every op handles all images at once, so a
batch costs a handful of kernel launches however large it is. Each image gets its own parameters (shift,
flip, angle, factors, rectangle), drawn as one (N, 13) tensor from the caller's generator, so a training
run is reproducible and resumable from (seed, epoch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from imgcls.errors import ImgclsError

PAD_MODES = ("reflect", "zeros")
SPEC_NAMES = ("none", "crop", "flip", "rotate", "jitter", "brightness", "contrast", "saturation", "sharpness",
              "erase", "pad")
# What a bare name in a spec means; crop=4 is the usual padding for 28-32 px images.
SPEC_DEFAULTS = {"crop": 4, "rotate": 15.0, "jitter": 0.4, "brightness": 0.4, "contrast": 0.4, "saturation": 0.4,
                 "sharpness": 0.5, "erase": 0.5}
_FIELDS = {"crop": "crop_padding", "rotate": "rotation", "erase": "erasing", "pad": "pad_mode"}
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
    rotation: maximum angle in degrees; each image turns by a uniform angle in [-rotation, rotation].
    brightness, contrast, saturation: colour jitter, factors uniform in [1 - x, 1 + x]; saturation
        only touches 3-channel images.
    sharpness: factor uniform in [1 - x, 1 + x], blending with a blurred copy like torchvision's
        adjust_sharpness (> 1 sharpens, < 1 blurs).
    erasing: probability of erasing one rectangle per image (2%-33% of its area, aspect 0.3-3.3),
        filled with 0, i.e. black in the 0..255 pixel space (not the dataset mean).
    """

    crop_padding: int = 0
    pad_mode: str = "reflect"
    flip: bool = False
    rotation: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    sharpness: float = 0.0
    erasing: float = 0.0

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

    @property
    def is_identity(self) -> bool:
        """True when no augmentation is on (pad_mode alone changes nothing)."""
        return not (self.crop_padding or self.flip or self.rotation or any(getattr(self, n) for n in _UNIT_FIELDS))

    @classmethod
    def from_spec(cls, spec: str) -> AugmentConfig:
        """Parse a comma list such as "crop,flip" or "crop=4,flip,rotate=10,jitter=0.2,erase=0.25".

        Bare names take SPEC_DEFAULTS; jitter=x sets brightness, contrast and saturation to x;
        pad=zeros switches the padding mode; "none" or "" is no augmentation. Later items win.
        """
        values: dict[str, object] = {}
        for item in filter(None, (part.strip() for part in spec.split(","))):
            name, has_value, text = (s.strip() for s in item.partition("="))
            name = name.lower()
            if name not in SPEC_NAMES:
                raise ImgclsError(f"unknown augmentation {name!r} in {spec!r}; valid names: {', '.join(SPEC_NAMES)}")
            if name in ("none", "flip") and has_value:
                raise ImgclsError(f"augmentation {name!r} takes no value, got {item!r}")
            if name == "flip":
                values["flip"] = True
            elif name == "pad":
                values["pad_mode"] = text
            elif name != "none":
                value = _parse_number(name, text) if has_value else SPEC_DEFAULTS[name]
                fields = ("brightness", "contrast", "saturation") if name == "jitter" else (_FIELDS.get(name, name),)
                values.update(dict.fromkeys(fields, value))
        return cls(**values)

    def to_spec(self) -> str:
        """The spec string `from_spec` turns back into this config, for writing into run configs."""
        items: dict[str, object] = {"crop": self.crop_padding, "flip": self.flip, "rotate": self.rotation}
        if self.brightness == self.contrast == self.saturation:
            items["jitter"] = self.brightness
        else:
            items.update(brightness=self.brightness, contrast=self.contrast, saturation=self.saturation)
        items.update(sharpness=self.sharpness, erase=self.erasing)
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


def _format_number(value: object) -> str:
    text = repr(value)
    return text[:-2] if text.endswith(".0") else text  # "rotate=10", not "rotate=10.0"


def augment_batch(images: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Augment a batch (N, C, H, W) of uint8 or float pixels in 0..255; returns float32 in 0..255, same shape.

    The input is converted to float32 once and never modified; an identity config returns that
    conversion as is (the input itself when it is already float32). Random parameters are drawn on
    the generator's device and moved to images.device in one small copy, so a CPU generator serves
    CUDA images too and gives the same draws on any device (a CUDA generator also works). Op order:
    crop, flip, rotation, brightness, contrast, saturation, sharpness, erasing; each reads its own
    columns of one (N, 13) draw, so turning an op on or off leaves the others' draws as they were.
    The result is clamped once at the end. A channels_last input gives a channels_last output.
    """
    if images.dim() != 4:
        raise ImgclsError(f"augment_batch expects a batch shaped (N, C, H, W), got shape {tuple(images.shape)}")
    x = images.to(torch.float32)
    if cfg.is_identity or len(x) == 0:
        return x
    u = torch.rand(len(x), _DRAWS, generator=generator, device=generator.device).to(x.device)
    shift, flip, angle, bright, contrast, saturation, sharp, erase = u[:, :2], *u[:, 2:8].unbind(1), u[:, 8:]
    if cfg.crop_padding or cfg.flip:
        x = _shift_flip(x, shift, flip if cfg.flip else None, cfg.crop_padding, cfg.pad_mode)
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
    x = x.clamp(0, 255)  # out of place: with only a no-op enabled, x may still be the caller's tensor
    return x.contiguous(memory_format=torch.channels_last) if _is_channels_last(images) else x


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
    """Shift each image by its own (dy, dx) in [-pad, pad] and mirror the chosen ones, in one gather.

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
        cols = torch.where(flip[:, None] < 0.5, cols.flip(1), cols)
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
