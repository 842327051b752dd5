"""The check that follows every export: the exported file, run by its own runtime, against the
original model on the same images: top-1 agreement and the largest difference in any class's
probability (max |Δp|).

Exports are fp32, so the original runs in fp32 too: a network whose PyTorch predictions take bf16
by measurement (imgcls.runtime) would otherwise show bf16's rounding, not the export's.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch

from imgcls.data.dataset import DatasetSplits
from imgcls.data.samples import SAMPLES_DIR, sample_images
from imgcls.errors import ImgclsError

CHECK_IMAGES = 200


@dataclass(frozen=True)
class Parity:
    images: int               # how many images were compared
    source: str               # what they were: "5 sample photos", "200 validation images of digits"
    agreement: float          # share of images whose top-1 label is the same
    max_abs_diff: float       # max |p_export - p_original| over images and classes

    def summary(self) -> str:
        agreed = round(self.agreement * self.images)
        return (f"parity with the original (PyTorch, fp32) on {self.source}: "
                f"top-1 agreement {self.agreement:.1%} ({agreed}/{self.images}), max |Δp| {self.max_abs_diff:.2e}")

    def to_dict(self) -> dict:
        return {"images": self.images, "source": self.source, "top1_agreement": self.agreement,
                "max_abs_diff": self.max_abs_diff}


def parity(original, exported, images: torch.Tensor, source: str) -> Parity:
    """Compare exported with original on uint8 images N x C x H x W (decoded as the model decodes)."""
    if not len(images):
        raise ImgclsError(f"no images to check the export on ({source})")
    expected = np.asarray(_in_fp32(original).predict_proba(images), dtype=np.float64)
    got = np.asarray(exported.predict_proba(images), dtype=np.float64)
    agreement = float((expected.argmax(1) == got.argmax(1)).mean())
    return Parity(len(images), source, agreement, float(np.abs(got - expected).max()))


def _in_fp32(model):
    """model, predicting in fp32 (a shallow copy: the weights are shared)."""
    if not model.capabilities.network or model.bf16 == "off":
        return model
    reference = copy.copy(model)
    reference.bf16 = "off"
    return reference


def check_images(model, splits: DatasetSplits | None = None, count: int = CHECK_IMAGES) -> tuple[torch.Tensor, str]:
    """What an export is checked on: up to `count` of splits' validation images (its test images if
    it has no validation split), chosen at random with a fixed seed; without splits, the sample
    photos that ship with imgcls. Images must be decoded with the model's preprocessing."""
    if splits is None:
        images = sample_images(model.preprocessing_)
        return images, f"{len(images)} sample photos ({SAMPLES_DIR.name}/ in the imgcls package)"
    part, name = (splits.val, "validation") if splits.val is not None and len(splits.val) else (splits.test, "test")
    images = part.images
    if len(images) > count:
        images = images[torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:count]]
    return images, f"{len(images)} {name} images of {splits.name}"
