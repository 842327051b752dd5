"""k-nearest neighbours on pixels or feature vectors (embeddings): memorise, then vote."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from imgcls.data.dataset import ImageDataset
from imgcls.errors import ImgclsValueError
from imgcls.models.base import Capabilities, Classifier
from imgcls.models.distance import METRICS, ExactSearch
from imgcls.models.inputs import TrainingData, rows
from imgcls.models.registry import register
from imgcls.progress import progress_bar

WEIGHTS = ("uniform", "distance")


@register("knn")
@dataclass(repr=False, eq=False)
class KNNClassifier(Classifier):
    """k-nearest neighbours with L1 or L2 distance and a majority vote.

    weights="distance" weighs each neighbour by 1/distance (neighbours at distance 0, if any,
    take the whole vote), as scikit-learn does.

    Ties in the vote go to the tied class whose closest member is nearest to the query, so
    the answer never depends on class order; without tied votes this is the plain majority.

    Multi-label data: a label's probability is the (weighted) share of the k neighbours that
    carry it, and the label is predicted where that share reaches its threshold.

    X: images (uint8 pixels, compared exactly in integers) or feature vectors (N, D), such as
    embeddings, compared in float64 after a float32 candidate search.
    """

    description = "k-nearest neighbours on pixels or features, L1/L2 distance, majority or distance-weighted vote"
    capabilities: ClassVar[Capabilities] = Capabilities(takes_features=True, explained_by="neighbours")

    k: int = 5
    metric: str = "l2"
    weights: str = "uniform"

    @property
    def logits_are_votes(self) -> bool:
        return True

    def check_params(self) -> None:
        if not isinstance(self.k, int) or self.k < 1:
            raise ImgclsValueError(f"k must be a positive whole number, not {self.k!r}")
        if self.metric not in METRICS:
            raise ImgclsValueError(f"unknown metric {self.metric!r}; valid: {', '.join(METRICS)}")
        if self.weights not in WEIGHTS:
            raise ImgclsValueError(f"unknown weights {self.weights!r}; valid: {', '.join(WEIGHTS)}")

    def _fit(self, data: TrainingData, validation: ImageDataset | None = None, **_) -> None:
        self.reference_ = rows(data).contiguous()
        self.labels_ = data.labels.clone()
        self._search = ExactSearch(self.reference_, self.metric)   # made here: predict leaves the model as it is

    def kneighbors(self, X, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Distances and indices of the k nearest training examples, nearest first."""
        distances, indices = self._neighbours(self._inputs(X), k or self.k)
        return distances.numpy(), indices.numpy()

    def _decide(self, inputs: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        return predictions_from_votes(*self._votes(inputs), self.task_)

    def _predict_proba(self, inputs: torch.Tensor) -> torch.Tensor:
        votes, _ = self._votes(inputs)
        return as_probabilities(votes, self.task_.multi_label)

    def _votes(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        distances, indices = self._neighbours(inputs, min(self.k, len(self.labels_)))
        return vote(distances, self.labels_[indices], len(self.class_names_), self.weights)

    def _neighbours(self, inputs: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        queries = inputs.reshape(len(inputs), -1)
        with progress_bar(len(queries) if len(queries) >= 2000 else 0, f"kNN ({self.metric}, k={k})") as advance:
            return self._search.search(queries, k, progress=advance)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {"reference": self.reference_, "labels": self.labels_}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.reference_, self.labels_ = tensors["reference"], tensors["labels"]
        self._search = ExactSearch(self.reference_, self.metric)

    def __getstate__(self) -> dict:
        # The search holds engine state (a compiled kernel's prepared rows) that is rebuilt, not pickled.
        state = super().__getstate__()
        return {k: v for k, v in state.items() if k != "_search"}

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        if "reference_" in state:
            self._search = ExactSearch(self.reference_, self.metric)


def vote(distances: torch.Tensor, labels: torch.Tensor, n_classes: int, weights: str = "uniform"
         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per query and class: summed vote weight, and the rank of the class's nearest neighbour (k if none).

    distances and labels are (Q, k), nearest first; for multi-hot labels (Q, k, C) the vote of a
    label is the weighted share of the neighbours carrying it (and there are no ranks).
    weights="distance" weighs by 1/distance; neighbours at distance 0, if any, take the whole
    vote (as scikit-learn does).
    """
    k = labels.shape[1]
    weight = torch.ones_like(distances, dtype=torch.float64)
    if weights == "distance":
        exact = distances == 0
        weight = torch.where(exact.any(1, keepdim=True), exact.double(), 1 / distances.double().clamp_min(1e-300))
    if labels.ndim == 3:
        share = (weight[:, :, None] * labels.double()).sum(1) / weight.sum(1, keepdim=True)
        return share, torch.empty(0)
    votes = torch.zeros(len(labels), n_classes, dtype=torch.float64).scatter_add_(1, labels, weight)
    ranks = torch.arange(k).expand_as(labels)
    first_rank = torch.full((len(labels), n_classes), k).scatter_reduce_(1, labels, ranks, "amin")
    return votes, first_rank


def predictions_from_votes(votes: torch.Tensor, first_rank: torch.Tensor, task) -> tuple[np.ndarray, np.ndarray]:
    """(predictions, probabilities) from a vote: the tie-broken top class, or for multi-label data
    every label whose share of the neighbours reaches its threshold."""
    proba = as_probabilities(votes, task.multi_label).numpy()
    if task.multi_label:
        return task.decide(proba), proba
    return decide(votes, first_rank).numpy(), proba


def as_probabilities(votes: torch.Tensor, multi_label: bool) -> torch.Tensor:
    """Votes as probabilities: each class's share of the vote; multi-label shares are already per label."""
    return votes if multi_label else votes / votes.sum(1, keepdim=True)


def decide(votes: torch.Tensor, first_rank: torch.Tensor) -> torch.Tensor:
    """Argmax of votes; among tied classes, the one whose nearest member ranks first."""
    best = votes.max(1, keepdim=True).values
    tied = torch.isclose(votes, best, rtol=1e-12, atol=0)
    return torch.where(tied, first_rank, torch.iinfo(torch.int64).max).argmin(1)
