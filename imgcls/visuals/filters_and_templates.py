"""`imgcls show filters` and `imgcls show templates`: weights that read as images.

What a model has comes from the classifier contract (`first_layer_filters()`, `templates()`); the
grid is drawn by imgcls.evaluation.weight_images, the same picture the HTML report shows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from imgcls.errors import ImgclsError
from imgcls.evaluation.weight_images import FILTERS_TITLE, TEMPLATES_TITLE, plot_weight_images
from imgcls.visuals.common import write_numbers


def show_filters(model, out: str | Path, max_filters: int = 64) -> dict:
    """filters.png (a grid of the first layer's filters), filters.json and filters.npy (the exact
    weights, float32 (filters, channels, height, width)) in out; returns the JSON's content."""
    filters = model.first_layer_filters()
    if filters is None:
        raise ImgclsError(f"{model.model_name} has no first-layer filters to show (networks have: a first "
                          "convolution, or a first fully connected layer on the pixels)"
                          + ("; for a linear model, see `imgcls show templates`" if model.templates() is not None
                             else ""))
    return _write(filters, Path(out), "filters", FILTERS_TITLE, model.model_name, labels=None, max_images=max_filters)


def show_templates(model, out: str | Path) -> dict:
    """templates.png (one row of W per class as an image), templates.json and templates.npy (W's rows,
    float32 (classes, channels, height, width)) in out; returns the JSON's content."""
    templates = model.templates()
    if templates is None:
        raise ImgclsError(f"templates are the rows of a linear model's W; {model.model_name} is not a linear model"
                          + ("; for its first-layer filters, see `imgcls show filters`"
                             if model.first_layer_filters() is not None else ""))
    return _write(templates, Path(out), "templates", TEMPLATES_TITLE, model.model_name,
                  labels=list(model.class_names_), max_images=len(templates))


def _write(weights: np.ndarray, out: Path, name: str, title: str, model_name: str, labels: list[str] | None,
           max_images: int) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / f"{name}.npy", weights)
    figure = plot_weight_images(weights, out / f"{name}.png", title, labels=labels, max_images=max_images)
    flat = weights.reshape(len(weights), -1).astype(np.float64)
    rows = [{"index": i, **({"label": labels[i]} if labels else {}), "min": float(row.min()), "max": float(row.max()),
             "l2_norm": float(np.linalg.norm(row))} for i, row in enumerate(flat)]
    numbers = {"model": model_name, "shape": list(weights.shape),
               "axes": "units, channels, height, width" if labels is None else "classes, channels, height, width",
               "shown": min(len(weights), max_images), "scaling": "each image min-max scaled to its own range",
               name: rows, "arrays": f"{name}.npy", "figure": str(figure)}
    write_numbers(out, name, numbers)
    return numbers
