"""What every visual shares: reading one image, writing the numbers beside the figure, matplotlib off-screen."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from imgcls.data.images import Preprocessing, UnreadableImage, decode_image, probe_image
from imgcls.errors import ImgclsError


def pyplot():
    """matplotlib's pyplot on the Agg backend (no display needed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def read_image(path: str | Path, prep: Preprocessing | None = None, channels: int | None = None,
               max_side: int | None = None) -> np.ndarray:
    """One image file as uint8 (C, H, W): decoded with prep (a model's own decoding) when given,
    else at its own size (brought down to max_side on its long side, aspect kept) with channels
    1 or 3 (default: as the file is, grayscale or colour)."""
    path = Path(path)
    if not path.is_file():
        raise ImgclsError(f"{path}: no such image file")
    try:
        if prep is None:
            height, width, gray = probe_image(path)
            scale = min(1.0, max_side / max(height, width)) if max_side else 1.0
            size = (max(1, round(height * scale)), max(1, round(width * scale)))
            prep = Preprocessing(channels=channels or (1 if gray else 3), size=size, resize="stretch")
        return decode_image(path, prep).copy()      # writable, so torch can take it as it is
    except UnreadableImage as exc:
        raise ImgclsError(f"{path}: not a readable image ({exc})") from None


def display(image: np.ndarray) -> np.ndarray:
    """(C, H, W) -> what imshow takes: (H, W) for one channel, (H, W, 3) for three."""
    return image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)


def write_numbers(out: Path, name: str, numbers: dict) -> Path:
    """numbers as out/<name>.json (indented), the figure's companion."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps(numbers, indent=2))
    return path


def finish_figure(fig, out: Path, name: str) -> Path:
    """Save fig as out/<name>.png and close it."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.png"
    fig.savefig(path)
    pyplot().close(fig)
    return path
