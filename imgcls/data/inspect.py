"""What is in a dataset: counts per class, image size and mode, skipped files, a grid of samples;
for multi-label data also label frequencies, label cardinality and the most frequent pairs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from imgcls.data.dataset import DatasetSplits, ImageDataset


def describe(splits: DatasetSplits) -> dict:
    prep = splits.train.preprocessing
    counts = {name: {} for name in splits.class_names}
    for split_name, part in (("train", splits.train), ("val", splits.val), ("test", splits.test)):
        if part is None:
            continue
        for name, n in part.class_counts().items():
            counts[name][split_name] = n
    info = {"name": splits.name, "source": splits.source, "task": splits.train.task.kind,
            "classes": len(splits.class_names), "sizes": splits.summary(), "image_size": list(prep.size),
            "mode": "grayscale" if prep.channels == 1 else "RGB", "counts": counts,
            "pixels": pixel_stats(splits.train), "skipped_files": [s.to_dict() for s in splits.skipped]}
    if splits.train.multi_label:
        info["labels"] = label_stats(splits.train)
    return info


def label_stats(data: ImageDataset, pairs: int = 10) -> dict:
    """Multi-label data: each label's frequency (share of images carrying it), the label cardinality
    (mean labels per image), the share of images without a label, and the most frequent pairs."""
    hot = data.labels.numpy().astype(np.int64)
    together = hot.T @ hot
    upper = [(int(together[i, j]), i, j) for i in range(len(together)) for j in range(i + 1, len(together))]
    top = sorted((c for c in upper if c[0] > 0), key=lambda c: (-c[0], c[1], c[2]))[:pairs]
    n = max(len(hot), 1)
    return {"frequency": {name: round(float(f), 4) for name, f in zip(data.class_names, hot.sum(0) / n)},
            "cardinality": round(float(hot.sum(1).mean()), 4) if len(hot) else 0.0,
            "without_labels": round(float((hot.sum(1) == 0).mean()), 4) if len(hot) else 0.0,
            "co_occurrences": [{"labels": [data.class_names[i], data.class_names[j]], "images": count,
                                "share": round(count / n, 4)} for count, i, j in top]}


def write_info(splits: DatasetSplits, out_dir: str | Path, seed: int = 0) -> tuple[dict, dict[str, Path]]:
    """describe(splits) as out_dir/info.json and a sample grid of the training images as out_dir/samples.png.

    Returns the description and the two files' paths ("json", "png")."""
    info = describe(splits)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "info.json", "png": out_dir / "samples.png"}
    paths["json"].write_text(json.dumps(info, indent=2))
    sample_grid(splits.train, paths["png"], seed=seed)
    return info, paths


def sample_grid(data: ImageDataset, path: Path, per_class: int = 8, seed: int = 0, max_classes: int = 20) -> Path:
    """A PNG with one row per class (at most max_classes) of randomly drawn training images."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gen = torch.Generator().manual_seed(seed)
    classes = list(range(min(data.num_classes, max_classes)))
    fig, axes = plt.subplots(len(classes), per_class, figsize=(per_class * 1.1 + 1.6, len(classes) * 1.1),
                             squeeze=False, dpi=100)
    for row, label in enumerate(classes):
        carries = data.labels[:, label] == 1 if data.multi_label else data.labels == label
        members = torch.nonzero(carries).flatten()
        chosen = members[torch.randperm(len(members), generator=gen)[:per_class]]
        for col in range(per_class):
            ax = axes[row][col]
            ax.axis("off")
            if col < len(chosen):
                image = data.images[chosen[col]].permute(1, 2, 0).numpy()
                ax.imshow(image[..., 0] if image.shape[2] == 1 else image, cmap="gray", vmin=0, vmax=255,
                          interpolation="nearest")
        axes[row][0].text(-0.15, 0.5, data.class_names[label], transform=axes[row][0].transAxes,
                          ha="right", va="center", fontsize=9)
    fig.subplots_adjust(left=0.2, right=0.99, top=0.99, bottom=0.01, wspace=0.05, hspace=0.05)
    fig.savefig(path)
    plt.close(fig)
    return path


def pixel_stats(data: ImageDataset) -> dict:
    """Mean and standard deviation of pixel values per channel, on the 0..1 scale."""
    pixels = data.images.to(torch.float32) / 255
    return {"mean": np.round(pixels.mean(dim=(0, 2, 3)).numpy(), 4).tolist(),
            "std": np.round(pixels.std(dim=(0, 2, 3)).numpy(), 4).tolist()}
