"""Weights that read as images: a network's first-layer filters and a linear model's class templates.

The model says what it has (`first_layer_filters()`, `templates()`: the classifier contract); this
module draws it, once, for the HTML report and for `imgcls show filters` / `imgcls show templates`.
Each image is scaled to its own range (min to black, max to white), as the course's pictures of
learned weights are: their scale differs from filter to filter, and it is their pattern that tells.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from imgcls.run_folder import RunFolder

FILTERS_TITLE = "First-layer filters (each scaled to its own range)"
TEMPLATES_TITLE = "Class templates: the rows of W as images (each scaled to its own range)"


def scaled_images(weights: np.ndarray) -> np.ndarray:
    """(N, C, H, W) weights -> (N, H, W, C) in [0, 1], each image min-max scaled over all its
    channels (a constant image becomes 0.5). Channels other than 1 and 3 are averaged to one."""
    w = np.asarray(weights, dtype=np.float64)
    if w.shape[1] not in (1, 3):
        w = w.mean(1, keepdims=True)
    low = w.min(axis=(1, 2, 3), keepdims=True)
    span = w.max(axis=(1, 2, 3), keepdims=True) - low
    scaled = np.divide(w - low, span, out=np.full_like(w, 0.5), where=span > 0)
    return scaled.transpose(0, 2, 3, 1)


def plot_weight_images(weights: np.ndarray, path: str | Path, title: str, labels: list[str] | None = None,
                       max_images: int = 64) -> Path:
    """A grid of the first max_images weight images, titled by labels (default: their index)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = scaled_images(weights[:max_images])
    labels = list(labels) if labels is not None else [str(i) for i in range(len(shown))]
    cols = min(len(shown), 16 if max(map(len, labels)) <= 4 else 10)   # class names need wider cells
    rows = -(-len(shown) // cols)
    cell = 1.0 if cols > 10 else 1.3
    fig, axes = plt.subplots(rows, cols, figsize=(cols * cell, rows * (cell + 0.25) + 0.6), squeeze=False, dpi=100)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, label in zip(axes.flat, shown, labels):
        ax.imshow(image[..., 0] if image.shape[2] == 1 else image, cmap="gray", vmin=0, vmax=1,
                  interpolation="nearest")
        ax.set_title(label, fontsize=7)
    more = f"; {max_images} of {len(weights)} shown" if len(weights) > max_images else ""
    n, c, h, w = weights.shape
    fig.suptitle(f"{title}\n{n} x {c} x {h} x {w}{more}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def model_figures(model, out_dir: str | Path) -> dict[str, Path]:
    """The weight pictures a model offers, written into out_dir: filters.png for a network,
    templates.png for a linear model; {report caption: path}."""
    run = RunFolder(out_dir).make()
    figures = {}
    templates = model.templates()
    if templates is not None:
        figures[TEMPLATES_TITLE] = plot_weight_images(templates, run.templates, TEMPLATES_TITLE,
                                                      labels=model.class_names_)
    filters = model.first_layer_filters()
    if filters is not None:
        figures[FILTERS_TITLE] = plot_weight_images(filters, run.filters, FILTERS_TITLE)
    return figures
