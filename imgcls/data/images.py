"""Decoding image files into uint8 arrays, the same way for training, prediction and serving.

Every odd file is normalised here and nowhere else:
EXIF orientation is applied; palette, CMYK, 16-bit, grayscale+alpha and RGBA images are
converted to the dataset's channel mode (transparent pixels are composited onto white);
and images of another size are brought to the target size by the resize policy.

A JPEG much larger than its target is decoded at a reduced scale (Preprocessing.decode "draft"):
libjpeg's DCT scaling gives 1/2, 1/4 or 1/8 of the pixels for a fraction of the work (PIL's
draft()), at the smallest scale that still has at least the pixels the output needs, and that is
resized once. "full" decodes every pixel first, as imgcls always did (models saved before the
choice existed decode so). A random resized crop for training can be taken here too
(decode_image's crop): the crop's box is resampled straight from the file's pixels, so a
streamed training image is decoded and resampled once.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from imgcls.errors import ImgclsError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")

# Decompression bombs: refuse images with more pixels than this (PIL's own default, made an error).
MAX_PIXELS = 89_478_485
Image.MAX_IMAGE_PIXELS = MAX_PIXELS

RESIZE_POLICIES = {
    "crop": "keep the aspect ratio, resize the short side to the target, centre-crop the rest",
    "pad": "keep the aspect ratio, resize the long side to the target, pad the rest with black",
    "stretch": "resize both sides to the target, distorting the aspect ratio",
}
INTERPOLATIONS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}
DECODES = {
    "draft": "JPEGs decode at the smallest DCT scale (1/8, 1/4, 1/2, whole) that still has the pixels the "
             "target needs, then resize once (faster for photos over twice the target size)",
    "full": "every pixel is decoded, then resized (exact; how models saved before this choice decode)",
}
DRAFT_SCALES = (8, 4, 2)            # the reductions PIL's JPEG draft mode offers

# A region of a model input: (top, left, height, width) in its pixels, as decoded whole.
CropBox = tuple[int, int, int, int]
_GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


@dataclass(frozen=True)
class Preprocessing:
    """How a file becomes a model input: channel count, size (height, width) and resize policy.

    crop_pct < 1 (with the crop policy) takes the centre crop covering that share of the image
    before resizing, as ImageNet evaluation does (0.875 for 224 px: resize 256, crop 224).
    decode: "draft" (JPEGs decoded at a reduced DCT scale where they are large enough) or
    "full" (see DECODES); a saved model without it decodes "full", as it was trained.
    """

    channels: int
    size: tuple[int, int]
    resize: str = "crop"
    crop_pct: float = 1.0
    interpolation: str = "bilinear"
    decode: str = "draft"

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise ImgclsError(f"channels must be 1 or 3, not {self.channels}")
        if self.resize not in RESIZE_POLICIES:
            raise ImgclsError(f"unknown resize policy {self.resize!r}; valid: {', '.join(RESIZE_POLICIES)}")
        if self.interpolation not in INTERPOLATIONS:
            raise ImgclsError(f"unknown interpolation {self.interpolation!r}; valid: {', '.join(INTERPOLATIONS)}")
        if not 0 < self.crop_pct <= 1:
            raise ImgclsError(f"crop_pct must lie in (0, 1], not {self.crop_pct}")
        if self.decode not in DECODES:
            raise ImgclsError(f"unknown decode {self.decode!r}; valid: {', '.join(DECODES)}")
        object.__setattr__(self, "size", (int(self.size[0]), int(self.size[1])))

    def to_dict(self) -> dict:
        return {**asdict(self), "size": list(self.size)}

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessing:
        return cls(channels=int(d["channels"]), size=tuple(d["size"]), resize=d.get("resize", "crop"),
                   crop_pct=float(d.get("crop_pct", 1.0)), interpolation=d.get("interpolation", "bilinear"),
                   decode=d.get("decode", "full"))


class Member(Protocol):
    """Where an image's bytes lie other than a file of its own: a member of a tar shard, say
    (imgcls.data.shards). stat() is its container's, so a changed container counts as a changed file."""

    def read_bytes(self) -> bytes: ...   # OSError where they can no longer be read
    def stat(self) -> os.stat_result: ...


ImageSource = Path | str | bytes | Member


class UnreadableImage(Exception):
    """A file that is not a readable image; carries the reason for the skipped-files report."""


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def probe_image(path: Path | str) -> tuple[int, int, bool]:
    """Height, width (after EXIF rotation) and whether the image is grayscale, from the header only."""
    try:
        with Image.open(path) as img:
            _check_pixels(img)
            width, height = img.size
            if _exif_rotates(img):
                width, height = height, width
            return height, width, img.mode in _GRAY_MODES
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
        raise UnreadableImage(_reason(exc)) from exc


def decode_image(source: ImageSource, prep: Preprocessing, crop: CropBox | None = None) -> np.ndarray:
    """Decode one file (or its bytes, or a member of an archive) into a uint8 array of shape
    (channels, height, width).

    crop: a region of the image as decoded without it (top, left, height, width, in the pixels of
    prep.size) to resample to prep.size instead: a random resized crop, taken from the file's own
    pixels in one resample (with the pad policy, from the decoded image, by crop_frames).
    A JPEG that fails to decode at a reduced scale is decoded whole before it counts as unreadable."""
    try:
        return _decode(source, prep, crop, draft=prep.decode == "draft")
    except _DraftFailed:
        return _decode(source, prep, crop, draft=False)


class _DraftFailed(Exception):
    """Decoding at a reduced DCT scale failed: try the whole image."""


def _decode(source: ImageSource, prep: Preprocessing, crop: CropBox | None, draft: bool) -> np.ndarray:
    gray = prep.channels == 1
    scale, drafted = 1, False
    try:
        with Image.open(_opened(source)) as img:
            _check_pixels(img)
            region = _source_region(_upright_size(img), prep, crop) if draft or crop else None
            if draft and img.format == "JPEG":
                scale, drafted = _draft(img, prep, region, gray)
            img.load()
            img = ImageOps.exif_transpose(img)
            img = _to_mode(img, "L" if gray else "RGB")
            img = _resize(img, prep) if region is None or (scale == 1 and crop is None) else \
                _resize_region(img, prep, region, scale)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        if drafted:
            raise _DraftFailed from exc
        raise UnreadableImage(_reason(exc)) from exc
    array = np.asarray(img, dtype=np.uint8)
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    if crop is not None and prep.resize == "pad":
        # The padded frame has no source pixels to crop from: crop the decoded frame, as in memory.
        return crop_frames(torch.from_numpy(np.ascontiguousarray(array))[None], [crop])[0].numpy()
    return array


def _upright_size(img: Image.Image) -> tuple[int, int]:
    """(width, height) after EXIF rotation."""
    return (img.height, img.width) if _exif_rotates(img) else img.size


def _source_region(size: tuple[int, int], prep: Preprocessing, crop: CropBox | None
                   ) -> tuple[float, float, float, float] | None:
    """The region (left, top, right, bottom) of an upright image of size (width, height) that the
    output is resampled from: the model input's box (input_box), or the crop's part of it. None
    for the pad policy, whose box reaches beyond the image (pad resizes the whole image)."""
    if prep.resize == "pad":
        return None
    left, top, right, bottom = input_box(*size, prep)
    if crop is None:
        return left, top, right, bottom
    out_h, out_w = prep.size
    sx, sy = (right - left) / out_w, (bottom - top) / out_h
    y, x, h, w = crop
    return left + x * sx, top + y * sy, left + (x + w) * sx, top + (y + h) * sy


def _draft(img: Image.Image, prep: Preprocessing, region, gray: bool) -> tuple[int, bool]:
    """Ask the JPEG decoder for the largest DCT reduction that keeps at least the output's pixels
    over the region read (the whole image for pad); returns it (1: none) and whether the decoder
    was asked for anything (a reduction, or luma only for a grayscale output)."""
    out_h, out_w = prep.size
    if region is None:      # pad: the whole image fits inside the output
        width, height = _upright_size(img)
        factor = max(width / out_w, height / out_h)
    else:
        factor = min((region[2] - region[0]) / out_w, (region[3] - region[1]) / out_h)
    scale = next((s for s in DRAFT_SCALES if s <= factor), 1)
    if scale == 1 and not (gray and img.mode == "RGB"):
        return 1, False
    # PIL picks the largest reduction s with s <= min(width // w, height // h); asking for
    # (width // scale, height // scale) makes that exactly `scale` (for images over 16 px).
    mode = "L" if gray and img.mode == "RGB" else None     # grayscale straight from the JPEG's luma
    width = img.width
    chosen = img.draft(mode, (max(width // scale, 1), max(img.height // scale, 1)))
    return (round(width / chosen[1][2]) if chosen else 1), chosen is not None


def _resize_region(img: Image.Image, prep: Preprocessing, region, scale: int) -> Image.Image:
    """The region (in full-scale pixels) of img (decoded at 1/scale) resampled to the output size."""
    box = [min(max(v / scale, 0.0), limit) for v, limit in zip(region, (img.width, img.height) * 2)]
    height, width = prep.size
    return img.resize((width, height), INTERPOLATIONS[prep.interpolation], box=tuple(box), reducing_gap=3.0)


def crop_frames(images: torch.Tensor, boxes) -> torch.Tensor:
    """Random resized crops of decoded images (N, C, H, W) uint8: each image's box (top, left,
    height, width) resampled back to (H, W), bilinear with antialiasing (what torchvision's
    resized_crop computes, to the pixel). The one way an image already decoded is cropped: in
    memory by the trainer's augmentation, and streamed from the decoded cache's rows."""
    size = tuple(images.shape[2:])
    out = torch.empty_like(images)
    for i, (top, left, height, width) in enumerate(torch.as_tensor(boxes).reshape(-1, 4).tolist()):
        part = images[i:i + 1, :, top:top + height, left:left + width]
        if part.device.type == "cpu":      # uint8 in, uint8 out: the CPU has the exact uint8 kernel
            out[i] = F.interpolate(part, size=size, mode="bilinear", antialias=True, align_corners=False)[0]
        else:
            resized = F.interpolate(part.float(), size=size, mode="bilinear", antialias=True, align_corners=False)
            out[i] = resized[0].round().clamp(0, 255).to(images.dtype)
    return out


def decode_many(paths: Sequence[ImageSource], prep: Preprocessing, progress=None,
                crops: Sequence[CropBox | None] | None = None) -> tuple[np.ndarray, list[int], list[tuple[Path, str]]]:
    """Decode files in parallel threads (PIL releases the GIL while decoding), each with its crop
    where crops are given (see decode_image).

    Returns the stacked images (N, C, H, W), the indices of the files that decoded, and
    (path, reason) for each file that did not.
    """
    out = np.empty((len(paths), prep.channels, *prep.size), dtype=np.uint8)
    ok, bad = [], []

    def work(i: int):
        try:
            out[i] = decode_image(paths[i], prep, crops[i] if crops is not None else None)
            return i, None
        except UnreadableImage as exc:
            return i, str(exc)

    with ThreadPoolExecutor(max_workers=4) as pool:
        for i, reason in pool.map(work, range(len(paths)), chunksize=64):
            (ok.append(i) if reason is None else bad.append((paths[i], reason)))
            if progress is not None:
                progress()
    return out[ok], ok, bad


def _opened(source: ImageSource):
    """What PIL opens: a path as it is (read lazily), bytes or a member's bytes (read whole) as a stream."""
    if isinstance(source, (str, Path)):
        return source
    return io.BytesIO(source if isinstance(source, bytes) else source.read_bytes())


def _check_pixels(img: Image.Image) -> None:
    # PIL only warns between the limit and twice the limit. An explicit check, not a warnings filter:
    # warnings.catch_warnings changes process-wide state, and decode_many runs in threads.
    if Image.MAX_IMAGE_PIXELS and img.width * img.height > Image.MAX_IMAGE_PIXELS:
        raise Image.DecompressionBombError(f"{img.width * img.height} pixels")


def _to_mode(img: Image.Image, mode: str) -> Image.Image:
    if img.mode.startswith("I;16") or img.mode == "I":
        # 16-bit grayscale: keep the top 8 bits (PIL's convert would clip at 255 instead). Only 32-bit
        # "I" leaves the depth unknown; a dark 16-bit image must stay dark, so I;16 always shifts.
        array = np.asarray(img, dtype=np.uint32)
        sixteen_bit = img.mode.startswith("I;16") or array.max() > 255
        img = Image.fromarray((array >> 8 if sixteen_bit else array).clip(0, 255).astype(np.uint8))
    elif img.mode == "F":
        array = np.asarray(img, dtype=np.float32)
        scale = 255.0 if array.max() <= 1.0 else 1.0
        img = Image.fromarray((array * scale).clip(0, 255).astype(np.uint8))
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "La", "RGBa", "PA"):
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img.convert("RGBA"))
    return img if img.mode == mode else img.convert(mode)


def _resize(img: Image.Image, prep: Preprocessing) -> Image.Image:
    height, width = prep.size
    method = INTERPOLATIONS[prep.interpolation]
    if img.size == (width, height) and prep.crop_pct == 1:
        return img
    if prep.resize == "stretch":
        return img.resize((width, height), method, reducing_gap=3.0)
    if prep.resize == "pad":
        return ImageOps.pad(img, (width, height), method, color=0)
    if prep.crop_pct == 1:
        return ImageOps.fit(img, (width, height), method)
    # The centred box of the target's aspect ratio, shrunk to crop_pct, resized in one step.
    scale = min(img.width / width, img.height / height) * prep.crop_pct
    box_w, box_h = width * scale, height * scale
    left, top = (img.width - box_w) / 2, (img.height - box_h) / 2
    return img.resize((width, height), method, box=(left, top, left + box_w, top + box_h), reducing_gap=3.0)


def input_box(width: int, height: int, prep: Preprocessing) -> tuple[float, float, float, float]:
    """The region (left, top, right, bottom), in the pixels of a width x height image (after EXIF
    rotation), that the model input decoded from it covers: the centre crop for `crop`, a box
    larger than the image (the padding) for `pad`, the whole image for `stretch`. Lets a map at
    the model's input resolution be laid back over the original photo."""
    out_h, out_w = prep.size
    if prep.resize == "stretch" or (width, height) == (out_w, out_h) and prep.crop_pct == 1:
        return 0.0, 0.0, float(width), float(height)
    if prep.resize == "pad":
        scale = max(width / out_w, height / out_h)
    else:
        scale = min(width / out_w, height / out_h) * prep.crop_pct
    box_w, box_h = out_w * scale, out_h * scale
    left, top = (width - box_w) / 2, (height - box_h) / 2
    return left, top, left + box_w, top + box_h


def _exif_rotates(img: Image.Image) -> bool:
    try:
        return img.getexif().get(0x0112, 1) in (5, 6, 7, 8)
    except Exception:  # a broken EXIF block must not make a readable image unreadable
        return False


def _reason(exc: BaseException) -> str:
    if isinstance(exc, Image.DecompressionBombError):
        return f"too many pixels (limit {Image.MAX_IMAGE_PIXELS:,})"
    if isinstance(exc, UnidentifiedImageError):
        return "not an image file"
    text = str(exc).split("\n")[0] or type(exc).__name__
    return "truncated or corrupt image" if "truncated" in text.lower() else text
