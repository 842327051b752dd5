"""In-memory image datasets: uint8 tensors N x C x H x W with their labels and class names."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from imgcls.data.images import Preprocessing
from imgcls.errors import ImgclsError


@dataclass(frozen=True)
class SkippedFile:
    path: str
    reason: str

    def to_dict(self) -> dict:
        return {"path": self.path, "reason": self.reason}


@dataclass
class ImageDataset:
    """Images as one uint8 tensor (N, C, H, W), integer labels, and the names of the classes."""

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    paths: list[str] | None = None      # files, relative to the dataset's folder
    ids: list[str] | None = None        # images without files: "<dataset>/<source split>/<position>"

    def __post_init__(self) -> None:
        self.images = as_image_tensor(self.images)
        self.labels = torch.as_tensor(np.asarray(self.labels), dtype=torch.int64).reshape(-1)
        if len(self.images) != len(self.labels):
            raise ImgclsError(f"{len(self.images)} images but {len(self.labels)} labels")
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= len(self.class_names)):
            raise ImgclsError(f"labels must lie in 0..{len(self.class_names) - 1} for {len(self.class_names)} classes")

    @classmethod
    def from_arrays(cls, images, labels, class_names: list[str] | None = None) -> ImageDataset:
        """From NumPy arrays or tensors: images (N, H, W), (N, C, H, W) or (N, H, W, C) for C in 1, 3."""
        labels = np.asarray(labels)
        if class_names is None:
            class_names = [str(c) for c in range(int(labels.max()) + 1)] if len(labels) else []
        return cls(images, labels, list(class_names))

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def preprocessing(self) -> Preprocessing:
        return Preprocessing(channels=self.images.shape[1], size=tuple(self.images.shape[2:]))

    def subset(self, indices) -> ImageDataset:
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.int64).reshape(-1)
        pick = (lambda names: [names[i] for i in idx.tolist()] if names is not None else None)
        return ImageDataset(self.images[idx], self.labels[idx], self.class_names, pick(self.paths), pick(self.ids))

    def class_counts(self) -> dict[str, int]:
        counts = torch.bincount(self.labels, minlength=self.num_classes).tolist()
        return dict(zip(self.class_names, counts))

    def concat(self, other: ImageDataset) -> ImageDataset:
        if other.class_names != self.class_names:
            raise ImgclsError("cannot join datasets with different class names")
        join = (lambda a, b: a + b if a is not None and b is not None else None)
        return ImageDataset(torch.cat([self.images, other.images]), torch.cat([self.labels, other.labels]),
                            self.class_names, join(self.paths, other.paths), join(self.ids, other.ids))

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
    preprocessing: Preprocessing | None = None    # how files were decoded (None: in-memory images)

    @property
    def class_names(self) -> list[str]:
        return self.train.class_names

    def summary(self) -> dict:
        parts = {"train": self.train, "val": self.val, "test": self.test}
        return {name: len(part) for name, part in parts.items() if part is not None}


def check_classes(class_names: list[str], labels: np.ndarray, where: str) -> None:
    """One-line errors for datasets no classifier can learn from."""
    if len(class_names) < 2:
        raise ImgclsError(f"{where}: found {len(class_names)} class ({', '.join(class_names) or 'none'}); "
                          "a classifier needs at least 2")
    counts = Counter(np.asarray(labels).tolist())
    empty = [name for i, name in enumerate(class_names) if counts.get(i, 0) == 0]
    if empty:
        raise ImgclsError(f"{where}: class {'folder' if len(empty) == 1 else 'folders'} with no readable "
                          f"images: {', '.join(empty)}")


def as_image_tensor(images) -> torch.Tensor:
    """Images as a contiguous uint8 tensor (N, C, H, W), from (N, H, W), (N, C, H, W) or (N, H, W, C)."""
    if not isinstance(images, torch.Tensor):
        images = np.asarray(images)
        images = torch.from_numpy(images if images.flags.writeable and images.flags.c_contiguous
                                  else np.array(images, order="C"))
    t = images
    if t.dtype != torch.uint8:
        if t.is_floating_point() and t.numel() and t.max() <= 1.0:
            t = (t * 255).round()
        t = t.clamp(0, 255).to(torch.uint8)
    if t.ndim == 3:
        t = t[:, None]
    if t.ndim != 4:
        raise ImgclsError(f"images must have shape (N, H, W), (N, C, H, W) or (N, H, W, C); got {tuple(t.shape)}")
    if t.shape[1] not in (1, 3) and t.shape[-1] in (1, 3):
        t = t.permute(0, 3, 1, 2)
    if t.shape[1] not in (1, 3):
        raise ImgclsError(f"images must have 1 or 3 channels; got shape {tuple(t.shape)}")
    return t.contiguous()


def relative_name(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)
