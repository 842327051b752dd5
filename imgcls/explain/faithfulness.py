"""Is an explanation faithful? Two measures that need no human judge.

- pointing game (Zhang et al. 2016): the share of images whose map peaks inside the box of the
  object that carries the label. A map that knows nothing hits as often as the box's share of
  the image.
- deletion (Petsiuk et al. 2018): remove the pixels the map ranks highest first, and follow the
  model's probability of the label as more go; a faithful map makes it fall faster than removing
  the same number of pixels in random order. The area under the curve (the mean over the steps)
  summarises it: lower is more faithful.
"""

from __future__ import annotations

import numpy as np
import torch

DELETION_STEPS = tuple(np.round(np.linspace(0, 0.3, 11), 3))   # shares of the pixels removed


def pointing_game(maps, boxes) -> float:
    """Share of maps (N, H, W) whose highest value lies in its box (top, left, height, width)."""
    hits = []
    for heatmap, (top, left, height, width) in zip(maps, boxes):
        row, col = np.unravel_index(np.argmax(heatmap), np.shape(heatmap))
        hits.append(top <= row < top + height and left <= col < left + width)
    return float(np.mean(hits)) if hits else float("nan")


def deletion_curves(model, images, targets, maps=None, *, fill=None, steps=DELETION_STEPS,
                    seed: int = 0) -> np.ndarray:
    """The model's probability of each image's target (N, len(steps)) as the share steps[k] of its
    pixels is replaced by fill (a pixel value per channel; default the images' mean pixel), in the
    order of maps (highest first), or in a seeded random order where maps is None."""
    images = torch.as_tensor(np.asarray(images)).clone()
    n, channels, height, width = images.shape
    if fill is None:
        fill = images.double().mean((0, 2, 3))
    fill = torch.as_tensor(fill, dtype=torch.double).reshape(channels).round().clamp(0, 255).to(torch.uint8)
    generator = np.random.default_rng(seed)
    orders = [np.argsort(-np.asarray(m, dtype=np.float64).ravel(), kind="stable") if maps is not None
              else generator.permutation(height * width) for m in (maps if maps is not None else range(n))]
    curves = np.empty((n, len(steps)))
    rows = np.arange(n)
    for k, share in enumerate(steps):
        count = int(round(share * height * width))
        removed = images.clone()
        for i, order in enumerate(orders):
            r, c = np.unravel_index(order[:count], (height, width))
            removed[i][:, torch.as_tensor(r), torch.as_tensor(c)] = fill[:, None]
        curves[:, k] = np.asarray(model.predict_proba(removed))[rows, targets]
    return curves


def pasted_canvases(objects, labels, n: int, side: int, *, noise: int = 100, seed: int = 0
                    ) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """A pointing-game dataset: n canvases (N, 1, side, side) of uniform noise below `noise`, each
    with one of objects (M, h, w; uint8) pasted at a random place (the brighter of object and noise
    wins), labelled by the object's label. Returns the images, the labels and the boxes
    (top, left, h, w)."""
    objects, labels = np.asarray(objects, dtype=np.uint8), np.asarray(labels)
    rng = np.random.default_rng(seed)
    h, w = objects.shape[1:]
    chosen = rng.integers(0, len(objects), n)
    images = rng.integers(0, noise, (n, 1, side, side)).astype(np.uint8)
    boxes = np.empty((n, 4), dtype=np.int64)
    for k, i in enumerate(chosen):
        top, left = rng.integers(0, side - h + 1), rng.integers(0, side - w + 1)
        region = images[k, 0, top:top + h, left:left + w]
        np.maximum(region, objects[i], out=region)
        boxes[k] = top, left, h, w
    return torch.from_numpy(images), torch.from_numpy(labels[chosen]), boxes
