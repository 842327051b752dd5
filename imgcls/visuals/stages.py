"""`imgcls show activations` and `imgcls show top-images`: what a network's stages respond to.

A network's stages are its feature maps at each resolution (`feature_stages()` of the classifier
contract: timm's own feature_info, or for imgcls networks the last map of each size). A unit is one
channel of a stage; its response to an image is the channel's largest value anywhere in the map
(so a pattern counts wherever it appears). The strongest units of a stage are those with the
highest mean response over the dataset; for each, the images that drive it hardest are kept while
the data streams past in batches, so memory holds one batch and a few numbers per unit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from imgcls.data.dataset import ImageDataset
from imgcls.errors import ImgclsError
from imgcls.visuals.common import display, finish_figure, pyplot, read_image, write_numbers

RESPONSE = "the unit's largest value anywhere in its feature map"


def stages_of(model) -> list[str]:
    """The model's stages, or a one-line error for a model without feature maps."""
    stages = model.feature_stages()
    if not stages:
        raise ImgclsError(f"{model.model_name} has no convolutional stages (no feature maps) to show")
    return stages


def check_layer(model, layer: str | None) -> str:
    """The stage to look at: layer, or by default the last one; an unknown name lists the valid ones."""
    stages = stages_of(model)
    if layer is None:
        return stages[-1]
    if layer not in stages:
        raise ImgclsError(f"{model.model_name} has no stage {layer!r}; valid: {', '.join(stages)}")
    return layer


def show_activations(model, image_path: str | Path, out: str | Path, per_stage: int = 8) -> dict:
    """activations.png (the image, then per stage its per_stage most active channels), activations.json
    and activations.npz (every stage's full map, float32 (C, h, w)) in out; returns the JSON's content."""
    stages = stages_of(model)
    image = read_image(image_path, prep=model.preprocessing_)
    maps = {name: m[0].numpy() for name, m in model.feature_maps(torch.from_numpy(image)[None], stages).items()}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out / "activations.npz", **maps)
    rows = []
    for name, fmap in maps.items():
        means = fmap.mean(axis=(1, 2))
        chosen = np.argsort(-means, kind="stable")[:per_stage]
        rows.append({"stage": name, "shape": list(fmap.shape), "channels_shown": chosen.tolist(),
                     "means": [float(means[c]) for c in chosen], "maxima": [float(fmap[c].max()) for c in chosen],
                     "stage_mean": float(fmap.mean()), "stage_max": float(fmap.max())})
    numbers = {"model": model.model_name, "image": str(image_path), "input_shape": list(image.shape),
               "stages": rows, "chosen_by": "highest mean activation over the map", "arrays": "activations.npz"}
    numbers["figure"] = str(_plot_activations(image, maps, rows, out))
    write_numbers(out, "activations", numbers)
    return numbers


def _plot_activations(image: np.ndarray, maps: dict, rows: list[dict], out: Path) -> Path:
    plt = pyplot()
    cols = 1 + max(len(r["channels_shown"]) for r in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(cols * 1.25, len(rows) * 1.45 + 0.4), squeeze=False, dpi=100)
    for ax in axes.flat:
        ax.axis("off")
    for axis_row, row in zip(axes, rows):
        axis_row[0].imshow(display(image), cmap="gray", vmin=0, vmax=255)
        c, h, w = row["shape"]
        axis_row[0].set_title(f"{row['stage']}\n{c} x {h} x {w}", fontsize=6)
        fmap = maps[row["stage"]].reshape(c, h, w)
        low, high = float(fmap[row["channels_shown"]].min()), float(fmap[row["channels_shown"]].max())
        for ax, channel, mean in zip(axis_row[1:], row["channels_shown"], row["means"]):
            ax.imshow(fmap[channel], cmap="viridis", vmin=low, vmax=high if high > low else low + 1,
                      interpolation="nearest")
            ax.set_title(f"ch {channel}\nmean {mean:.2g}", fontsize=6)
    fig.suptitle("Feature maps per stage: its most active channels (one colour scale per stage)", fontsize=8)
    fig.tight_layout()
    return finish_figure(fig, out, "activations")


@dataclass
class TopImages:
    """Per unit of a stage: its mean response over the data, and the positions and responses of the
    images that drive it hardest (highest first; ties to the earlier image)."""

    layer: str
    means: np.ndarray          # (units,)
    top_positions: np.ndarray  # (units, k) int64
    top_responses: np.ndarray  # (units, k) float32
    images_seen: int

    def strongest(self, units: int) -> np.ndarray:
        """The units with the highest mean response, strongest first."""
        return np.argsort(-self.means, kind="stable")[:units]


def top_images(model, data: ImageDataset, layer: str, k: int = 8, batch_size: int = 128) -> TopImages:
    """Stream data through the network in batches of batch_size and keep, for every unit of layer,
    the k images with the largest response (see RESPONSE) and the running mean. Memory: one batch,
    and k positions and responses per unit."""
    layer = check_layer(model, layer)
    expected = (model.preprocessing_.channels, *model.preprocessing_.size)
    if tuple(data.images.shape[1:]) != expected:
        raise ImgclsError(f"the images are {'x'.join(map(str, data.images.shape[1:]))} (channels x height x width); "
                          f"{model.model_name} takes {'x'.join(map(str, expected))}")
    total = best_values = best_positions = None
    for start in range(0, len(data), batch_size):
        fmap = model.feature_maps(data.images[start:start + batch_size], [layer])[layer]
        response = fmap.flatten(2).amax(2) if fmap.ndim > 2 else fmap    # (batch, units)
        positions = torch.arange(start, start + len(response)).expand(response.shape[1], -1)
        total = response.double().sum(0) if total is None else total + response.double().sum(0)
        values, where = response.T, positions
        if best_values is not None:
            values, where = torch.cat([best_values, values], 1), torch.cat([best_positions, where], 1)
        # Stable, so equal responses keep the earlier image first, as one sort of everything would.
        order = torch.sort(values, dim=1, descending=True, stable=True).indices[:, :k]
        best_values, best_positions = values.gather(1, order), where.gather(1, order)
    if total is None:
        raise ImgclsError("no images to look at: the dataset is empty")
    return TopImages(layer, (total / len(data)).numpy(), best_positions.numpy(), best_values.numpy(), len(data))


def show_top_images(model, data: ImageDataset, out: str | Path, layer: str | None = None, units: int = 8,
                    k: int = 8, batch_size: int = 128, data_name: str = "") -> dict:
    """top_images.png (a row per strongest unit: its top-k images) and top_images.json in out."""
    found = top_images(model, data, check_layer(model, layer), k, batch_size)
    chosen = found.strongest(units)
    names = data.names(data_name or "data")
    rows = [{"unit": int(u), "mean_response": float(found.means[u]),
             "images": [{"position": int(p), "name": names[p], "label": _label_text(data, int(p)),
                         "response": float(r)} for p, r in zip(found.top_positions[u], found.top_responses[u])]}
            for u in chosen]
    out = Path(out)
    numbers = {"model": model.model_name, "data": data_name, "layer": found.layer, "response": RESPONSE,
               "strongest_units": "highest mean response over the data", "images_seen": found.images_seen,
               "units_in_layer": len(found.means), "batch_size": batch_size, "units": rows}
    numbers["figure"] = str(_plot_top(data, rows, found.layer, out))
    write_numbers(out, "top_images", numbers)
    return numbers


def _label_text(data: ImageDataset, position: int) -> str:
    label = data.labels[position]
    if data.multi_label:
        return ";".join(name for name, on in zip(data.class_names, label.tolist()) if on)
    return data.class_names[int(label)]


def _plot_top(data: ImageDataset, rows: list[dict], layer: str, out: Path) -> Path:
    plt = pyplot()
    cols = max(len(r["images"]) for r in rows)
    fig, axes = plt.subplots(len(rows), cols + 1, figsize=((cols + 1) * 1.2, len(rows) * 1.35 + 0.4),
                             squeeze=False, dpi=100)
    positions = sorted({im["position"] for r in rows for im in r["images"]})
    pixels = dict(zip(positions, data.images[positions].numpy()))     # only the images shown are decoded
    for ax in axes.flat:
        ax.axis("off")
    for axis_row, row in zip(axes, rows):
        axis_row[0].text(0.5, 0.5, f"unit {row['unit']}\nmean {row['mean_response']:.3g}", ha="center",
                         va="center", fontsize=7)
        for ax, image in zip(axis_row[1:], row["images"]):
            ax.imshow(display(pixels[image["position"]]), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            ax.set_title(f"{image['label'][:12]}\n{image['response']:.3g}", fontsize=6)
    fig.suptitle(f"{layer}: the images that drive its strongest units hardest", fontsize=8)
    fig.tight_layout()
    return finish_figure(fig, out, "top_images")
