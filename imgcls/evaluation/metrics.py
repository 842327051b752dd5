"""Classification metrics from labels and class probabilities.

The per-class and averaged precision / recall / F1 / support follow scikit-learn's
`classification_report` exactly (a class never predicted has precision 0, never present recall 0).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from imgcls.task import SingleLabel


@dataclass
class Evaluation:
    class_names: list[str]
    confusion_matrix: np.ndarray          # rows: true class, columns: predicted class
    accuracy: float
    top5_accuracy: float | None
    per_class: dict[str, dict[str, float]]
    macro_avg: dict[str, float]
    weighted_avg: dict[str, float]
    extra: dict = field(default_factory=dict)
    # The raw predictions behind the numbers, for figures; not written to report.json.
    y_true: np.ndarray | None = field(default=None, repr=False)
    y_pred: np.ndarray | None = field(default=None, repr=False)
    proba: np.ndarray | None = field(default=None, repr=False)
    rows: np.ndarray | None = field(default=None, repr=False)   # the data's rows evaluated; None: all

    task: ClassVar[str] = SingleLabel.kind

    @property
    def headline_value(self) -> float:
        """The figure that ranks models: accuracy (mAP for a MultiLabelEvaluation)."""
        return self.accuracy

    def most_confused(self, n: int = 5) -> list[tuple[str, str, int]]:
        """The n largest off-diagonal cells: (true class, predicted class, count)."""
        off = self.confusion_matrix.copy()
        np.fill_diagonal(off, 0)
        cells = np.argsort(-off, axis=None, kind="stable")[:n]
        pairs = [np.unravel_index(c, off.shape) for c in cells]
        return [(self.class_names[i], self.class_names[j], int(off[i, j])) for i, j in pairs if off[i, j] > 0]

    @property
    def support(self) -> int:
        return int(self.confusion_matrix.sum())

    def to_dict(self) -> dict:
        out = {
            "accuracy": self.accuracy,
            "per_class": self.per_class,
            "macro_avg": self.macro_avg,
            "weighted_avg": self.weighted_avg,
            "confusion_matrix": self.confusion_matrix.tolist(),
            "class_names": self.class_names,
            "support": self.support,
            "most_confused": [{"true": t, "predicted": p, "count": c} for t, p, c in self.most_confused()],
        }
        if self.top5_accuracy is not None:
            out["top5_accuracy"] = self.top5_accuracy
        return {**out, **self.extra}

    def headline(self) -> dict[str, float]:
        """The few numbers worth storing with a model."""
        keys = {"accuracy": self.accuracy, "top5_accuracy": self.top5_accuracy,
                "macro_f1": self.macro_avg["f1"], "support": self.support}
        return {k: v for k, v in keys.items() if v is not None}


def confusion_matrix(y_true, y_pred, n_classes: int) -> np.ndarray:
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    return np.bincount(y_true * n_classes + y_pred, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def top_k_accuracy(y_true, proba: np.ndarray, k: int) -> float:
    """Fraction of samples whose true class is among the k highest scores.

    A class tied with the true class counts as ranking above it, so a kNN vote of zero for the
    true class never earns a top-5 hit just because other classes scored zero too.
    """
    y_true = np.asarray(y_true)
    true_score = proba[np.arange(len(y_true)), y_true]
    others_at_least_as_high = (proba >= true_score[:, None]).sum(1) - 1
    return float((others_at_least_as_high < k).mean())


def evaluate(y_true, proba: np.ndarray, class_names: list[str], y_pred=None) -> Evaluation:
    """Metrics for true labels and predicted probabilities (N, C); y_pred defaults to the argmax."""
    y_true = np.asarray(y_true, dtype=np.int64)
    proba = np.asarray(proba)
    y_pred = proba.argmax(1) if y_pred is None else np.asarray(y_pred)
    n = len(class_names)
    cm = confusion_matrix(y_true, y_pred, n)
    tp, predicted, actual = np.diag(cm).astype(float), cm.sum(0).astype(float), cm.sum(1).astype(float)
    precision = np.divide(tp, predicted, out=np.zeros(n), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros(n), where=actual > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(n), where=precision + recall > 0)
    per_class = {name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                        "support": int(actual[i])} for i, name in enumerate(class_names)}
    # Averages over the classes present in y_true or y_pred, as scikit-learn does.
    present = (actual + predicted) > 0
    weights = actual[present] / max(actual.sum(), 1)

    def average(w):
        return {"precision": float(np.sum(precision[present] * w)), "recall": float(np.sum(recall[present] * w)),
                "f1": float(np.sum(f1[present] * w)), "support": int(actual.sum())}
    return Evaluation(
        class_names=list(class_names), confusion_matrix=cm,
        accuracy=float((y_true == y_pred).mean()) if len(y_true) else 0.0,
        top5_accuracy=top_k_accuracy(y_true, proba, 5) if n > 5 else None,
        per_class=per_class,
        macro_avg=average(np.full(present.sum(), 1 / max(present.sum(), 1))),
        weighted_avg=average(weights),
        y_true=y_true, y_pred=y_pred, proba=proba,
    )
