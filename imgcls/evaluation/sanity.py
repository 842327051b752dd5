"""Warnings about a trained model that a table of metrics lets slip by: a model no better than
always answering the commonest class, one that answers one class for almost everything, a
network whose training loss never fell or whose validation accuracy stayed near chance, a run
whose validation loss rose for most of it (overfitting), and a learning rate far from the one
the learning-rate finder advised.

Each rule is a pure function that returns its warnings as sentences (none when all is well),
each ending with what to try (model_advice and learning_rate_hint word it for the model: a
position-specific dense head, a learning rate); finish_run gathers them into the run's
report.json (`warnings`), the terminal and report.html.

When is a model "useless"? Its accuracy is compared with the best answer that needs no image,
always naming the commonest class (the majority rate p0), by the share of that rule's errors it
removes: (accuracy - p0) / (1 - p0). Under SKILL_MIN (a fifth) it learnt next to nothing. On
balanced classes this share is Cohen's kappa, and 0.2 is the top of Landis & Koch's (1977)
"slight agreement" band. Unlike a fixed margin in points, it scales with the number of classes:
on 2 balanced classes the line is at 60%, on 10 at 28% (so the 18% of a network that cannot
learn translated digits warns), on 100 at 20.8%; with a 90% majority class, at 92%. A test
split too small to tell is a second case: an accuracy that a one-sided binomial test at the
test-set size does not find above p0 (p > 0.05) says so, whatever its share.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from scipy.stats import binomtest

from imgcls.run_folder import RunFolder, default_folder

SKILL_MIN = 0.2            # a model must remove a fifth of the majority rule's errors (kappa's "slight" band)
SIGNIFICANCE = 0.05        # one-sided binomial test of the test accuracy against the majority rate
ONE_CLASS_SHARE = 0.90     # predictions of one class at least this share...
ONE_CLASS_EXCESS = 0.10    # ...and this much above that class's share of the images
STUCK_LOSS = 0.9           # a training loss still at 90% of chance level (guessing the class frequencies)
RISING_FROM = 0.5          # the best validation loss came in the first half of the epochs...
RISE = 0.10                # ...and the last is 10% above it
LR_FACTOR = 10.0           # the learning rate used over 10x from the finder's advice, either way

# Models that weigh each pixel at its own place: what they learn of an object at one place does
# not carry to another, so objects that move about the image defeat them.
POSITION_SPECIFIC = {
    "alexnet": "AlexNet's dense layers read each cell of a 4x4 grid at its own place",
    "cnn": "the course cnn's dense head is position-specific",
    "lenet5": "LeNet-5's dense layers are position-specific",
    "mlp": "an MLP weighs each pixel at its own place",
    "linear": "a linear model weighs each pixel at its own place",
    "knn": "kNN compares images pixel by pixel at the same places",
}
LABELS_HINT = "check the labels (imgcls doctor DATA --label-errors)"
POOLED = ("--model vgg (convolutions pooled over the whole image), or --model transfer:efficientnet_lite0 "
          "for photographs")


def skill(accuracy: float, chance: float) -> float:
    """The share of the majority rule's errors a model removes: (accuracy - chance) / (1 - chance)."""
    return (accuracy - chance) / (1 - chance) if chance < 1 else 0.0


def model_advice(model: str) -> str:
    """What to try when model (a registry name) learnt next to nothing, for the models whose
    design is the likely cause: a model that pools over the image for a position-specific one."""
    return f"{POSITION_SPECIFIC[model]}; try {POOLED}" if model in POSITION_SPECIFIC else ""


def learning_rate_hint(model: str, lr: float | None, suggested_lr: float | None = None) -> str:
    """A learning rate to try instead of lr: the one imgcls lr-find advised where known, else 10x lower."""
    if suggested_lr:
        return f"try the learning rate imgcls lr-find advised, --lr {suggested_lr:.3g}"
    if lr:
        return (f"try a learning rate 10x lower (--lr {lr / 10:.3g}), or find one with "
                f"imgcls lr-find DATA --model {model}")
    return ""


def useless_model_warnings(y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str],
                           advice: str = "") -> list[str]:
    """A single-label model's test accuracy that removes under SKILL_MIN of the majority rule's
    errors, or that a one-sided binomial test does not find above the majority rate (a test split
    too small to tell); and predictions concentrated on one class far beyond its share of the images."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if not len(y_true):
        return []
    found = []
    n_classes = len(class_names)
    true_share = np.bincount(y_true, minlength=n_classes) / len(y_true)
    majority = int(true_share.argmax())
    chance = float(true_share[majority])
    correct = int(np.sum(y_true == y_pred))
    accuracy = correct / len(y_true)
    then = f": {advice}" if advice else ""
    if skill(accuracy, chance) < SKILL_MIN:
        found.append(f"test accuracy {accuracy:.1%} is close to the {chance:.1%} that always answering the commonest "
                     f"class ({class_names[majority]}) scores: it removes {max(skill(accuracy, chance), 0):.0%} of "
                     f"that rule's errors, under the {SKILL_MIN:.0%} of a model that learnt something; the model "
                     f"learnt next to nothing{then}")
    else:
        p = binomtest(correct, len(y_true), chance, alternative="greater").pvalue
        if p > SIGNIFICANCE:
            found.append(f"test accuracy {accuracy:.1%} on {len(y_true)} test images is not significantly above the "
                         f"{chance:.1%} that always answering the commonest class ({class_names[majority]}) scores "
                         f"(one-sided binomial test, p = {p:.2g}): too few test images to tell whether the model "
                         "learnt anything; hold out more (--test-fraction) or gather more images")
    predicted_share = np.bincount(y_pred, minlength=n_classes) / len(y_pred)
    top = int(predicted_share.argmax())
    if predicted_share[top] >= ONE_CLASS_SHARE and predicted_share[top] >= true_share[top] + ONE_CLASS_EXCESS:
        found.append(f"the model predicts {class_names[top]} for {predicted_share[top]:.1%} of the test images, "
                     f"which are {true_share[top]:.1%} {class_names[top]}: it has collapsed onto one class "
                     "(a learning rate too high, too few epochs, or unscaled inputs)")
    return found


def chance_loss(class_share: np.ndarray) -> float:
    """The cross-entropy (nats) of a model that learnt only the class frequencies: their entropy."""
    share = np.asarray(class_share, dtype=np.float64)
    share = share[share > 0]
    return float(-(share * np.log(share)).sum())


def learning_warnings(history: list[dict], class_share: np.ndarray, advice: str = "") -> list[str]:
    """A single-label network that did not learn, read from its history (one record per epoch);
    one warning naming what showed it, advice (what to try) at its end:

    - a training loss that never fell below STUCK_LOSS of chance level (the entropy of
      class_share, what a model that learnt only the class frequencies scores) over at least 2
      epochs, while validation, where there is any, shows no learning either (mixup or cutmix can
      hold a training loss that high in a run that learns well; validation tells them apart);
    - validation accuracy near chance through the whole run: even its best epoch removes under
      SKILL_MIN of the errors of always answering the commonest class (class_share: each class's
      share, e.g. on the test split, which stratified splits share with val);
    - a training loss that became infinite or NaN.
    """
    losses = [(r["epoch"], r["train_loss"]) for r in history if r.get("train_loss") is not None]
    accuracies = [(r["epoch"], r["val_accuracy"]) for r in history if r.get("val_accuracy") is not None]
    share = np.asarray(class_share, dtype=np.float64)
    if not losses or not len(share):
        return []
    then = f": {advice}" if advice else ""
    broken = next(((e, v) for e, v in losses if not math.isfinite(v)), None)
    if broken:
        return [f"the training loss became {broken[1]} at epoch {broken[0]}: the run diverged{then}"]
    found = []
    majority = float(share.max())
    best_epoch, best = max(accuracies, key=lambda r: r[1]) if accuracies else (None, None)
    learnt = best is not None and skill(best, majority) >= SKILL_MIN
    lowest_epoch, lowest = min(losses, key=lambda r: r[1])
    chance = chance_loss(share)
    if len(losses) >= 2 and not learnt and lowest >= STUCK_LOSS * chance:
        found.append(f"the training loss has not fallen in {len(losses)} epochs ({lowest:.3g} at best, against the "
                     f"{chance:.3g} of a model that learnt only the class frequencies)")
    if best is not None and not learnt:
        found.append(f"validation accuracy stayed near chance through training ({best:.1%} at best, epoch "
                     f"{best_epoch}, against the {majority:.1%} of always answering the commonest class)")
    return [f"{' and '.join(found)}: the network did not learn{then}"] if found else []


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
            f"for this model and dataset: try --lr {suggested:.3g}"]


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
