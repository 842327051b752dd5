"""The classifier contract: fit / predict / predict_proba / score / save / load.

Like scikit-learn: the constructor (a dataclass) only stores hyperparameters, `fit` returns
self, and learned state ends in `_`. Inputs are ImageDatasets or image arrays/tensors of shape
(N, C, H, W) or (N, H, W); labels are class indices, or a multi-hot matrix for multi-label data.

The task (imgcls.task) is learned from the data: `task_` decides how probabilities are made and
read. For multi-label data, `threshold` 0 (the default) chooses each label's threshold on the
validation data to maximise its F1 (0.5 without validation data); a value in (0, 1) is used for
every label. The thresholds are saved with the model.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from imgcls.data.dataset import ImageDataset, as_image_tensor
from imgcls.data.images import Preprocessing
from imgcls.errors import ImgclsError
from imgcls.task import MultiLabel, SingleLabel, Task, check_threshold, choose_thresholds


@dataclass
class Classifier:
    model_name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    learns_from_streams: ClassVar[bool] = False   # True: fit reads a streamed dataset batch by batch
    # How a model explains a decision (imgcls.explain): "network" (attribution maps through its
    # network: Grad-CAM, gradients, occlusion; see NeuralClassifier.attribution_network),
    # "neighbours" (its nearest training images), "template" (its class template times the
    # image), or None (it cannot explain itself: an exported ONNX file has no gradients).
    explained_by: ClassVar[str | None] = None

    # Multi-label data: 0 chooses each label's threshold on validation; (0, 1) sets one for all.
    threshold: float = field(default=0.0, kw_only=True)

    # Learned state, set by fit() or load(): class_names_ (list[str]), preprocessing_
    # (Preprocessing), metrics_ (dict), task_ (SingleLabel or MultiLabel with thresholds).

    def check(self) -> None:
        """Raise ImgclsError for an invalid hyperparameter. Called by create_model and fit."""
        if self.threshold:
            check_threshold(self.threshold)
        self.check_params()

    def check_params(self) -> None:
        """Each classifier's own hyperparameter checks (see check)."""

    def check_can_learn(self, task: Task) -> None:
        """Raise ImgclsError when this classifier, with these hyperparameters, cannot learn data of
        this task (fit calls it; so do commands, before they write anything)."""
        if self.threshold and not task.multi_label:
            raise ImgclsError("threshold applies to multi-label data only; this dataset is single-label")
        self.check_task(task)

    def check_task(self, task: Task) -> None:
        """What a classifier refuses to learn: options that do not apply to this task's data."""

    def input_preprocessing(self) -> Preprocessing | None:
        """How image files should be decoded for this model before it has seen any: a pretrained
        backbone's own size, crop and interpolation. None: the data decides (the usual case)."""
        return None

    @property
    def task_(self) -> Task:
        """The learned task: single-label, or multi-label with its thresholds."""
        return self.__dict__.get("_task", SingleLabel())

    @task_.setter
    def task_(self, task: Task) -> None:
        self.__dict__["_task"] = task

    def get_params(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}

    # -- the contract ---------------------------------------------------------------------
    def fit(self, X, y=None, *, class_names: list[str] | None = None, validation: ImageDataset | None = None,
            **fit_options) -> Classifier:
        """Learn from (X, y) or an ImageDataset. `validation` and `fit_options` (run_dir, resume, ...)
        are used by classifiers trained by gradient descent and ignored by the others."""
        self.check()
        data = as_dataset(X, y, class_names)
        if data.streamed and not self.learns_from_streams:
            raise ImgclsError(f"{self.model_name} needs its training images in memory, and this dataset is streamed "
                              "from its files (too large for --memory-budget, or --data-mode stream); train a "
                              "neural network, or use --data-mode memory")
        self.check_can_learn(data.task)
        self.class_names_ = list(data.class_names)
        self.preprocessing_ = data.preprocessing
        self.metrics_ = {}
        self.task_ = data.task
        self._fit(data, validation=validation, **fit_options)
        if data.multi_label:
            self.task_ = MultiLabel(tuple(self._thresholds_for(validation)))
        return self

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities (N, number of classes): a softmax over classes, or for multi-label
        models each label's own probability."""
        return self._predict_proba(self._images(X)).numpy()

    def predict(self, X) -> np.ndarray:
        """Class indices (N,); for multi-label models a multi-hot matrix (N, labels) of the labels
        at or above their thresholds."""
        return self.task_.decide(self.predict_proba(X))

    def predict_with_proba(self, X) -> tuple[np.ndarray, np.ndarray]:
        """predict and predict_proba in one pass (what evaluation needs)."""
        proba = self.predict_proba(X)
        return self.task_.decide(proba), proba

    def score(self, X, y=None) -> float:
        """Accuracy on (X, y), or on an ImageDataset's own labels; for multi-label models the
        subset accuracy (every label of an image right), as scikit-learn scores them."""
        labels = X.labels.numpy() if isinstance(X, ImageDataset) else np.asarray(y)
        if labels.ndim != (2 if self.task_.multi_label else 1):
            raise ImgclsError(f"a {self.task_.kind} model scored against "
                              f"{'multi-hot' if labels.ndim == 2 else 'class-index'} labels")
        predicted = self.predict(X)
        if predicted.ndim == 2:
            return float((predicted == labels).all(1).mean())
        return float((predicted == labels).mean())

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
    def _thresholds_for(self, validation: ImageDataset | None) -> np.ndarray:
        n = len(self.class_names_)
        if self.threshold:
            return np.full(n, self.threshold)
        if validation is None or not len(validation):
            return MultiLabel().threshold_vector(n)
        if not validation.multi_label or validation.class_names != self.class_names_:
            raise ImgclsError("the validation data must have the training data's labels")
        return choose_thresholds(validation.labels.numpy(), self.predict_proba(validation))

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
        if not isinstance(images, torch.Tensor) and not self.learns_from_streams:
            images = images[:]         # streamed: this model reads its inputs whole, so decode them now
        return images


def as_dataset(X, y=None, class_names: list[str] | None = None) -> ImageDataset:
    if isinstance(X, ImageDataset):
        return X
    if y is None:
        raise ImgclsError("fit(X, y) needs labels y when X is not an ImageDataset")
    return ImageDataset.from_arrays(X, y, class_names)
