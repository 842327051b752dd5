"""Seeded, stratified splits and k-fold cross-validation, reproducible from the seed, and the
class-balancing weights and draws shared by every classifier trained by gradient descent."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from sklearn.model_selection import StratifiedKFold, train_test_split

from imgcls.data.dataset import ImageDataset
from imgcls.errors import ImgclsError


def stratified_split(labels, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (kept, held_out) with `fraction` of every class held out, sorted for stable order."""
    labels = np.asarray(labels)
    if not 0 < fraction < 1:
        raise ImgclsError(f"split fraction must lie strictly between 0 and 1, not {fraction}")
    counts = np.bincount(labels)
    if counts[counts > 0].min() < 2:
        raise ImgclsError("every class needs at least 2 images to be split; "
                          f"smallest class has {counts[counts > 0].min()}")
    held_size = max(int(round(fraction * len(labels))), int((counts > 0).sum()))
    kept, held = train_test_split(np.arange(len(labels)), test_size=held_size, stratify=labels,
                                  random_state=seed)
    return np.sort(kept), np.sort(held)


def split_dataset(data: ImageDataset, fraction: float, seed: int) -> tuple[ImageDataset, ImageDataset]:
    kept, held = stratified_split(data.labels.numpy(), fraction, seed)
    return data.subset(kept), data.subset(held)


def stratified_kfold(labels, folds: int, seed: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (train_indices, val_indices) for each of `folds` stratified folds."""
    labels = np.asarray(labels)
    smallest = np.bincount(labels)[np.bincount(labels) > 0].min()
    if folds < 2 or smallest < folds:
        raise ImgclsError(f"{folds}-fold cross-validation needs at least {folds} images per class; "
                          f"smallest class has {smallest}")
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    yield from splitter.split(np.zeros(len(labels)), labels)


def class_balance_weights(labels, n_classes: int) -> torch.Tensor:
    """Per-class weights n_samples / (n_present_classes * count_c), as scikit-learn's
    compute_class_weight("balanced"): every class then carries the same total weight. A class
    absent from labels gets 0, not inf."""
    labels = torch.as_tensor(labels).long().cpu()
    counts = torch.bincount(labels, minlength=n_classes).double()
    present = counts > 0
    weights = torch.zeros(len(counts), dtype=torch.float64)
    weights[present] = len(labels) / (present.sum() * counts[present])
    return weights.float()


def balanced_order(labels, generator: torch.Generator) -> torch.Tensor:
    """len(labels) indices drawn with replacement, each with probability proportional to 1 / the
    count of its class, so every class present is drawn equally often on average (an epoch of
    an oversampling sampler, like PyTorch's WeightedRandomSampler)."""
    labels = torch.as_tensor(labels).long().cpu()
    weights = class_balance_weights(labels, int(labels.max()) + 1)[labels]
    return torch.multinomial(weights, len(labels), replacement=True, generator=generator)
