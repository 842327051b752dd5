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
        """How many of a batch's predictions are right (for a running training accuracy)."""
        return float((logits.argmax(1) == targets).sum())

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
        """Images whose whole label set is right at threshold 1/2 (subset accuracy's numerator)."""
        return float(((logits > 0) == targets.bool()).all(1).sum())

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
    """Per label, the threshold that maximises that label's F1 on (y_true, proba): validation data.

    Every distinct score is a candidate cut (predict the label where proba >= cut). Of the best
    cuts the highest is taken, and the threshold is placed midway between it and the next lower
    score, so that new images scoring a little below the chosen one still count. A label
    without positives keeps DEFAULT_THRESHOLD. Thresholds stay strictly inside (0, 1).
    """
    y_true, proba = np.asarray(y_true).astype(bool), np.asarray(proba, dtype=np.float64)
    thresholds = np.full(proba.shape[1], DEFAULT_THRESHOLD)
    for label in range(proba.shape[1]):
        positives = int(y_true[:, label].sum())
        if positives == 0:
            continue
        order = np.argsort(-proba[:, label], kind="stable")
        scores, hits = proba[order, label], y_true[order, label]
        tp = np.cumsum(hits)
        predicted = np.arange(1, len(scores) + 1)
        last_of_tie = np.r_[scores[1:] != scores[:-1], True]      # a cut lands after a whole tie group
        f1 = np.where(last_of_tie, 2 * tp / (predicted + positives), -1)
        best = int(np.argmax(f1))                                  # first = highest cut among the best
        below = scores[best + 1] if best + 1 < len(scores) else 0.0
        thresholds[label] = (scores[best] + below) / 2
    return np.clip(thresholds, 1e-6, 1 - 1e-6)
