"""How well a single-label model's probabilities are calibrated: ECE, NLL, Brier score and the
reliability diagram, before and after the model's calibration (imgcls.models.calibration).

- ECE, expected calibration error: the top-1 confidences in 15 equal-width bins ([0, 1/15),
  [1/15, 2/15), ..., [14/15, 1]); the mean over images of |accuracy - mean confidence| of their bin.
- NLL: mean -log p(true class) (scikit-learn's log_loss).
- Brier score: mean over images of the squared distance between the probability vector and the
  one-hot truth, summed over classes (0 best, 2 worst; scikit-learn's brier_score_loss, unscaled).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

ECE_BINS = 15
BINS_TEXT = f"{ECE_BINS} equal-width confidence bins"


@dataclass(frozen=True)
class Reliability:
    """Per confidence bin: how many images, their accuracy and their mean top-1 confidence."""

    edges: np.ndarray          # (bins + 1,)
    counts: np.ndarray         # (bins,)
    accuracy: np.ndarray       # (bins,), 0 where a bin is empty
    confidence: np.ndarray     # (bins,), 0 where a bin is empty

    @property
    def ece(self) -> float:
        total = self.counts.sum()
        return float((self.counts * np.abs(self.accuracy - self.confidence)).sum() / total) if total else 0.0


def reliability(y_true, proba, bins: int = ECE_BINS) -> Reliability:
    """Top-1 confidences of proba (N, C) binned into `bins` equal-width bins, against y_true (N,)."""
    proba = np.asarray(proba, dtype=np.float64)
    confidence, predicted = proba.max(1), proba.argmax(1)
    correct = (predicted == np.asarray(y_true)).astype(np.float64)
    which = np.minimum((confidence * bins).astype(np.int64), bins - 1)    # 1.0 joins the last bin
    counts = np.bincount(which, minlength=bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.nan_to_num(np.bincount(which, correct, bins) / counts)
        mean_confidence = np.nan_to_num(np.bincount(which, confidence, bins) / counts)
    return Reliability(np.linspace(0, 1, bins + 1), counts.astype(np.int64), accuracy, mean_confidence)


def expected_calibration_error(y_true, proba, bins: int = ECE_BINS) -> float:
    return reliability(y_true, proba, bins).ece


def calibration_metrics(y_true, proba) -> dict[str, float]:
    """ece, nll and brier of probabilities (N, C) for class indices y_true (N,)."""
    from sklearn.metrics import brier_score_loss, log_loss
    y_true, proba = np.asarray(y_true), np.asarray(proba, dtype=np.float64)
    # float32 probabilities sum to 1 within float32 rounding, more than scikit-learn allows in float64
    proba = proba / proba.sum(1, keepdims=True)
    labels = np.arange(proba.shape[1])
    return {"ece": expected_calibration_error(y_true, proba),
            "nll": float(log_loss(y_true, proba, labels=labels)),
            "brier": float(brier_score_loss(y_true, proba, labels=labels, scale_by_half=False))}


def calibration_summary(y_true, before, after, calibration: dict, split: str) -> dict:
    """What report.json records: the calibration (method, its parameters, where it was fitted),
    the split measured, the binning, and the metrics before and after."""
    return {**calibration, "fitted_on": "validation", "measured_on": split, "ece_bins": BINS_TEXT,
            "before": calibration_metrics(y_true, before), "after": calibration_metrics(y_true, after)}


def plot_reliability(y_true, before, after, path: str | Path, split: str = "test") -> Path:
    """Reliability diagrams side by side, before and after calibration: each bin's accuracy
    against its mean confidence (the diagonal is perfect calibration), with its ECE."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6), dpi=110, sharey=True)
    for ax, proba, title in zip(axes, (before, after), ("before calibration", "after calibration")):
        r = reliability(y_true, proba)
        width = np.diff(r.edges)
        shown = r.counts > 0
        ax.bar(r.edges[:-1][shown], r.accuracy[shown], width=width[shown], align="edge", color="#7aa6e8",
               edgecolor="#2f6fde", label="accuracy")
        gap = r.confidence[shown] - r.accuracy[shown]
        ax.bar(r.edges[:-1][shown], np.abs(gap), bottom=np.minimum(r.accuracy[shown], r.confidence[shown]),
               width=width[shown], align="edge", fill=False, hatch="//", edgecolor="#d64545",
               label="gap to the bin's mean confidence")
        ax.plot([0, 1], [0, 1], color="#1d2330", linewidth=1, linestyle="--", label="perfect calibration")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence (top-1 probability)")
        ax.set_title(f"{title}: ECE {r.ece:.4f}")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"accuracy ({split} split)")
    axes[0].legend(loc="upper left", fontsize=8)
    fig.suptitle(f"Reliability diagram ({BINS_TEXT})")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
