"""Models that explain themselves in their own terms: kNN by its neighbours, linear by its templates."""

from __future__ import annotations

import numpy as np
import torch

from imgcls.explain.results import Explanation, Neighbour


def explain_knn(model, images: torch.Tensor, picks: list[tuple[int, int, bool]], proba: np.ndarray
                ) -> list[Explanation]:
    """The k nearest training images of each image (model.kneighbors), and a map splitting the
    distance to the nearest training image of the target class into its pixels."""
    distances, indices = model.kneighbors(images)
    reference = model.reference_
    labels = model.labels_
    shape = images.shape[1:]
    out = []
    for i, c, above in picks:
        neighbours = [Neighbour(int(j), _label_text(model, labels[j]), float(d))
                      for d, j in zip(distances[i], indices[i])]
        nearest = _nearest_of_class(model, images[i], c, indices[i])
        difference = images[i].double() - reference[nearest].reshape(shape).double()
        per_pixel = difference.abs() if model.metric == "l1" else difference.square()
        out.append(Explanation(i, model.class_names_[c], c, float(proba[i, c]), "neighbours",
                               (-per_pixel.sum(0)).float().numpy(), neighbours=neighbours,
                               above_threshold=above))
    return out


def explain_linear(model, images: torch.Tensor, picks: list[tuple[int, int, bool]], proba: np.ndarray
                   ) -> list[Explanation]:
    """W's row for the target class as an image, and the template times the standardised image
    (the features the model scores, (x - mean) / std per pixel): the map plus the bias is the
    class score."""
    prep = model.preprocessing_
    shape = (prep.channels, *prep.size)
    features = model._features(images.reshape(len(images), -1).double()).double()
    out = []
    for i, c, above in picks:
        weight = model.weight_[c].double()
        contribution = (weight * features[i]).reshape(shape).sum(0)
        out.append(Explanation(i, model.class_names_[c], c, float(proba[i, c]), "template",
                               contribution.float().numpy(), template=weight.reshape(shape).float().numpy(),
                               above_threshold=above))
    return out


def _nearest_of_class(model, image: torch.Tensor, c: int, neighbour_rows) -> int:
    """The row of the nearest training image carrying class c: among the k neighbours where one
    does, else over the whole training set (an explained label the vote did not see)."""
    for j in neighbour_rows:
        if _has(model.labels_[j], c):
            return int(j)
    rows = torch.nonzero(model.labels_[:, c] == 1 if model.labels_.ndim == 2 else model.labels_ == c).flatten()
    if not len(rows):
        return int(neighbour_rows[0])
    candidates = model.reference_[rows].double()
    query = image.reshape(1, -1).double()
    distance = (candidates - query).abs().sum(1) if model.metric == "l1" else (candidates - query).square().sum(1)
    return int(rows[int(distance.argmin())])


def _has(labels: torch.Tensor, c: int) -> bool:
    return bool(labels[c]) if labels.ndim == 1 else int(labels) == c


def _label_text(model, labels: torch.Tensor) -> str:
    if labels.ndim == 1:       # multi-hot
        return ";".join(model.class_names_[j] for j in torch.nonzero(labels).flatten().tolist())
    return model.class_names_[int(labels)]
