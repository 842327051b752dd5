"""`imgcls show distances`: pixel distances say little about what an image shows.

As in the course's figure, three copies of one image lie at the same L2 distance from it in pixel
space: one with a box over its centre, one shifted by a few pixels, one tinted. The shift fixes
the distance D; the box and the tint are blends whose strength is solved for exactly, so their L2
distances equal D up to float rounding:

- boxed: a centred square of the smallest side that can reach D is blended towards black (or white,
  for a dark image) by the fraction that makes the distance D;
- tinted: the whole image is blended towards a colour (orange; white for grayscale) by the fraction
  that makes the distance D.

The copies stay float64 (rounding them to uint8 would move each distance by up to half a level per
pixel). A pretrained network's embeddings of the same four images (EfficientNet-Lite0 by default,
offline) are then compared: there the three distances differ, by what each change does to the content.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from imgcls.errors import ImgclsError
from imgcls.visuals.common import display, finish_figure, pyplot, read_image, write_numbers

COPIES = ("boxed", "shifted", "tinted")
TINT = (255.0, 150.0, 0.0)      # orange


def shifted_copy(image: np.ndarray, shift: int) -> np.ndarray:
    """image moved right and down by shift pixels, the uncovered border repeating the edge pixels."""
    _, height, width = image.shape
    return np.pad(image, ((0, 0), (shift, 0), (shift, 0)), mode="edge")[:, :height, :width]


def tinted_copy(image: np.ndarray, distance: float) -> np.ndarray:
    """image blended towards the tint colour so that its L2 distance from image is `distance`."""
    colour = np.array(TINT if len(image) == 3 else (255.0,)).reshape(-1, 1, 1) * np.ones_like(image)
    full = np.linalg.norm(colour - image)
    if full < distance:
        raise ImgclsError("this image is too close to the tint colour to tint it by the shift's distance; "
                          "use a smaller --shift")
    return image + (distance / full) * (colour - image)


def boxed_copy(image: np.ndarray, distance: float) -> tuple[np.ndarray, int]:
    """image with a centred square blended towards black (white when the image is dark), the square
    the smallest that can reach `distance` and the blend the fraction that gives exactly that; also
    returns the square's side."""
    fill = 0.0 if image.mean() > 127.5 else 255.0
    _, height, width = image.shape
    for side in range(1, min(height, width) + 1):
        top, left = (height - side) // 2, (width - side) // 2
        box = image[:, top:top + side, left:left + side]
        full = np.linalg.norm(fill - box)
        if full >= distance:
            boxed = image.copy()
            boxed[:, top:top + side, left:left + side] = box + (distance / full) * (fill - box)
            return boxed, side
    raise ImgclsError("no box over this image reaches the shift's distance; use a smaller --shift")


def pixel_distances(copy: np.ndarray, image: np.ndarray) -> dict[str, float]:
    difference = (copy - image).ravel()
    return {"l1": float(np.abs(difference).sum()), "l2": float(np.sqrt(difference @ difference))}


def show_distances(model, image_path: str | Path, out: str | Path, shift: int | None = None) -> dict:
    """distances.png (the original and its three copies, with their distances), distances.json and
    distances.npz (the four float64 images and their embeddings) in out; returns the JSON's content."""
    if not model.capabilities.embedding:
        raise ImgclsError(f"{model.model_name} is not a network: it has no embedding to compare in")
    image = read_image(image_path, prep=model.preprocessing_).astype(np.float64)
    side = min(image.shape[1:])
    shift = shift if shift is not None else max(1, side // 32)
    if not 1 <= shift < side:
        raise ImgclsError(f"--shift must lie in 1..{side - 1} pixels for this {side}-pixel image")
    moved = shifted_copy(image, shift)
    distance = pixel_distances(moved, image)["l2"]
    if distance == 0:
        raise ImgclsError(f"{image_path}: the image is flat, so shifting it changes nothing")
    boxed, box_side = boxed_copy(image, distance)
    images = {"original": image, "boxed": boxed, "shifted": moved, "tinted": tinted_copy(image, distance)}
    batch = torch.from_numpy(np.stack(list(images.values()))).float()
    embeddings = model.run_network(batch, forward=model.net_.embed).double().numpy()
    rows = {name: {**pixel_distances(images[name], image), **_embedding_distances(embeddings[i], embeddings[0])}
            for i, name in enumerate(images) if name != "original"}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out / "distances.npz", **images, embeddings=embeddings)
    l2 = [rows[name]["l2"] for name in COPIES]
    emb = [rows[name]["embedding_l2"] for name in COPIES]
    numbers = {"image": str(image_path), "model": model.model_name, "image_shape": list(image.shape),
               "shift_pixels": shift, "box_side": box_side, "pixel_values": "0..255, float64, not rounded",
               "copies": rows, "pixel_l2_spread": (max(l2) - min(l2)) / max(l2),
               "embedding_l2_spread": (max(emb) - min(emb)) / max(emb),
               "embedding": f"{model.model_name}'s pre-logit features ({embeddings.shape[1]} numbers)",
               "arrays": "distances.npz"}
    numbers["figure"] = str(_plot(images, rows, numbers, out))
    write_numbers(out, "distances", numbers)
    return numbers


def _embedding_distances(embedding: np.ndarray, original: np.ndarray) -> dict[str, float]:
    cosine = float(embedding @ original / (np.linalg.norm(embedding) * np.linalg.norm(original)))
    return {"embedding_l2": float(np.linalg.norm(embedding - original)), "embedding_cosine_distance": 1 - cosine}


def _plot(images: dict[str, np.ndarray], rows: dict, numbers: dict, out: Path) -> Path:
    plt = pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(12, 3.9), dpi=100)
    for ax, (name, image) in zip(axes, images.items()):
        ax.imshow(display(np.clip(image, 0, 255) / 255), cmap="gray", vmin=0, vmax=1)
        ax.axis("off")
        if name == "original":
            ax.set_title("original", fontsize=9)
            continue
        row = rows[name]
        ax.set_title(f"{name}\npixels: L2 {row['l2']:,.0f}, L1 {row['l1']:,.0f}\n"
                     f"embedding: L2 {row['embedding_l2']:.2f}, cosine {row['embedding_cosine_distance']:.3f}",
                     fontsize=8)
    fig.suptitle(f"Equal L2 distances in pixel space (shift {numbers['shift_pixels']} px, box "
                 f"{numbers['box_side']} px), unequal in {numbers['model']}'s embedding", fontsize=9)
    fig.tight_layout()
    return finish_figure(fig, out, "distances")
