"""Probability calibration fitted on validation data, saved with the model and applied by predict_proba.

Two kinds, both single-label (see below for multi-label):

- temperature scaling (Guo et al. 2017), for models with logits (every network, transfer probe
  and finetune): softmax(z / T), one T per model, fitted by minimising the validation negative
  log-likelihood. The predicted class never changes. T is applied to the logits in one place,
  NeuralClassifier.calibrated_logits, so everything reading logits (probabilities, TTA, the ONNX
  graph, rejection scores) sees the same calibrated values.
- sigmoid (Platt) or isotonic regression per class, one-vs-rest and renormalised, as
  scikit-learn's CalibratedClassifierCV: fitted by CalibratedClassifierCV itself on the frozen
  model (FrozenEstimator), reading what it reads (decision_function where the model has one,
  as linear does, else predict_proba), and applied here from the fitted parameters, which are
  JSON in the model file. The predicted class is the argmax of the calibrated probabilities, as
  scikit-learn predicts, so it can differ from the uncalibrated model's.

Multi-label models are not calibrated: each label already has its own decision threshold chosen
on validation (imgcls.task), CalibratedClassifierCV is single-label, and rescaling their sigmoids
would move those thresholds. Calibrating one is an error that says so.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from imgcls.data.dataset import ImageDataset
from imgcls.data.stream import image_batches
from imgcls.errors import ImgclsError
from imgcls.runtime import rows_per_read, tta_views

METHODS = ("temperature", "sigmoid", "isotonic")
# A fitted temperature is kept within these bounds: a validation split the model gets entirely
# right drives the likelihood's optimum towards T = 0 (a hard argmax), which is no calibration.
TEMPERATURE_BOUNDS = (0.01, 100.0)


@dataclass(frozen=True)
class Temperature:
    """softmax(logits / temperature)."""

    temperature: float
    method: ClassVar[str] = "temperature"
    in_logits: ClassVar[bool] = True       # applied where logits are made, not to probabilities

    def scale(self, logits: torch.Tensor) -> torch.Tensor:
        return logits / self.temperature

    def to_dict(self) -> dict:
        return {"method": self.method, "temperature": self.temperature}


@dataclass(frozen=True)
class OneVsRest:
    """scikit-learn's calibrated probabilities (CalibratedClassifierCV's _CalibratedClassifier):
    each class's response column through its own calibrator, then normalised to sum to one (the
    uniform distribution where every calibrator says 0); for two classes one calibrator on the
    second class's column, and 1 - p for the first.

    params: per calibrator, {"a", "b"} of a sigmoid 1 / (1 + exp(a s + b)) (Platt), or the
    "x" and "y" thresholds of an isotonic regression (linear between them, clipped at the ends)."""

    method: str
    params: tuple[dict, ...]
    in_logits: ClassVar[bool] = False

    def proba(self, response: np.ndarray) -> np.ndarray:
        """Calibrated probabilities (N, C) from the model's raw response: decision scores or
        probabilities (N, C), or for two classes (N,) or (N, 2)."""
        response = np.asarray(response, dtype=np.float64)
        binary = len(self.params) == 1
        if binary and response.ndim == 2:
            response = response[:, -1]
        columns = response.reshape(len(response), -1).T
        calibrated = np.stack([self._apply(p, s) for p, s in zip(self.params, columns)], axis=1)
        if binary:
            proba = np.concatenate([1 - calibrated, calibrated], axis=1)
        else:
            total = calibrated.sum(1, keepdims=True)
            proba = np.divide(calibrated, total, out=np.full_like(calibrated, 1 / calibrated.shape[1]),
                              where=total != 0)
        proba[(proba > 1) & (proba <= 1 + 1e-5)] = 1.0     # as scikit-learn rounds
        return proba

    def _apply(self, params: dict, scores: np.ndarray) -> np.ndarray:
        if self.method == "sigmoid":
            return 1 / (1 + np.exp(params["a"] * scores + params["b"]))
        x, y = np.asarray(params["x"]), np.asarray(params["y"])
        return np.interp(np.clip(scores, x[0], x[-1]), x, y)

    def to_dict(self) -> dict:
        return {"method": self.method, "calibrators": list(self.params)}


Calibration = Temperature | OneVsRest


def calibration_from_dict(saved: dict | None) -> Calibration | None:
    """The calibration a model file or export records; None when it has none (every file saved
    before calibration existed)."""
    if not saved:
        return None
    method = saved.get("method")
    if method == "temperature":
        return Temperature(float(saved["temperature"]))
    if method in ("sigmoid", "isotonic"):
        return OneVsRest(method, tuple(saved["calibrators"]))
    raise ImgclsError(f"unknown calibration method {method!r}; valid: {', '.join(METHODS)}")


def default_method(model) -> str | None:
    """What training fits by default: temperature scaling where the model has logits (networks,
    transfer probe and finetune); None for the others (kNN votes, linear scores), whose sigmoid
    or isotonic calibration can change predictions and is asked for (imgcls calibrate)."""
    return "temperature" if model.has_logits and not model.task_.multi_label else None


def check_method(model, method: str, task=None) -> None:
    """Raise ImgclsError, before any work, when `method` (or training's "auto" and "none") cannot
    calibrate this model on data of `task` (default: the model's own)."""
    if method not in ("auto", "none", *METHODS):
        raise ImgclsError(f"unknown calibration {method!r}; valid: auto, none, {', '.join(METHODS)}")
    if method in ("auto", "none"):
        return
    if (task or model.task_).multi_label:
        raise ImgclsError("multi-label models are not calibrated: each label keeps the decision threshold chosen "
                          "on validation (calibration here is for single-label models)")
    if method == "temperature" and not model.has_logits:
        raise ImgclsError(f"temperature scaling needs a network's logits, and this {model.model_name} model has "
                          "none; use method sigmoid or isotonic")


def calibrate(model, X, y=None, method: str = "temperature"):
    """A copy of the fitted model calibrated on (X, y), or on an ImageDataset (the validation
    split); the model itself is left as it is. An existing calibration is replaced (fitted on the
    uncalibrated model)."""
    calibrated = copy.copy(model)
    calibrated.calibration_ = fit_calibration(model, X, y, method)
    return calibrated


def uncalibrated(model):
    """A copy of model without its calibration (the model itself where it has none)."""
    return model if model.calibration_ is None else model.without_calibration()


def fit_calibration(model, X, y=None, method: str = "temperature") -> Calibration:
    """Fit `method` on (X, y) or an ImageDataset for the uncalibrated model; see the module docstring."""
    if method not in METHODS:
        raise ImgclsError(f"unknown calibration method {method!r}; valid: {', '.join(METHODS)}")
    model._check_fitted()
    check_method(model, method)
    model = uncalibrated(model)
    if method == "temperature" and isinstance(X, ImageDataset) and X.streamed:
        views, labels = _streamed_views(model, X)     # only logits are kept, never the decoded split
    else:
        inputs, labels = calibration_data(model, X, y)
        views = temperature_views(model, inputs) if method == "temperature" and len(labels) else None
    if not len(labels):
        raise ImgclsError("nothing to calibrate on: the validation data is empty")
    if method == "temperature":
        return Temperature(fit_temperature(views, labels))
    return _fit_one_vs_rest(model, inputs, labels, method)


def calibration_data(model, X, y=None) -> tuple[np.ndarray | torch.Tensor, np.ndarray]:
    """(inputs as the model takes them, class indices into model.class_names_) from (X, y) or an
    ImageDataset, whose classes must be the model's (in any order). Streamed images are decoded
    (a file that no longer decodes is left out)."""
    if not isinstance(X, ImageDataset):
        labels = np.asarray(y)
        classes = np.asarray(model.classes_)
        index = {value: i for i, value in enumerate(classes.tolist())}
        unknown = sorted({str(v) for v in labels.tolist() if v not in index})
        if unknown:
            raise ImgclsError(f"labels the model does not know: {', '.join(unknown[:5])}; it knows "
                              f"{', '.join(map(str, classes.tolist()))}")
        return X, np.array([index[v] for v in labels.tolist()], dtype=np.int64)
    order = _class_order(model, X)
    if isinstance(X.images, torch.Tensor):
        return X.images, order[X.labels].numpy()
    rows, images = [], []
    for positions, decoded, _ in image_batches(X.images, 256, "decoding calibration images"):
        rows.append(positions), images.append(decoded)
    rows = torch.cat(rows) if rows else torch.empty(0, dtype=torch.int64)
    return (torch.cat(images) if images else torch.empty(0, dtype=torch.uint8)), order[X.labels[rows]].numpy()


def _class_order(model, X: ImageDataset) -> torch.Tensor:
    """Each of X's class indices as the model's class index; refuses data the model cannot be calibrated on."""
    if X.multi_label:
        raise ImgclsError("the calibration data is multi-label; calibration is for single-label models")
    if sorted(X.class_names) != sorted(model.class_names_):
        raise ImgclsError(f"the data's classes ({', '.join(X.class_names)}) differ from the model's "
                          f"({', '.join(model.class_names_)}); calibrate on data of the classes it was trained on")
    return torch.as_tensor([model.class_names_.index(name) for name in X.class_names])


def _streamed_views(model, X: ImageDataset) -> tuple[list[torch.Tensor], np.ndarray]:
    """temperature_views and the labels of a streamed dataset, read (decoded by the workers) in
    rows_per_read pieces: the same forward passes as in memory, so the same logits."""
    order = _class_order(model, X)
    parts, rows = [], []
    for positions, decoded, _ in image_batches(X.images, rows_per_read(X.images.shape), "reading calibration images"):
        if len(positions):
            parts.append(temperature_views(model, decoded))
            rows.append(positions)
    if not rows:
        return [], np.empty(0, dtype=np.int64)
    return [torch.cat(view) for view in zip(*parts)], order[X.labels[torch.cat(rows)]].numpy()


def temperature_views(model, inputs) -> list[torch.Tensor]:
    """The logits whose softmaxes predict_proba averages: the images', and with test-time
    augmentation its other views' too (so T is fitted for the probabilities the model really gives)."""
    images = model._inputs(inputs)
    return [model.logits(view).double() for view in tta_views(images, getattr(model, "tta", "none"))]


def fit_temperature(views: list[torch.Tensor] | torch.Tensor, labels) -> float:
    """The T minimising the mean negative log-likelihood of labels under the mean over views of
    softmax(logits / T): L-BFGS on log(1 / T) in float64 (the likelihood is convex in 1 / T, so the
    minimum is the only one), kept within TEMPERATURE_BOUNDS."""
    views = [views] if isinstance(views, torch.Tensor) else views
    views = [v.double() for v in views]
    targets = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    log_beta = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_beta], lr=1, max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-15,
                                  history_size=20, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = temperature_nll(views, targets, log_beta.exp())
        loss.backward()
        return loss
    optimizer.step(closure)
    low, high = TEMPERATURE_BOUNDS
    return float(np.clip(float((-log_beta).detach().exp()), low, high))


def temperature_nll(views: list[torch.Tensor], targets: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """Mean -log p(label) where p is the mean over views of softmax(beta * logits)."""
    log_p = torch.stack([(beta * v).log_softmax(1) for v in views]).logsumexp(0) - np.log(len(views))
    return -log_p.gather(1, targets[:, None]).mean()


def _fit_one_vs_rest(model, inputs, labels: np.ndarray, method: str) -> OneVsRest:
    """CalibratedClassifierCV(FrozenEstimator(model), method) on the data; its fitted calibrators'
    parameters. Every class must appear (scikit-learn fits one calibrator per class)."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.frozen import FrozenEstimator
    missing = [name for i, name in enumerate(model.class_names_) if not (labels == i).any()]
    if missing:
        raise ImgclsError(f"{method} calibration needs every class in the validation data; it has no "
                          f"{', '.join(missing[:5])}")
    X = inputs.numpy() if isinstance(inputs, torch.Tensor) else inputs
    y = np.asarray(model.classes_)[labels]
    # One split holding every row: the frozen model is not refitted, so the folds CalibratedClassifierCV
    # would make give the same predictions, and one split has no minimum count per class.
    everything = np.arange(len(y))
    fitted = CalibratedClassifierCV(FrozenEstimator(model), method=method, cv=[(everything, everything)]).fit(X, y)
    calibrators = fitted.calibrated_classifiers_[0].calibrators
    if method == "sigmoid":
        params = tuple({"a": float(c.a_), "b": float(c.b_)} for c in calibrators)
    else:
        params = tuple({"x": c.X_thresholds_.tolist(), "y": c.y_thresholds_.tolist()} for c in calibrators)
    return OneVsRest(method, params)
