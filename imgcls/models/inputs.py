"""What a classifier takes as X and y, read with scikit-learn's own validation.

X is one of:

- an ImageDataset (its labels are class indices into its class names);
- images: an array or tensor (N, H, W), (N, C, H, W) or (N, H, W, C), C in 1 or 3, turned
  into uint8 pixels by the pixel rule (imgcls.data.dataset.as_image_tensor);
- feature vectors: a 2-D array-like (N, D) (embeddings; scikit-learn's `load_digits().data`; a
  DataFrame), taken as they are, as float64 (float32 stays float32), for the classifiers that
  take them (`capabilities.takes_features`: knn and linear). scikit-learn's `validate_data` reads them, so
  NaN, infinity, sparse matrices, complex numbers and a wrong number of features are refused
  with its messages, and `n_features_in_` / `feature_names_in_` are set as it sets them.

y is the labels of any kind a scikit-learn classifier takes: numbers or strings, contiguous or
not ({0, 5} is two classes); `classes_` is their sorted distinct values and predict returns
them. With class_names, y holds class indices into class_names (imgcls's own convention, and an
ImageDataset's), and `classes_` is 0..C-1. A multi-hot 0/1 matrix (N, C) is multi-label data.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.utils import check_array
from sklearn.utils.multiclass import check_classification_targets, type_of_target
from sklearn.utils.validation import column_or_1d, validate_data

from imgcls.data.dataset import ImageDataset, LabelledRows, as_image_tensor, as_label_tensor
from imgcls.errors import ImgclsError, ImgclsValueError


@dataclass
class FeatureSet(LabelledRows):
    """Feature vectors (N, D) with their labels: what knn and linear learn from when X is not images."""

    features: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    streamed = False
    preprocessing = None       # no images, so nothing decodes files for this model

    def __post_init__(self) -> None:
        self.labels = as_label_tensor(self.labels, len(self.class_names))
        if len(self.features) != len(self.labels):
            raise ImgclsValueError(f"{len(self.features)} feature vectors but {len(self.labels)} labels")



TrainingData = ImageDataset | FeatureSet


def rows(data: TrainingData) -> torch.Tensor:
    """Each example as one row (N, D): feature vectors as they are, images flattened."""
    return data.features if isinstance(data, FeatureSet) else data.images.reshape(len(data), -1)


@contextmanager
def imgcls_errors():
    """scikit-learn's ValueErrors as ImgclsValueError (still ValueErrors), so the CLI prints one line."""
    try:
        yield
    except ImgclsError:
        raise
    except ValueError as exc:
        # One line, without the dump of the offending array that some of scikit-learn's messages hold.
        lines = [line.strip() for line in str(exc).splitlines() if line.strip() and not line.startswith("array=")]
        raise ImgclsValueError(" ".join(lines) or type(exc).__name__) from exc


def holds_images(X) -> bool:
    """Whether X is images (an ImageDataset, or 3 or 4 dimensions) rather than feature vectors (2)."""
    if isinstance(X, ImageDataset):
        return True
    ndim = getattr(X, "ndim", None)          # arrays, tensors, DataFrames, sparse matrices
    return (ndim if isinstance(ndim, int) else np.asarray(X).ndim) >= 3


def training_data(model, X, y, class_names: list[str] | None) -> tuple[TrainingData, np.ndarray]:
    """(what the model learns from, classes_) for fit(X, y); sets n_features_in_ (and
    feature_names_in_ for a DataFrame) on the model, and _multi_hot_dtype for multi-label y."""
    model.__dict__.pop("_multi_hot_dtype", None)
    if isinstance(X, ImageDataset):
        _fitted_on_images(model, X.images.shape)
        return X, np.arange(X.num_classes)
    if y is None:
        raise ImgclsValueError(f"{type(model).__name__} requires y to be passed, but the target y is None "
                               "(only an ImageDataset carries its own labels)")
    with imgcls_errors():
        if not holds_images(X):
            features = read_features(model, X, reset=True)
            labels, names, classes = read_labels(y, class_names)
            data = FeatureSet(features, labels, names)
        else:
            images = as_image_tensor(X)
            if not len(images):
                raise ImgclsValueError(f"Found array with 0 sample(s) (shape={tuple(images.shape)}) while a "
                                       "minimum of 1 is required")
            labels, names, classes = read_labels(y, class_names)
            _fitted_on_images(model, images.shape)
            data = ImageDataset(images, labels, names)
    if labels.ndim == 2:     # scikit-learn expects multi-label predictions in the dtype of y
        model._multi_hot_dtype = labels.dtype
    return data, classes


def _fitted_on_images(model, shape) -> None:
    """n_features_in_ for images: the values in one image (C x H x W); images have no feature names."""
    model.n_features_in_ = int(np.prod(shape[1:]))
    model.__dict__.pop("feature_names_in_", None)     # a refit on images forgets a DataFrame's columns


def read_features(model, X, *, reset: bool) -> torch.Tensor:
    """Feature vectors (N, D) as a float tensor, checked by scikit-learn (reset: as in fit)."""
    if not model.capabilities.takes_features:
        raise ImgclsValueError(f"{model.model_name or type(model).__name__} takes images (N, H, W) or (N, C, H, W), "
                               f"not an array of shape {np.shape(X)}; knn and linear also take feature vectors "
                               "(N, D)")
    if isinstance(X, torch.Tensor):
        X = X.detach().cpu().numpy()
    with imgcls_errors():
        X = validate_data(model, X, reset=reset, dtype=[np.float64, np.float32], order="C")
    return torch.from_numpy(np.array(X) if not X.flags.writeable else X)


def read_labels(y, class_names: list[str] | None) -> tuple[np.ndarray, list[str], np.ndarray]:
    """(class indices (N,) or a multi-hot matrix (N, C), class names, classes_) from any labels y."""
    if isinstance(y, torch.Tensor):
        y = y.detach().cpu().numpy()
    y = check_array(y, ensure_2d=False, dtype=None, input_name="y")
    if y.ndim == 2 and y.shape[1] > 1:
        if type_of_target(y) != "multilabel-indicator":
            raise ImgclsValueError(f"labels must be one label per example (N,) or a multi-hot 0/1 matrix (N, C); "
                                   f"got {type_of_target(y)} labels of shape {y.shape}")
        names = list(class_names) if class_names is not None else [str(c) for c in range(y.shape[1])]
        return y, names, np.arange(y.shape[1])
    y = column_or_1d(y, warn=True)
    check_classification_targets(y)
    if class_names is not None:
        if y.dtype.kind not in "iub" and not (y.dtype.kind == "f" and np.all(y == np.round(y))):
            raise ImgclsValueError(f"with class_names, y holds class indices 0..{len(class_names) - 1}; "
                                   f"got labels of type {y.dtype}")
        return y, list(class_names), np.arange(len(class_names))
    classes, indices = np.unique(y, return_inverse=True)
    return indices, [str(c) for c in classes], classes


def classes_to_json(classes: np.ndarray) -> dict:
    """classes_ as saved in a model file: its values and dtype."""
    values = classes.tolist()
    if classes.dtype.kind not in "biufU" and not all(isinstance(v, (str, int, float, bool)) for v in values):
        raise ImgclsValueError("class labels must be numbers or strings for the model to be saved")
    return {"values": values, "dtype": classes.dtype.str if classes.dtype.kind in "biufU" else "object"}


def classes_from_json(saved: dict | None, n_classes: int) -> np.ndarray:
    """classes_ from a model file; files saved before classes_ existed predicted class indices."""
    if not saved:
        return np.arange(n_classes)
    dtype = object if saved["dtype"] == "object" else np.dtype(saved["dtype"])
    return np.array(saved["values"], dtype=dtype)
