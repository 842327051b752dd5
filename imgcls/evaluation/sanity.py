"""Warnings about a trained model that a table of metrics lets slip by: a model no better than
always answering the commonest class, one that answers one class for almost everything, a run
whose validation loss rose for most of it (overfitting), and a learning rate far from the one
the learning-rate finder advised.

Each rule is a pure function that returns its warnings as sentences (none when all is well);
finish_run gathers them into the run's report.json (`warnings`), the terminal and report.html.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from imgcls.run_folder import RunFolder, default_folder

MAJORITY_MARGIN = 0.05     # accuracy under the majority-class rate plus 5 points: learnt next to nothing
ONE_CLASS_SHARE = 0.90     # predictions of one class at least this share...
ONE_CLASS_EXCESS = 0.10    # ...and this much above that class's share of the images
RISING_FROM = 0.5          # the best validation loss came in the first half of the epochs...
RISE = 0.10                # ...and the last is 10% above it
LR_FACTOR = 10.0           # the learning rate used over 10x from the finder's advice, either way


def useless_model_warnings(y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str]) -> list[str]:
    """A single-label model's test accuracy within MAJORITY_MARGIN of the majority-class rate, and
    predictions concentrated on one class far beyond its share of the images."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if not len(y_true):
        return []
    found = []
    n_classes = len(class_names)
    true_share = np.bincount(y_true, minlength=n_classes) / len(y_true)
    majority = int(true_share.argmax())
    accuracy = float(np.mean(y_true == y_pred))
    if accuracy < true_share[majority] + MAJORITY_MARGIN:
        found.append(f"test accuracy {accuracy:.1%} is within {MAJORITY_MARGIN:.0%} points of the "
                     f"{true_share[majority]:.1%} that always answering the commonest class "
                     f"({class_names[majority]}) scores: the model learnt next to nothing")
    predicted_share = np.bincount(y_pred, minlength=n_classes) / len(y_pred)
    top = int(predicted_share.argmax())
    if predicted_share[top] >= ONE_CLASS_SHARE and predicted_share[top] >= true_share[top] + ONE_CLASS_EXCESS:
        found.append(f"the model predicts {class_names[top]} for {predicted_share[top]:.1%} of the test images, "
                     f"which are {true_share[top]:.1%} {class_names[top]}: it has collapsed onto one class "
                     "(a learning rate too high, too few epochs, or unscaled inputs)")
    return found


def overfitting_warning(history: list[dict]) -> list[str]:
    """Validation loss that rose for most of the run: its lowest came in the first half of the
    epochs, the last is RISE above it, and the training loss kept falling meanwhile."""
    losses = [(r["epoch"], r["val_loss"], r.get("train_loss")) for r in history
              if r.get("val_loss") is not None and np.isfinite(r["val_loss"])]
    if len(losses) < 4:
        return []
    best = min(range(len(losses)), key=lambda i: losses[i][1])
    (best_epoch, best_loss, best_train), (last_epoch, last_loss, last_train) = losses[best], losses[-1]
    falling = best_train is None or last_train is None or last_train < best_train
    if best < RISING_FROM * len(losses) and last_loss > best_loss * (1 + RISE) and falling:
        return [f"validation loss rose from {best_loss:.4g} at epoch {best_epoch} to {last_loss:.4g} at epoch "
                f"{last_epoch} while the training loss fell: the model overfits; fewer epochs, more "
                "augmentation or more regularisation would do better"]
    return []


def lr_advice_warning(lr: float | None, suggested: float | None, source: str = "imgcls lr-find") -> list[str]:
    """A learning rate over LR_FACTOR times from the one the finder suggested (either way)."""
    if not lr or not suggested or lr <= 0 or suggested <= 0:
        return []
    ratio = lr / suggested
    if 1 / LR_FACTOR <= ratio <= LR_FACTOR:
        return []
    direction = "above" if ratio > 1 else "below"
    factor = ratio if ratio > 1 else 1 / ratio
    return [f"learning rate {lr:.3g} is {factor:.0f}x {direction} the {suggested:.3g} that {source} suggested "
            "for this model and dataset"]


def find_lr_advice(out: str | Path, model: str, dataset: str) -> tuple[dict, Path] | None:
    """The learning-rate finder's advice for this model and dataset, where a run can find it: an
    lr_find.json in the run folder, or in lr-find-<model> beside it (lr-find's default --out is
    runs/lr-find-<model>). Advice for another model or dataset (named in the file) is not this run's."""
    out = Path(out)
    beside = RunFolder(out.parent / default_folder("lr-find", model).name)
    for path in (RunFolder(out).lr_find_json, beside.lr_find_json):
        try:
            advice = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(advice, dict) and advice.get("suggested_lr") and advice.get("model") == model \
                and advice.get("dataset") == dataset:
            return advice, path
    return None
