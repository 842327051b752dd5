"""A handful of small photos that ship with imgcls (public domain or CC0; see samples/README.txt):
what `imgcls export` checks an export against its original model on when no data is given."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from imgcls.data.images import Preprocessing, decode_image

SAMPLES_DIR = Path(__file__).parent / "samples"


def sample_paths() -> list[Path]:
    """The sample photos, in name order."""
    return sorted(SAMPLES_DIR.glob("*.jpg"))


def sample_images(prep: Preprocessing) -> torch.Tensor:
    """The sample photos decoded as a model with preprocessing `prep` decodes files: uint8 N x C x H x W."""
    return torch.from_numpy(np.stack([decode_image(path, prep) for path in sample_paths()]))
