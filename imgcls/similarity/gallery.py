"""Search results as the course draws them: each query on the left, its nearest images to the right.

Writes neighbours.json, gallery.png (matplotlib) and a self-contained gallery.html (thumbnails
embedded as PNG data, nothing fetched from the network).
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import torch
from jinja2 import Environment, PackageLoader, select_autoescape
from PIL import Image

from imgcls import __version__
from imgcls.data.images import Preprocessing, UnreadableImage, decode_image
from imgcls.similarity.build import Queries
from imgcls.similarity.index import ImageIndex, Neighbour

PNG_MAX_QUERIES = 16
THUMBNAIL_SIDE = 96
_ENV = Environment(loader=PackageLoader("imgcls", "similarity/templates"), autoescape=select_autoescape())


def results_json(index: ImageIndex, queries: Queries, results: list[list[Neighbour]]) -> list[dict]:
    return [{"query": name, "label": label, "metric": index.metric, "neighbours": [n.to_dict() for n in found]}
            for name, label, found in zip(queries.names, queries.labels, results)]


def write_gallery(index: ImageIndex, queries: Queries, results: list[list[Neighbour]], out_dir: str | Path
                  ) -> dict[str, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "neighbours.json", "png": out_dir / "gallery.png", "html": out_dir / "gallery.html"}
    paths["json"].write_text(json.dumps(results_json(index, queries, results), indent=2))
    query_thumbs = [_as_hwc(img) for img in queries.images]
    neighbour_thumbs = [[thumbnail(index, n.index) for n in found] for found in results]
    plot_gallery(queries, results, query_thumbs, neighbour_thumbs, index.metric, paths["png"])
    paths["html"].write_text(render_gallery(index, queries, results, query_thumbs, neighbour_thumbs))
    return paths


def thumbnail(index: ImageIndex, i: int) -> np.ndarray | None:
    """An indexed image as (H, W, C) uint8: its stored thumbnail, or its file decoded small."""
    if index.thumbnails_ is not None:
        return _as_hwc(index.thumbnails_[i])
    try:
        return _as_hwc(decode_image(index.items_[i], Preprocessing(channels=3, size=(THUMBNAIL_SIDE,) * 2)))
    except UnreadableImage:
        return None      # moved or deleted since indexing: drawn as an empty cell


def plot_gallery(queries: Queries, results, query_thumbs, neighbour_thumbs, metric: str, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = min(len(results), PNG_MAX_QUERIES)
    cols = 1 + max(len(found) for found in results)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.3, rows * 1.55), squeeze=False, dpi=100)
    for ax in axes.flat:
        ax.axis("off")
    for r in range(rows):
        _show(axes[r, 0], query_thumbs[r], f"query\n{queries.labels[r] or _short(queries.names[r])}", "black")
        for c, (n, thumb) in enumerate(zip(results[r], neighbour_thumbs[r]), start=1):
            colour = "black" if queries.labels[r] is None else ("green" if n.label == queries.labels[r] else "red")
            _show(axes[r, c], thumb, f"{n.label}\n{n.distance:.4g}", colour)
    fig.suptitle(f"Nearest neighbours ({'L2 on pixels' if metric == 'l2' else 'cosine distance of embeddings'})",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def render_gallery(index: ImageIndex, queries: Queries, results, query_thumbs, neighbour_thumbs) -> str:
    rows = []
    for name, label, thumb, found, thumbs in zip(queries.names, queries.labels, query_thumbs, results,
                                                  neighbour_thumbs):
        cells = [{"src": _data_url(t), "label": n.label, "distance": f"{n.distance:.4g}", "item": n.item,
                  "split": n.split, "match": None if label is None else n.label == label}
                 for n, t in zip(found, thumbs)]
        rows.append({"name": name, "label": label, "src": _data_url(thumb), "cells": cells})
    return _ENV.get_template("gallery.html").render(rows=rows, index=index, size=len(index), version=__version__)


def _show(ax, image: np.ndarray | None, title: str, colour: str) -> None:
    if image is not None:
        ax.imshow(image[..., 0] if image.shape[2] == 1 else image, cmap="gray", vmin=0, vmax=255,
                  interpolation="nearest")
    ax.set_title(title, fontsize=7, color=colour)


def _as_hwc(image) -> np.ndarray:
    image = image.numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    return image.transpose(1, 2, 0)


def _data_url(image: np.ndarray | None) -> str:
    if image is None:
        return ""
    pil = Image.fromarray(image[..., 0] if image.shape[2] == 1 else image)
    if max(pil.size) < THUMBNAIL_SIDE:      # small images scaled up, pixels kept sharp
        scale = THUMBNAIL_SIDE // max(pil.size)
        pil = pil.resize((pil.width * scale, pil.height * scale), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    pil.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _short(name: str) -> str:
    return Path(name).name[:14]
