"""The classifier contract: fit / predict / predict_proba / score / save / load.

Like scikit-learn: the constructor (a dataclass) only stores hyperparameters, `fit` returns
self, and learned state ends in `_`. Inputs are ImageDatasets or image arrays/tensors of shape
(N, C, H, W) or (N, H, W); labels are class indices.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from imgcls.data.dataset import ImageDataset, as_image_tensor
from imgcls.data.images import Preprocessing
from imgcls.errors import ImgclsError


class Classifier:
    model_name: ClassVar[str] = ""
    description: ClassVar[str] = ""

    # Learned state, set by fit() or load().
    class_names_: list[str]
    preprocessing_: Preprocessing
    metrics_: dict

    def check_params(self) -> None:
        """Raise ImgclsError for an invalid hyperparameter. Called by create_model and fit."""

    def get_params(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}

    # -- the contract ---------------------------------------------------------------------
    def fit(self, X, y=None, *, class_names: list[str] | None = None, validation: ImageDataset | None = None,
            **fit_options) -> Classifier:
        """Learn from (X, y) or an ImageDataset. `validation` and `fit_options` (run_dir, resume, ...)
        are used by classifiers trained by gradient descent and ignored by the others."""
        self.check_params()
        data = as_dataset(X, y, class_names)
        self.class_names_ = list(data.class_names)
        self.preprocessing_ = data.preprocessing
        self.metrics_ = {}
        self._fit(data, validation=validation, **fit_options)
        return self

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities, shape (N, number of classes)."""
        return self._predict_proba(self._images(X)).numpy()

    def predict(self, X) -> np.ndarray:
        """Class indices, shape (N,)."""
        return self.predict_proba(X).argmax(axis=1)

    def predict_with_proba(self, X) -> tuple[np.ndarray, np.ndarray]:
        """predict and predict_proba in one pass (what evaluation needs)."""
        proba = self.predict_proba(X)
        return proba.argmax(axis=1), proba

    def score(self, X, y=None) -> float:
        """Accuracy on (X, y), or on an ImageDataset's own labels."""
        labels = X.labels.numpy() if isinstance(X, ImageDataset) else np.asarray(y)
        return float((self.predict(X) == labels).mean())

    def save(self, path: str | Path) -> Path:
        from imgcls.models.artifact import save_model
        return save_model(self, path)

    @classmethod
    def load(cls, path: str | Path) -> Classifier:
        from imgcls.models.artifact import load_model
        model = load_model(path)
        if not isinstance(model, cls):
            raise ImgclsError(f"{path} holds a {model.model_name} model, not {cls.model_name}")
        return model

    # -- what each classifier implements ----------------------------------------------------
    def _fit(self, data: ImageDataset, validation: ImageDataset | None = None, **fit_options) -> None:
        raise NotImplementedError

    def _predict_proba(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Learned tensors to save (safetensors)."""
        raise NotImplementedError

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        raise NotImplementedError

    # -- helpers ------------------------------------------------------------------------------
    @property
    def is_fitted(self) -> bool:
        return hasattr(self, "class_names_")

    def _images(self, X) -> torch.Tensor:
        if not self.is_fitted:
            raise ImgclsError(f"this {self.model_name} model is not fitted yet; call fit() first")
        images = X.images if isinstance(X, ImageDataset) else as_image_tensor(X)
        expected = (self.preprocessing_.channels, *self.preprocessing_.size)
        if tuple(images.shape[1:]) != expected:
            raise ImgclsError(f"images of shape {tuple(images.shape[1:])} given to a model trained on {expected} "
                              "(channels, height, width)")
        return images


def as_dataset(X, y=None, class_names: list[str] | None = None) -> ImageDataset:
    if isinstance(X, ImageDataset):
        return X
    if y is None:
        raise ImgclsError("fit(X, y) needs labels y when X is not an ImageDataset")
    return ImageDataset.from_arrays(X, y, class_names)
