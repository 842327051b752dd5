"""Image datasets: uint8 images N x C x H x W with their labels and class names. The images are a
tensor in memory, or an ImageFiles (imgcls.data.stream) that decodes rows from their files when
they are read: a streamed dataset.

Labels are class indices (N,) for a single-label dataset, or a multi-hot uint8 matrix (N, C)
for a multi-label one (an image may carry any of the C labels, or none); see imgcls.task.
"""

from __future__ import annotations

import sys
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from imgcls.data.images import Preprocessing
from imgcls.data.stream import ImageFiles
from imgcls.errors import ImgclsError, ImgclsValueError
from imgcls.task import Task, task_of_labels


@dataclass(frozen=True)
class SkippedFile:
    path: str
    reason: str

    def to_dict(self) -> dict:
        return {"path": self.path, "reason": self.reason}


class LabelledRows:
    """What any labelled set of rows (images, or feature vectors) says of its labels: needs
    `labels` (class indices, or a multi-hot matrix) and `class_names`."""

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def task(self) -> Task:
        """SingleLabel or MultiLabel (without thresholds: those belong to a model)."""
        return task_of_labels(self.labels)

    @property
    def multi_label(self) -> bool:
        return self.labels.ndim == 2


@dataclass
class ImageDataset(LabelledRows):
    """Images as one uint8 tensor (N, C, H, W), their labels, and the names of the classes.

    labels: class indices (N,), or a multi-hot matrix (N, number of classes) for multi-label data.
    decoded_with: the Preprocessing that decoded the images from files (None for in-memory
    sources); it travels through subsets and joins to the model that learns from them.
    """

    images: torch.Tensor | ImageFiles
    labels: torch.Tensor
    class_names: list[str]
    paths: list[str] | None = None      # files, relative to the dataset's folder
    ids: list[str] | None = None        # images without files: "<dataset>/<source split>/<position>"
    decoded_with: Preprocessing | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.images, ImageFiles):
            self.images = as_image_tensor(self.images)
        self.labels = as_label_tensor(self.labels, len(self.class_names))
        if len(self.images) != len(self.labels):
            raise ImgclsValueError(f"{len(self.images)} images but {len(self.labels)} labels")

    @classmethod
    def from_arrays(cls, images, labels, class_names: list[str] | None = None) -> ImageDataset:
        """From NumPy arrays or tensors: images (N, H, W), (N, C, H, W) or (N, H, W, C) for C in 1, 3;
        labels class indices (N,) or a multi-hot matrix (N, classes)."""
        labels = np.asarray(labels)
        if class_names is None:
            count = labels.shape[1] if labels.ndim == 2 else (int(labels.max()) + 1 if len(labels) else 0)
            class_names = [str(c) for c in range(count)]
        return cls(images, labels, list(class_names))


    @property
    def streamed(self) -> bool:
        """Whether the images stay in their files, decoded when read (see imgcls.data.stream)."""
        return isinstance(self.images, ImageFiles)

    @property
    def preprocessing(self) -> Preprocessing:
        """How the images were decoded; for in-memory images, their channels and size."""
        if self.decoded_with is not None:
            return self.decoded_with
        return Preprocessing(channels=self.images.shape[1], size=tuple(self.images.shape[2:]))

    def subset(self, indices) -> ImageDataset:
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.int64).reshape(-1)
        pick = (lambda names: [names[i] for i in idx.tolist()] if names is not None else None)
        images = self.images.subset(idx) if self.streamed else self.images[idx]
        return ImageDataset(images, self.labels[idx], self.class_names, pick(self.paths), pick(self.ids),
                            self.decoded_with)

    def class_counts(self) -> dict[str, int]:
        """Images per class; for multi-label data, images carrying each label."""
        if self.multi_label:
            counts = self.labels.sum(0, dtype=torch.int64).tolist()
        else:
            counts = torch.bincount(self.labels, minlength=self.num_classes).tolist()
        return dict(zip(self.class_names, counts))

    def concat(self, other: ImageDataset) -> ImageDataset:
        if other.class_names != self.class_names:
            raise ImgclsError("cannot join datasets with different class names")
        if other.multi_label != self.multi_label:
            raise ImgclsError("cannot join a multi-label dataset with a single-label one")
        join = (lambda a, b: a + b if a is not None and b is not None else None)
        if self.streamed != other.streamed:
            raise ImgclsError("cannot join a streamed dataset with one in memory")
        images = self.images.concat(other.images) if self.streamed else torch.cat([self.images, other.images])
        return ImageDataset(images, torch.cat([self.labels, other.labels]),
                            self.class_names, join(self.paths, other.paths), join(self.ids, other.ids),
                            self.decoded_with if self.decoded_with == other.decoded_with else None)

    def names(self, fallback: str) -> list[str]:
        """What each image is called: its file, its id, or <fallback>/<position> without either."""
        return self.paths or self.ids or [f"{fallback}/{i}" for i in range(len(self))]


@dataclass
class DatasetSplits:
    """A dataset's train, validation and test parts, with the files skipped while loading."""

    name: str
    train: ImageDataset
    test: ImageDataset
    val: ImageDataset | None = None
    skipped: list[SkippedFile] = field(default_factory=list)
    source: str = ""

    @property
    def preprocessing(self) -> Preprocessing | None:
        """How files were decoded (None: in-memory images); every split carries it too."""
        return self.train.decoded_with

    @property
    def class_names(self) -> list[str]:
        return self.train.class_names

    def summary(self) -> dict:
        parts = {"train": self.train, "val": self.val, "test": self.test}
        return {name: len(part) for name, part in parts.items() if part is not None}

    def require_single_label(self, what: str) -> DatasetSplits:
        """self, or a one-line error for a command that handles single-label data only."""
        require_single_label(self.train.multi_label, self.name, what)
        return self


def require_single_label(multi_label: bool, name: str, what: str) -> None:
    if multi_label:
        raise ImgclsError(f"{name} is multi-label; {what} handles single-label data only (one class per image)")


def check_classes(class_names: list[str], labels: np.ndarray, where: str) -> None:
    """One-line errors for datasets no classifier can learn from: fewer than 2 classes (or no label
    at all for multi-label data), or a class (label) without a single image."""
    labels = np.asarray(labels)
    if labels.ndim == 2:
        if not class_names:
            raise ImgclsError(f"{where}: no labels found; a multi-label classifier needs at least 1")
        empty = [name for name, count in zip(class_names, labels.sum(0)) if count == 0]
        if empty:
            raise ImgclsError(f"{where}: label(s) that no training image carries: {', '.join(empty)}")
        return
    if len(class_names) < 2:
        raise ImgclsError(f"{where}: found {len(class_names)} class ({', '.join(class_names) or 'none'}); "
                          "a classifier needs at least 2")
    counts = Counter(labels.tolist())
    empty = [name for i, name in enumerate(class_names) if counts.get(i, 0) == 0]
    if empty:
        raise ImgclsError(f"{where}: class {'folder' if len(empty) == 1 else 'folders'} with no readable "
                          f"images: {', '.join(empty)}")


def as_label_tensor(labels, n_classes: int) -> torch.Tensor:
    """Class indices as int64 (N,), or a multi-hot matrix (N, n_classes) as uint8 0/1; (N, 1) is (N,)."""
    array = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim == 2:
        if array.shape[1] != n_classes:
            raise ImgclsValueError(f"multi-hot labels have {array.shape[1]} columns for {n_classes} classes")
        if array.size and not np.isin(array, (0, 1)).all():
            raise ImgclsValueError("multi-hot labels must be 0 or 1")
        return torch.as_tensor(array.astype(np.uint8))
    if array.ndim > 2:
        raise ImgclsValueError(f"labels must be class indices (N,) or multi-hot (N, classes); got shape {array.shape}")
    if array.size and array.dtype.kind == "f" and not np.all(array == np.round(array)):
        raise ImgclsValueError("class labels must be whole numbers")
    tensor = torch.as_tensor(array.astype(np.int64)).reshape(-1)
    if len(tensor) and (tensor.min() < 0 or tensor.max() >= n_classes):
        raise ImgclsValueError(f"labels must lie in 0..{n_classes - 1} for {n_classes} classes")
    return tensor


class PixelRangeWarning(UserWarning):
    """Images that the pixel rule (as_image_tensor) reads as very dark: most likely on another scale."""


# The brightest value of a batch read below this (a quarter of 0..255) suggests data on another scale.
DARK_LIMIT = 64


def as_image_tensor(images) -> torch.Tensor:
    """Images as a contiguous uint8 tensor (N, C, H, W), from (N, H, W), (N, C, H, W) or (N, H, W, C).

    The pixel rule, for images that are not uint8 already:

    - floats whose largest value is at most 1 are intensities in [0, 1] (the convention of
      torchvision's and scikit-image's float images) and are multiplied by 255;
    - other floats, and integers, are 0..255 pixels;
    - then values are rounded, and anything outside 0..255 (NaN and infinity included) is an
      error: it is not a pixel.

    A PixelRangeWarning says when the brightest value reads below 64 of 255: data on another scale
    (scikit-learn's load_digits().images, floats 0..16) pass as very dark images. kNN and the
    linear model do not mind (they standardise or compare), but decoded image files will be on
    the 0..255 scale; and feature vectors (N, D) of any scale go to knn and linear as they are.
    """
    if not isinstance(images, torch.Tensor):
        images = np.asarray(images)
        images = torch.from_numpy(images if images.flags.writeable and images.flags.c_contiguous
                                  else np.array(images, order="C"))
    t = images
    if t.dtype != torch.uint8:
        t = _pixels(t)
    if t.ndim == 3:
        t = t[:, None]
    if t.ndim != 4:
        raise ImgclsValueError(f"images must have shape (N, H, W), (N, C, H, W) or (N, H, W, C); got {tuple(t.shape)}")
    if t.shape[1] not in (1, 3) and t.shape[-1] in (1, 3):
        t = t.permute(0, 3, 1, 2)
    if t.shape[1] not in (1, 3):
        raise ImgclsValueError(f"images must have 1 or 3 channels; got shape {tuple(t.shape)}")
    return t.contiguous()


def _pixels(values: torch.Tensor) -> torch.Tensor:
    """uint8 pixels from any other dtype, by the pixel rule (see as_image_tensor)."""
    if values.is_complex():
        raise ImgclsValueError("images must be real numbers (uint8 pixels, or floats or integers by the pixel rule)")
    if not values.numel():
        return values.to(torch.uint8)
    t = values.double() if values.is_floating_point() else values.to(torch.int64)
    if t.is_floating_point() and not torch.isfinite(t).all():
        raise ImgclsValueError("images contain NaN or infinite values")
    low, high = t.min().item(), t.max().item()
    unit = t.is_floating_point() and high <= 1
    t = (t * 255).round() if unit else t.round() if t.is_floating_point() else t
    if t.min() < 0 or t.max() > 255:
        raise ImgclsValueError(f"image values range {low:g}..{high:g}: not pixels. The pixel rule reads floats "
                               "up to 1 as intensities in [0, 1] and other values as 0..255 pixels; rescale "
                               "them, or give knn or linear feature vectors (N, D) instead: X.reshape(len(X), -1)")
    brightest = int(t.max())
    if 0 < brightest < DARK_LIMIT:
        scale = "intensities in [0, 1], times 255" if unit else "0..255 pixels"
        warnings.warn(f"image values range {low:g}..{high:g}, read as {scale} by the pixel rule: the brightest "
                      f"is {brightest} of 255. If they are on another scale, rescale them to [0, 1] or 0..255 "
                      "(knn and linear also take feature vectors (N, D) of any scale)", PixelRangeWarning,
                      stacklevel=_outside_imgcls())
    return t.to(torch.uint8)


def _outside_imgcls() -> int:
    """The stacklevel of the first caller outside imgcls, so a warning names the user's own line."""
    package = str(Path(__file__).parents[1])
    frame, level = sys._getframe(1), 1
    # "<string>": the __init__ that dataclasses generate, such as ImageDataset's
    while frame is not None and (frame.f_code.co_filename.startswith(package) or
                                 frame.f_code.co_filename == "<string>"):
        frame, level = frame.f_back, level + 1
    return level


def relative_name(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)
