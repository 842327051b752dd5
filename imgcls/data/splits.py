"""Seeded, stratified splits and k-fold cross-validation, reproducible from the seed."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
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
