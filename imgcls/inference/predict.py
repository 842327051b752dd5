"""Class probabilities for image files, decoded exactly as the model's training data was."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imgcls.data.images import decode_many, is_image_file
from imgcls.errors import ImgclsError
from imgcls.progress import progress_bar


@dataclass
class Prediction:
    path: str
    labels: list[str]
    scores: list[float]

    def to_dict(self) -> dict:
        return {"path": self.path,
                "predictions": [{"label": l, "score": s} for l, s in zip(self.labels, self.scores)]}


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


def predict_files(model, paths: list[Path], k: int = 5, batch_size: int = 256
                  ) -> tuple[list[Prediction], list[tuple[str, str]]]:
    """Top-k predictions per readable file, and (path, reason) for files that could not be read."""
    predictions, failures = [], []
    k = min(k, len(model.class_names_))
    with progress_bar(len(paths) if len(paths) > 64 else 0, "predicting") as advance:
        for start in range(0, len(paths), batch_size):
            batch = paths[start:start + batch_size]
            images, ok, bad = decode_many(batch, model.preprocessing_)
            failures += [(str(p), reason) for p, reason in bad]
            if ok:
                for i, (labels, scores) in zip(ok, top_k(model.predict_proba(images), model.class_names_, k)):
                    predictions.append(Prediction(str(batch[i]), labels, scores))
            advance(len(batch))
    return predictions, failures
