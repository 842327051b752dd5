"""Likely label errors, by confident learning (Northcutt et al. 2021) with cleanlab as the engine.

Every image, whichever split it lands in, gets out-of-fold class probabilities: the images are
cut into seeded stratified folds (scikit-learn's StratifiedKFold), and a quick model fitted on
the other folds scores each fold. The model is imgcls's kNN (k=10, distance-weighted) or
scikit-learn's logistic regression on standardised vectors, on the pixels or on a pretrained
network's embeddings (`--features`). cleanlab's `find_label_issues` then flags the images whose
given label the probabilities contradict beyond each class pair's estimated noise rate, ranked
by self-confidence (the out-of-fold probability of the given label), least confident first.

Nothing is moved or relabelled: the findings are reported, and `write_relabel_csv` writes the
suggestions as a manifest to review.
"""

from __future__ import annotations

import csv
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from imgcls.data.splits import stratified_kfold
from imgcls.errors import ImgclsError

LABEL_MODELS = ("knn", "logistic")
KNN_K = 10          # on sklearn digits with 5% of labels flipped, k=10 found more of them than k=5, more precisely


@dataclass
class LabelError:
    """An image whose given label the out-of-fold model contradicts. score: 1 - the probability the
    model gives the given label (1: certainly wrong); probability: that of the suggested class."""

    image: object        # the doctor's ImageRef
    given: str
    suggested: str
    score: float
    probability: float

    def to_dict(self) -> dict:
        return {"path": self.image.name, "split": self.image.split, "given": self.given,
                "suggested": self.suggested, "score": round(self.score, 6),
                "suggested_probability": round(self.probability, 6)}


def out_of_fold_probabilities(X: torch.Tensor, labels: np.ndarray, n_classes: int, model: str = "knn",
                              folds: int = 5, seed: int = 0) -> np.ndarray:
    """Class probabilities (N, n_classes) of every row from a model that never saw it: fitted on the
    other stratified folds. X: uint8 images (N, C, H, W) or feature vectors (N, D)."""
    if model not in LABEL_MODELS:
        raise ImgclsError(f"unknown label model {model!r}; valid: {', '.join(LABEL_MODELS)}")
    proba = np.zeros((len(labels), n_classes))
    for train, held in stratified_kfold(labels, folds, seed):
        proba[held] = _fit_predict(X, labels, train, held, n_classes, model)
    return proba


def _fit_predict(X: torch.Tensor, labels: np.ndarray, train: np.ndarray, held: np.ndarray, n_classes: int,
                 model: str) -> np.ndarray:
    if model == "knn":
        from imgcls.models.registry import create_model
        names = [str(c) for c in range(n_classes)]       # y as class indices: one column per class in every fold
        knn = create_model("knn", k=KNN_K, weights="distance").fit(X[train], labels[train], class_names=names)
        return knn.predict_proba(X[held])
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    flat = X.reshape(len(X), -1).float().numpy()
    # C=0.05: strong regularisation, so a fold's fit does not memorise its own wrong labels
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=0.05, max_iter=300)).fit(flat[train], labels[train])
    proba = np.zeros((len(held), n_classes))
    proba[:, probe.classes_] = probe.predict_proba(flat[held])
    return proba


def rank_label_issues(labels: np.ndarray, proba: np.ndarray) -> np.ndarray:
    """Indices of the likely label errors, least self-confident first (cleanlab's find_label_issues,
    pruned by the estimated noise rates)."""
    try:
        from cleanlab.filter import find_label_issues
    except ImportError as exc:
        raise ImgclsError("--label-errors needs cleanlab: pip install cleanlab") from exc
    with warnings.catch_warnings():     # cleanlab warns about classes it finds no issue in; the report says enough
        warnings.simplefilter("ignore")
        return find_label_issues(labels, proba, filter_by="prune_by_noise_rate",
                                 return_indices_ranked_by="self_confidence")


def find_label_errors(refs: list, X: torch.Tensor, rows: np.ndarray, class_names: list[str], *,
                      model: str = "knn", folds: int = 5, seed: int = 0) -> list[LabelError]:
    """The likely label errors, most likely first, among the images refs[rows], whose vectors
    (uint8 images (N, C, H, W), or feature vectors (N, D)) are X."""
    index = {name: i for i, name in enumerate(class_names)}
    labels = np.asarray([index[refs[r].label] for r in rows], dtype=np.int64)
    proba = out_of_fold_probabilities(X, labels, len(class_names), model, folds, seed)
    found = []
    for i in rank_label_issues(labels, proba).tolist():
        suggested = int(proba[i].argmax())
        found.append(LabelError(refs[rows[i]], class_names[labels[i]], class_names[suggested],
                                float(1 - proba[i, labels[i]]), float(proba[i, suggested])))
    # cleanlab's order is by self-confidence alone; many images give their label no probability at
    # all, and among those the one the model is surest of another class goes first
    return sorted(found, key=lambda e: (-e.score, -e.probability))


def write_relabel_csv(records: list, errors: list[LabelError], path: str | Path) -> Path:
    """A manifest (path,label[,split]) of every file that loaded, with each likely error's suggested
    label in place of its given one, for review: flagged files first, most likely first, with their
    given label and score in extra columns (the manifest reader ignores them). Paths are relative
    to the CSV; the split column appears where the source names splits, as it names them."""
    path = Path(path)
    flagged = {e.image.name: e for e in errors}
    kept = [r for r in records if r.split is not None]
    order = {e.image.name: i for i, e in enumerate(errors)}
    kept.sort(key=lambda r: order.get(r.name, len(order)))
    with_split = any(r.given_split != "all" for r in kept)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", *(["split"] if with_split else []), "given_label", "label_error_score"])
        for r in kept:
            e = flagged.get(r.name)
            writer.writerow([_relative(r.path, path.parent), e.suggested if e else r.label,
                             *([r.given_split] if with_split else []), r.label, f"{e.score:.4f}" if e else ""])
    return path


def _relative(file: Path, folder: Path) -> str:
    try:
        return os.path.relpath(Path(file).resolve(), folder.resolve())
    except ValueError:           # another drive on Windows
        return str(Path(file).resolve())
