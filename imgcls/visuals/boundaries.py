"""`imgcls show boundaries`: kNN decision regions in a 2-D PCA projection of the pixels, one panel per k.

The training images' pixels (scaled to 0..1) are projected on their first two principal components
(scikit-learn's PCA, fitted on the training split); kNN then classifies every point of a grid over
that plane from the projected training points, with imgcls's own exact search and vote (ties to
the tied class whose member is nearest, as `knn` decides). Larger k smooths the regions, as in the
course's figure. The test split, projected the same way, gives each panel's accuracy in 2-D.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from imgcls.data.dataset import DatasetSplits, ImageDataset
from imgcls.errors import ImgclsError
from imgcls.models.distance import METRICS, ExactSearch
from imgcls.models.knn import WEIGHTS, decide, vote
from imgcls.visuals.common import finish_figure, pyplot, write_numbers

MAX_POINTS_DRAWN = 3000     # the scatter of training points is subsampled beyond this (the regions use all)


def parse_ks(text: str) -> list[int]:
    """"1,5,15" -> [1, 5, 15]; anything but positive whole numbers is a one-line error."""
    try:
        ks = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        ks = []
    if not ks or any(k < 1 for k in ks):
        raise ImgclsError(f"--k takes positive whole numbers separated by commas, such as 1,5,15; got {text!r}")
    return ks


def pixels(data: ImageDataset) -> np.ndarray:
    """(N, C*H*W) float64 pixels in 0..1; streamed data is refused (PCA wants every image at once)."""
    if data.streamed:
        raise ImgclsError("show boundaries needs the images in memory; use --data-mode memory")
    return data.images.reshape(len(data), -1).double().numpy() / 255


def knn_regions(points: np.ndarray, labels: np.ndarray, queries: np.ndarray, k: int, n_classes: int,
                metric: str = "l2", weights: str = "uniform") -> np.ndarray:
    """The class kNN gives each query point (Q, 2) from the reference points (N, 2) and their labels."""
    search = ExactSearch(torch.from_numpy(np.ascontiguousarray(points)), metric)
    distances, indices = search.search(torch.from_numpy(np.ascontiguousarray(queries)), k)
    votes, first_rank = vote(distances, torch.from_numpy(labels)[indices], n_classes, weights)
    return decide(votes, first_rank).numpy()


def show_boundaries(splits: DatasetSplits, out: str | Path, ks: list[int], metric: str = "l2",
                    weights: str = "uniform", grid: int = 200, seed: int = 0) -> dict:
    """boundaries.png (one panel per k), boundaries.json and boundaries.npz (the projected points,
    the grid's axes and each k's region labels) in out; returns the JSON's content."""
    from sklearn.decomposition import PCA
    if metric not in METRICS or weights not in WEIGHTS:
        raise ImgclsError(f"metric must be one of {', '.join(METRICS)} and weights one of {', '.join(WEIGHTS)}")
    splits.require_single_label("show boundaries")
    train, test = splits.train, splits.test
    if len(train) < 2:
        raise ImgclsError(f"{splits.name}: show boundaries needs at least 2 training images")
    pca = PCA(n_components=2, svd_solver="full").fit(pixels(train))
    points, labels = pca.transform(pixels(train)), train.labels.numpy()
    test_points = pca.transform(pixels(test)) if len(test) else np.empty((0, 2))
    xs, ys = _axes(points, grid)
    queries = np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2)      # row-major: y down the rows, x along them
    n_classes = train.num_classes
    regions, panels = {}, []
    for k in ks:
        regions[k] = knn_regions(points, labels, queries, min(k, len(points)), n_classes, metric, weights)
        accuracy = None
        if len(test):
            predicted = knn_regions(points, labels, test_points, min(k, len(points)), n_classes, metric, weights)
            accuracy = float((predicted == test.labels.numpy()).mean())
        panels.append({"k": k, "test_accuracy_2d": accuracy,
                       "region_shares": _shares(regions[k], train.class_names)})
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out / "boundaries.npz", points=points, labels=labels, test_points=test_points,
                        test_labels=test.labels.numpy(), x=xs, y=ys,
                        **{f"regions_k{k}": r.reshape(len(ys), len(xs)) for k, r in regions.items()})
    numbers = {"data": splits.name, "model": "knn", "metric": metric, "weights": weights, "grid": [len(ys), len(xs)],
               "projection": "PCA of the training pixels (0..1), first two components",
               "explained_variance_ratio": pca.explained_variance_ratio_.tolist(),
               "train_points": len(points), "test_points": len(test_points), "classes": train.class_names,
               "panels": panels, "arrays": "boundaries.npz"}
    numbers["figure"] = str(_plot(points, labels, xs, ys, regions, numbers, out, seed))
    write_numbers(out, "boundaries", numbers)
    return numbers


def _axes(points: np.ndarray, grid: int) -> tuple[np.ndarray, np.ndarray]:
    """Grid coordinates covering the points with a 5% margin on each side."""
    low, high = points.min(0), points.max(0)
    margin = 0.05 * np.maximum(high - low, 1e-9)
    return (np.linspace(low[0] - margin[0], high[0] + margin[0], grid),
            np.linspace(low[1] - margin[1], high[1] + margin[1], grid))


def _shares(regions: np.ndarray, class_names: list[str]) -> dict[str, float]:
    counts = np.bincount(regions, minlength=len(class_names)) / len(regions)
    return {name: float(share) for name, share in zip(class_names, counts)}


def _plot(points, labels, xs, ys, regions: dict, numbers: dict, out: Path, seed: int) -> Path:
    plt = pyplot()
    from matplotlib.colors import ListedColormap
    n_classes = len(numbers["classes"])
    colours = plt.get_cmap("tab10" if n_classes <= 10 else "tab20")(np.arange(n_classes) % 20)
    drawn = np.random.default_rng(seed).permutation(len(points))[:MAX_POINTS_DRAWN]
    fig, axes = plt.subplots(1, len(regions), figsize=(4.2 * len(regions), 4.4), squeeze=False, dpi=100)
    for ax, (k, region), panel in zip(axes[0], regions.items(), numbers["panels"]):
        ax.imshow(region.reshape(len(ys), len(xs)), origin="lower", extent=(xs[0], xs[-1], ys[0], ys[-1]),
                  cmap=ListedColormap(colours), vmin=-0.5, vmax=n_classes - 0.5, alpha=0.35, aspect="auto",
                  interpolation="nearest")
        ax.scatter(points[drawn, 0], points[drawn, 1], c=colours[labels[drawn]], s=6, edgecolors="black",
                   linewidths=0.2)
        accuracy = panel["test_accuracy_2d"]
        ax.set_title(f"k = {k}" + (f": test accuracy in 2-D {accuracy:.1%}" if accuracy is not None else ""),
                     fontsize=9)
        ax.set_xlabel("principal component 1", fontsize=8)
        ax.set_ylabel("principal component 2", fontsize=8)
        ax.tick_params(labelsize=7)
    if n_classes <= 20:
        handles = [plt.Line2D([], [], marker="o", linestyle="", color=colours[i], label=name)
                   for i, name in enumerate(numbers["classes"])]
        fig.legend(handles=handles, loc="lower center", ncol=min(n_classes, 10), fontsize=7, frameon=False)
    fig.suptitle(f"kNN ({numbers['metric']}) decision regions of {numbers['data']} in a 2-D PCA projection",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0.08 if n_classes <= 20 else 0, 1, 1))
    return finish_figure(fig, out, "boundaries")
