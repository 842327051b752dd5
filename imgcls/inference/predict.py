"""Class probabilities for image files, decoded exactly as the model's training data was.

What a prediction holds depends on the model's task. A single-label model's is its top k classes
(k = 5 unless asked), best first. A multi-label model's ranks every label by score (or the top k,
when k is asked for), and adds `chosen`: the labels at or above their thresholds, which is what the
model predicts, best first, and may be empty. A model that abstains (imgcls.models.abstention)
adds `label`: its best class, or "unknown" where the input's rejection score is above the
threshold, and `rejection_score`; the top k are ranked either way. `imgcls predict` and the
server both answer with `Prediction.body()`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imgcls.data.images import is_image_file
from imgcls.data.stream import ImageFiles, image_batches
from imgcls.errors import ImgclsError
from imgcls.models.abstention import UNKNOWN
from imgcls.task import Task

DEFAULT_TOP_K = 5     # labels ranked per image by a single-label model unless k is given


@dataclass
class Prediction:
    path: str
    labels: list[str]                   # ranked, best first
    scores: list[float]
    chosen: list[str] | None = None     # multi-label: the labels at or above their thresholds, best first
    chosen_scores: list[float] | None = None
    rejection_score: float | None = None   # a model that abstains: how unlike its training data
    unknown: bool | None = None            # ... and whether that is above its threshold

    @property
    def label(self) -> str:
        """The answer: "unknown" where the model abstains, else its best class."""
        return UNKNOWN if self.unknown else self.labels[0]

    def body(self) -> dict:
        """{"predictions": [{"label", "score"}, ...]}, "labels" (the chosen ones) for multi-label
        models, and "label" ("unknown" or the best class) with "rejection_score" for models that abstain."""
        out = {"predictions": [{"label": l, "score": s} for l, s in zip(self.labels, self.scores)]}
        if self.chosen is not None:
            out["labels"] = list(self.chosen)
        if self.unknown is not None:
            out = {"label": self.label, **out, "rejection_score": self.rejection_score}
        return out

    def to_dict(self) -> dict:
        return {"path": self.path, **self.body()}


def find_images(inputs: list[str | Path]) -> list[Path]:
    """Files as given, and image files found recursively in folders, in a stable order."""
    found: list[Path] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and is_image_file(p))
        elif path.is_file():
            found.append(path)
        else:
            raise ImgclsError(f"{path}: no such file or folder")
    if not found:
        raise ImgclsError(f"no image files found in {', '.join(map(str, inputs))}")
    return found


def top_k(proba: np.ndarray, class_names: list[str], k: int) -> list[tuple[list[str], list[float]]]:
    order = np.argsort(-proba, axis=1, kind="stable")[:, :k]
    return [([class_names[i] for i in row], [float(p[i]) for i in row]) for row, p in zip(order, proba)]


def ranked_k(task: Task, n_labels: int, k: int | None) -> int:
    """How many labels a prediction ranks: k if given (at most all of them), else DEFAULT_TOP_K for a
    single-label model and every label for a multi-label one."""
    if k is None:
        k = n_labels if task.multi_label else DEFAULT_TOP_K
    return max(1, min(k, n_labels))


def predictions(proba, class_names: list[str], task: Task, k: int | None = None,
                paths: list[str] | None = None, rejection=None, abstention=None) -> list[Prediction]:
    """One Prediction per row of proba (N, labels): the ranked labels (see ranked_k), and for a
    multi-label task the labels its thresholds choose (task.decide, as model.predict does).
    rejection: the rejection scores (N,) of a model that abstains, judged by its abstention."""
    proba = np.asarray(proba)
    paths = paths if paths is not None else [""] * len(proba)
    ranked = top_k(proba, class_names, ranked_k(task, len(class_names), k))
    if not task.multi_label:
        if rejection is None or abstention is None:
            return [Prediction(path, labels, scores) for path, (labels, scores) in zip(paths, ranked)]
        unknown = abstention.rejects(rejection)
        return [Prediction(path, labels, scores, rejection_score=float(r), unknown=bool(u))
                for path, (labels, scores), r, u in zip(paths, ranked, rejection, unknown)]
    chosen = task.decide(proba).astype(bool)
    order = np.argsort(-proba, axis=1, kind="stable")
    return [Prediction(path, labels, scores, [class_names[i] for i in row if hit[i]],
                       [float(p[i]) for i in row if hit[i]])
            for path, (labels, scores), row, hit, p in zip(paths, ranked, order, chosen, proba)]


def predict_files(model, paths: list[Path], k: int | None = None, batch_size: int = 256
                  ) -> tuple[list[Prediction], list[tuple[str, str]]]:
    """Predictions per readable file (k labels ranked, see ranked_k), and (path, reason) for files
    that could not be read. The files are decoded batch_size at a time by DataLoader workers (as a
    streamed dataset is), so a folder of any size needs the memory of a few batches."""
    found, failures = [], []
    files = ImageFiles(paths, model.preprocessing_)
    for rows, images, unreadable in image_batches(files, batch_size, "predicting"):
        failures += [(str(paths[i]), reason) for i, reason in unreadable]
        if len(rows):
            proba, rejection = model.predict_with_rejection(images)
            found += predictions(proba, model.class_names_, model.task_, k, [str(paths[i]) for i in rows.tolist()],
                                 rejection, model.abstention_)
    return found, failures
