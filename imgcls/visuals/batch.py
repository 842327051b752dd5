"""`imgcls show batch`: a training batch exactly as the trainer sees it, augmentation and mixing included.

The pixels come from the model's `preview_training_batch`, which runs the trainer's own order,
gathering, seeded generator and `augment_batch` / `mix` for that batch (imgcls.training.trainer),
so a recipe can be checked by eye before an hour is spent on it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from imgcls.data.dataset import DatasetSplits
from imgcls.visuals.common import display, finish_figure, pyplot, write_numbers


def show_batch(model, splits: DatasetSplits, out: str | Path, epoch: int = 0, index: int = 0,
               max_images: int = 64) -> dict:
    """batch.png (the batch's first max_images images, titled with their targets), batch.json and
    batch.npz (positions, the float32 images in 0..255 as trained on, targets) in out."""
    train = splits.train
    positions, images, targets = model.preview_training_batch(train, epoch, index)
    positions, images, targets = positions.cpu(), images.cpu().contiguous(), targets.cpu()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out / "batch.npz", positions=positions.numpy(), images=images.numpy(),
                        targets=targets.numpy())
    names = train.names(f"{splits.name}/train")
    captions = [_target_text(t, train.class_names, train.multi_label) for t in targets]
    cfg = model.training_config()
    numbers = {"data": splits.name, "model": model.model_name, "augment": cfg.augment, "batch_size": cfg.batch_size,
               "seed": cfg.seed, "balance": cfg.balance, "epoch": epoch, "batch": index, "images": len(images),
               "shown": min(len(images), max_images), "image_shape": list(images.shape[1:]),
               "pixels": "float32 in 0..255, as the network receives them (it normalises inside)",
               "items": [{"position": int(p), "name": names[int(p)], "target": c}
                         for p, c in zip(positions, captions)],
               "arrays": "batch.npz"}
    numbers["figure"] = str(_plot(images[:max_images], captions[:max_images], numbers, out))
    write_numbers(out, "batch", numbers)
    return numbers


def _target_text(target: torch.Tensor, class_names: list[str], multi_label: bool) -> str:
    """A class name; under mixup/cutmix the two largest shares ("0.72 shirt + 0.28 coat"); for
    multi-label targets the labels at or above 0.5."""
    if target.ndim == 0:
        return class_names[int(target)]
    if multi_label:
        return ";".join(name for name, share in zip(class_names, target.tolist()) if share >= 0.5) or "(none)"
    shares, classes = target.topk(min(2, len(target)))
    if float(shares[0]) >= 1 - 1e-6:
        return class_names[int(classes[0])]
    return " + ".join(f"{float(s):.2f} {class_names[int(c)]}" for s, c in zip(shares, classes) if s > 0)


def _plot(images: torch.Tensor, captions: list[str], numbers: dict, out: Path) -> Path:
    plt = pyplot()
    cols = min(8, len(images))
    rows = -(-len(images) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.5, rows * 1.65 + 0.5), squeeze=False, dpi=100)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, caption in zip(axes.flat, images.numpy(), captions):
        ax.imshow(display(np.clip(image, 0, 255) / 255), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(caption.replace(" + ", "\n+ "), fontsize=6)
    fig.suptitle(f"{numbers['model']} training batch {numbers['batch']} of epoch {numbers['epoch']} on "
                 f"{numbers['data']}: augment {numbers['augment']}, {numbers['images']} images "
                 f"({numbers['shown']} shown)", fontsize=8)
    fig.tight_layout()
    return finish_figure(fig, out, "batch")
