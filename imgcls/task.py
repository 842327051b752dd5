"""What a classifier predicts: one class per image (single-label) or any set of labels (multi-label).

A task decides the loss, the output activation, how scores become a prediction and which
metric heads the report. Datasets, the trainer, every classifier, evaluation, prediction,
export and serving ask the task instead of assuming softmax:

| task          | labels                      | activation | loss                  | prediction                 |
|---------------|-----------------------------|------------|-----------------------|----------------------------|
| single-label  | class indices (N,)          | softmax    | cross-entropy         | argmax                     |
| multi-label   | multi-hot 0/1 matrix (N, C) | sigmoid    | binary cross-entropy  | every label >= its threshold |

A multi-label model's thresholds (one per label) are learned state, saved with the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from imgcls.errors import ImgclsError

DEFAULT_THRESHOLD = 0.5
THRESHOLD_MARGIN = 1e-6       # chosen thresholds stay this far inside (0, 1)


@dataclass(frozen=True)
class SingleLabel:
    """Exactly one class per image."""

    kind: ClassVar[str] = "single-label"
    headline: ClassVar[str] = "accuracy"      # the figure that ranks models and is monitored
    multi_label: ClassVar[bool] = False

    def activation(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.float().softmax(1)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, *, weight: torch.Tensor | None = None,
             label_smoothing: float = 0.0) -> torch.Tensor:
        """Mean cross-entropy; targets are class indices (N,) or class probabilities (N, C)."""
        return F.cross_entropy(logits.float(), targets, weight=weight, label_smoothing=label_smoothing)

    def decide(self, proba):
        """Class indices (N,) from probabilities (N, C)."""
        return proba.argmax(1)

    def correct(self, logits: torch.Tensor, targets: torch.Tensor) -> float:
        """How many of a batch's predictions are right (for a running training accuracy); with class
        probabilities as targets (mixup, cutmix), against the most likely class."""
        if targets.dim() == 2:
            targets = targets.argmax(1)
        return float((logits.argmax(1) == targets).sum())

    def validation_metrics(self, logits: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        """What the trainer records after each epoch: val_loss and val_accuracy."""
        return {"val_loss": self.loss(logits, targets).item(),
                "val_accuracy": (logits.argmax(1) == targets).float().mean().item()}

    def to_dict(self) -> dict:
        return {"kind": self.kind}


@dataclass(frozen=True)
class MultiLabel:
    """Any set of labels per image, none included: one sigmoid per label.

    thresholds: one per label (a label is predicted when its probability reaches it), or None
    for DEFAULT_THRESHOLD everywhere.
    """

    thresholds: tuple[float, ...] | None = None
    kind: ClassVar[str] = "multi-label"
    headline: ClassVar[str] = "mAP"
    multi_label: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.thresholds is not None:
            values = tuple(float(t) for t in self.thresholds)
            check_threshold(*values)
            object.__setattr__(self, "thresholds", values)

    def activation(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.float().sigmoid()

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, *, weight: torch.Tensor | None = None,
             label_smoothing: float = 0.0) -> torch.Tensor:
        """Mean binary cross-entropy over images and labels; weight is BCE's pos_weight per label,
        and label smoothing pulls each target towards 1/2."""
        targets = targets.float()
        if label_smoothing:
            targets = targets * (1 - label_smoothing) + label_smoothing / 2
        return F.binary_cross_entropy_with_logits(logits.float(), targets, pos_weight=weight)

    def threshold_vector(self, n_labels: int) -> np.ndarray:
        if self.thresholds is None:
            return np.full(n_labels, DEFAULT_THRESHOLD)
        if len(self.thresholds) != n_labels:
            raise ImgclsError(f"{len(self.thresholds)} thresholds for {n_labels} labels")
        return np.asarray(self.thresholds)

    def decide(self, proba):
        """Multi-hot predictions (N, C), uint8: 1 where a label's probability reaches its threshold."""
        if isinstance(proba, torch.Tensor):
            limits = torch.as_tensor(self.threshold_vector(proba.shape[1]), dtype=proba.dtype)
            return (proba >= limits).to(torch.uint8)
        return (np.asarray(proba) >= self.threshold_vector(np.shape(proba)[1])).astype(np.uint8)

    def correct(self, logits: torch.Tensor, targets: torch.Tensor) -> float:
        """Images whose whole label set is right at threshold 1/2 (subset accuracy's numerator); soft
        targets (mixup, cutmix) count as their labels >= 1/2, the dominant image's label set."""
        return float(((logits > 0) == (targets >= 0.5)).all(1).sum())

    def validation_metrics(self, logits: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        """What the trainer records after each epoch: val_loss, val_mAP (over the labels with a
        positive) and val_accuracy (subset accuracy at threshold 1/2)."""
        ap = average_precision(targets.numpy(), self.activation(logits).numpy())
        return {"val_loss": self.loss(logits, targets).item(),
                "val_mAP": float(np.nanmean(ap)) if not np.isnan(ap).all() else 0.0,
                "val_accuracy": self.correct(logits, targets) / max(len(targets), 1)}

    def with_thresholds(self, thresholds) -> MultiLabel:
        return MultiLabel(tuple(float(t) for t in thresholds))

    def to_dict(self) -> dict:
        return {"kind": self.kind, "thresholds": list(self.thresholds) if self.thresholds is not None else None}


Task = SingleLabel | MultiLabel
TASKS = {SingleLabel.kind: SingleLabel, MultiLabel.kind: MultiLabel}


def task_from_dict(d: dict | None) -> Task:
    """The task a saved model records; a model saved before tasks existed is single-label."""
    if not d:
        return SingleLabel()
    kind = d.get("kind")
    if kind == MultiLabel.kind:
        return MultiLabel(tuple(d["thresholds"]) if d.get("thresholds") is not None else None)
    if kind == SingleLabel.kind:
        return SingleLabel()
    raise ImgclsError(f"unknown task {kind!r}; valid: {', '.join(TASKS)}")


def task_of_labels(labels) -> Task:
    """Class indices (N,) are single-label; a multi-hot matrix (N, C) is multi-label."""
    return MultiLabel() if np.ndim(labels) == 2 else SingleLabel()


def check_threshold(*values: float) -> None:
    bad = [v for v in values if not 0 < v < 1]
    if bad:
        raise ImgclsError(f"a threshold must lie strictly between 0 and 1, not {bad[0]:g}")


def choose_thresholds(y_true, proba) -> np.ndarray:
    """Per label, the threshold that maximises that label's F1 on this (validation) data.

    Exact: every distinct score s is a candidate (predict the label where the probability >= s).
    Where several candidates reach the best F1, the lowest wins (the largest predicted set, so
    the most recall), and the threshold is put midway between it and the next lower score (0
    below the lowest), in the middle of the gap rather than on a score seen here. Thresholds lie
    in [1e-6, 1 - 1e-6], so scores below 1e-6 can never be predicted and all scores from
    1 - 1e-6 up count as one. A label without a positive (above 1e-6) keeps 0.5.
    """
    y_true, proba = np.asarray(y_true).astype(np.uint8), np.asarray(proba, dtype=np.float64)
    n, c = y_true.shape
    if n == 0:
        return np.full(c, DEFAULT_THRESHOLD)
    low, high = THRESHOLD_MARGIN, 1 - THRESHOLD_MARGIN
    # Scores below the lowest allowed threshold become one group that is never a candidate.
    ranked = rank_scores(y_true, np.where(proba < low, -1.0, np.minimum(proba, high)))
    candidate = ranked.is_end & (ranked.scores >= low)
    f1 = np.where(candidate, 2 * ranked.tps / (np.arange(1, n + 1)[:, None] + ranked.tps[-1]), -1.0)
    best = f1.max(0)
    last = n - 1 - np.argmax((f1 == best)[::-1], axis=0)     # the lowest score reaching the best F1
    columns = np.arange(c)
    cut = ranked.scores[last, columns]
    below = np.where(last + 1 < n, ranked.scores[np.minimum(last + 1, n - 1), columns], 0.0)
    below = np.maximum(below, 0.0)
    midway = (cut + below) / 2
    midway = np.where(midway > below, midway, cut)           # adjacent floats: stay on the candidate
    return np.where(best > 0, np.clip(midway, low, high), DEFAULT_THRESHOLD)


@dataclass
class RankedScores:
    """Each label's images sorted by score, high to low, with running counts of true positives."""

    scores: np.ndarray       # (N, C) sorted scores
    y: np.ndarray            # (N, C) labels in that order, as floats
    tps: np.ndarray          # (N, C) positives among the first i + 1
    is_end: np.ndarray       # (N, C) True at the last image of each group of tied scores


def rank_scores(y_true: np.ndarray, proba: np.ndarray) -> RankedScores:
    order = np.argsort(-proba, axis=0, kind="stable")
    scores = np.take_along_axis(proba, order, axis=0)
    y = np.take_along_axis(y_true, order, axis=0).astype(np.float64)
    is_end = np.ones(scores.shape, dtype=bool)
    is_end[:-1] = scores[1:] != scores[:-1]
    return RankedScores(scores, y, np.cumsum(y, axis=0), is_end)


def average_precision(y_true, proba) -> np.ndarray:
    """Each label's average precision (C,), as scikit-learn's average_precision_score: the sum over
    distinct scores s (high to low) of (recall at s - recall at the previous score) * precision at s.
    NaN for a label without a positive."""
    y_true, proba = np.asarray(y_true), np.asarray(proba, dtype=np.float64)
    n = len(y_true)
    if n == 0:
        return np.full(y_true.shape[1], np.nan)
    ranked = rank_scores(y_true, proba)
    precision = ranked.tps / np.arange(1, n + 1)[:, None]
    # A positive raises recall by 1/P at the end of its group of tied scores, where the precision
    # of that step is taken, so each positive contributes the precision at its group's end.
    group_end = np.where(ranked.is_end, np.arange(n)[:, None], n)
    group_end = np.minimum.accumulate(group_end[::-1], axis=0)[::-1]
    step_precision = np.take_along_axis(precision, group_end, axis=0)
    total = ranked.tps[-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (ranked.y * step_precision).sum(0) / total, np.nan)
