"""Seeded, stratified splits and k-fold cross-validation, reproducible from the seed, and the
class-balancing weights and draws shared by every classifier trained by gradient descent.

Multi-label data (a multi-hot matrix of labels) is split by iterative stratification (Sechidis,
Tsoumakas and Vlahavas, 2011; the iterative-stratification package), which hands out the rarest
labels first, so every split keeps each label's share and rare labels appear in every split.
"""

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
    if labels.ndim == 2:
        return multilabel_split(labels, fraction, seed)
    counts = np.bincount(labels)
    if counts[counts > 0].min() < 2:
        raise ImgclsError("every class needs at least 2 images to be split; "
                          f"smallest class has {counts[counts > 0].min()}")
    held_size = max(int(round(fraction * len(labels))), int((counts > 0).sum()))
    kept, held = train_test_split(np.arange(len(labels)), test_size=held_size, stratify=labels,
                                  random_state=seed)
    return np.sort(kept), np.sort(held)


def multilabel_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (kept, held_out) of a multi-hot matrix by iterative stratification, sorted."""
    from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit
    if len(labels) < 2:
        raise ImgclsError(f"{len(labels)} image(s) cannot be split")
    held_size = min(max(int(round(fraction * len(labels))), 1), len(labels) - 1)
    splitter = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=held_size, random_state=seed)
    kept, held = next(splitter.split(np.zeros(len(labels)), labels))
    return np.sort(kept), np.sort(held)


def split_dataset(data: ImageDataset, fraction: float, seed: int) -> tuple[ImageDataset, ImageDataset]:
    kept, held = stratified_split(data.labels.numpy(), fraction, seed)
    return data.subset(kept), data.subset(held)


def stratified_kfold(labels, folds: int, seed: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (train_indices, val_indices) for each of `folds` stratified folds (iteratively
    stratified for a multi-hot matrix)."""
    labels = np.asarray(labels)
    if labels.ndim == 2:
        from iterstrat.ml_stratifiers import MultilabelStratifiedKFold
        if folds < 2 or len(labels) < folds:
            raise ImgclsError(f"{folds}-fold cross-validation needs at least {folds} images")
        yield from MultilabelStratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(
            np.zeros(len(labels)), labels)
        return
    smallest = np.bincount(labels)[np.bincount(labels) > 0].min()
    if folds < 2 or smallest < folds:
        raise ImgclsError(f"{folds}-fold cross-validation needs at least {folds} images per class; "
                          f"smallest class has {smallest}")
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    yield from splitter.split(np.zeros(len(labels)), labels)


def class_balance_weights(labels, n_classes: int) -> torch.Tensor:
    """Per-class weights n_samples / (n_present_classes * count_c), as scikit-learn's
    compute_class_weight("balanced"): every class then carries the same total weight. A class
    absent from labels gets 0, not inf.

    For a multi-hot matrix: BCE's pos_weight per label, negatives / positives (as PyTorch's
    BCEWithLogitsLoss documents), so each label's positives weigh as much as its negatives; a
    label without positives gets 1."""
    labels = torch.as_tensor(labels).cpu()
    if labels.ndim == 2:
        positives = labels.double().sum(0)
        negatives = len(labels) - positives
        return torch.where(positives > 0, negatives / positives.clamp_min(1), torch.ones_like(positives)).float()
    labels = labels.long()
    counts = torch.bincount(labels, minlength=n_classes).double()
    present = counts > 0
    weights = torch.zeros(len(counts), dtype=torch.float64)
    weights[present] = len(labels) / (present.sum() * counts[present])
    return weights.float()


def balanced_order(labels, generator: torch.Generator, count: int | None = None) -> torch.Tensor:
    """count (default len(labels)) indices drawn with replacement, each with probability
    proportional to 1 / the count of its class, so every class present is drawn equally often on
    average (an epoch of an oversampling sampler, like PyTorch's WeightedRandomSampler)."""
    labels = torch.as_tensor(labels).cpu()
    check_balance("sampler", multi_label=labels.ndim == 2)
    labels = labels.long()
    weights = class_balance_weights(labels, int(labels.max()) + 1)[labels]
    return torch.multinomial(weights, count or len(labels), replacement=True, generator=generator)


def check_balance(balance: str, multi_label: bool) -> None:
    """balance=sampler draws classes equally often, which multi-label data has no way to do."""
    if balance == "sampler" and multi_label:
        raise ImgclsError("balance=sampler does not apply to multi-label data (it draws classes equally often); "
                          "use balance=weights (BCE pos_weight per label)")
