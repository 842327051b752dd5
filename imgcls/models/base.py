"""The classifier contract: fit / predict / predict_proba / score / save / load.

Every classifier is a scikit-learn estimator (ClassifierMixin, BaseEstimator), so clone,
get_params / set_params, Pipeline, cross_val_score and GridSearchCV take it: the constructor
(a dataclass) only stores hyperparameters, `fit` returns self, and learned state ends in `_`
(`classes_`, `n_features_in_`, `class_names_`, `preprocessing_`, `task_`). What X and y may be
is imgcls.models.inputs': images (ImageDataset or arrays, read by the pixel rule), or for knn
and linear also feature vectors (N, D); labels of any kind, `classes_` their sorted distinct
values, which predict returns. Bad input raises ImgclsValueError (a ValueError), prediction
before fit NotFittedError (scikit-learn's).

The task (imgcls.task) is learned from the data: `task_` decides how probabilities are made and
read. For multi-label data, `threshold` 0 (the default) chooses each label's threshold on the
validation data to maximise its F1 (0.5 without validation data); a value in (0, 1) is used for
every label. The thresholds are saved with the model.

A single-label model may carry a calibration (imgcls.models.calibration: temperature scaling, or
scikit-learn's sigmoid or isotonic calibration), fitted on validation data and saved with it;
predict_proba and predict apply it, so every caller (predict, eval, serving) gets calibrated
probabilities.

A single-label model may abstain (imgcls.models.abstention): `predict_with_rejection` gives each
input's rejection score beside its probabilities, read from the calibrated probabilities and
`predict_logits`, the one logits method every classifier has (kNN's are its log-votes; a
network's are divided by its temperature).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import sklearn.exceptions
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.metrics import accuracy_score

from imgcls.data.dataset import ImageDataset, as_image_tensor
from imgcls.data.images import Preprocessing
from imgcls.errors import ImgclsError, ImgclsValueError
from imgcls.models.inputs import TrainingData, holds_images, imgcls_errors, read_features, training_data
from imgcls.task import MultiLabel, SingleLabel, Task, check_threshold, choose_thresholds


# What commands pass to every classifier's fit; the ones that train by gradient descent use them.
FIT_OPTIONS = ("run_dir", "resume", "hooks")


class NotFittedError(ImgclsError, sklearn.exceptions.NotFittedError):
    """Prediction before fit: scikit-learn's NotFittedError, with a one-line imgcls message."""


@dataclass(frozen=True)
class Capabilities:
    """What a kind of classifier can do, declared once by its class, as scikit-learn's tags declare
    what an estimator can do: code asks `model.capabilities` (or the registry's class, before any
    model is made) instead of sniffing for the attributes behind them."""

    # A neural network trained by imgcls's trainer: it has training_config() and the TrainingConfig
    # fields (lr, bf16, ...), tta, network_for(data), and once fitted net_ (its PyTorch network).
    network: bool = False
    # An exported file (ONNX, OpenVINO): it predicts only; it is never fitted, saved or calibrated.
    exported: bool = False
    # embed(X) gives each image's pre-logit features (N, D), the image embedding.
    embedding: bool = False
    # X may also be feature vectors (N, D), not only images.
    takes_features: bool = False
    # fit reads a streamed dataset batch by batch (others need their training images in memory).
    learns_from_streams: bool = False
    # How it explains a decision (imgcls.explain): "network" (attribution maps through its network:
    # Grad-CAM, gradients, occlusion; see NeuralClassifier.attribution_network), "neighbours" (its
    # nearest training images), "template" (its class template times the image), or None (it
    # cannot explain itself: an exported ONNX file has no gradients).
    explained_by: str | None = None


# repr=False, eq=False (here and in every subclass): scikit-learn's repr (the changed parameters)
# and identity, as for its own estimators, instead of the dataclass's field-by-field versions.
@dataclass(repr=False, eq=False)
class Classifier(ClassifierMixin, BaseEstimator):
    model_name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    capabilities: ClassVar[Capabilities] = Capabilities()

    # Multi-label data: 0 chooses each label's threshold on validation; (0, 1) sets one for all.
    threshold: float = field(default=0.0, kw_only=True)

    # Learned state, set by fit() or load(): classes_ (what predict returns), n_features_in_,
    # class_names_ (list[str]), preprocessing_ (Preprocessing; None when fitted on feature
    # vectors), task_ (SingleLabel or MultiLabel with thresholds); and, with defaults for every
    # model, metrics_, history_ and unreadable_files_ (properties below).

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
            raise ImgclsValueError("threshold applies to multi-label data only; this dataset is single-label")
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

    @property
    def metrics_(self) -> dict:
        """Figures measured on the fitted model and saved with it (a run's test evaluation, a
        pretrained model's weights); empty until something is measured."""
        return self.__dict__.setdefault("_metrics", {})

    @metrics_.setter
    def metrics_(self, metrics: dict) -> None:
        self.__dict__["_metrics"] = metrics

    @property
    def history_(self) -> list[dict]:
        """What fit recorded epoch by epoch (losses, validation figures); empty for a model fitted
        in one pass (kNN) or loaded from a file."""
        return self.__dict__.setdefault("_history", [])

    @history_.setter
    def history_(self, history: list[dict]) -> None:
        self.__dict__["_history"] = history

    @property
    def unreadable_files_(self) -> list:
        """[name, reason] of each streamed training file that stopped decoding during fit (it was
        left out); empty for models whose training images were all read."""
        return self.__dict__.setdefault("_unreadable_files", [])

    @unreadable_files_.setter
    def unreadable_files_(self, files: list) -> None:
        self.__dict__["_unreadable_files"] = files

    @property
    def abstention_(self):
        """How the model abstains (imgcls.models.abstention.Abstention), or None: it always answers."""
        return self.__dict__.get("_abstention")

    @abstention_.setter
    def abstention_(self, abstention) -> None:
        self.__dict__["_abstention"] = abstention

    @property
    def calibration_(self):
        """The fitted calibration (imgcls.models.calibration), or None: probabilities as the model makes them."""
        return self.__dict__.get("_calibration")

    @calibration_.setter
    def calibration_(self, calibration) -> None:
        self.__dict__["_calibration"] = calibration

    def without_calibration(self) -> Classifier:
        """A shallow copy (the learned state shared) that predicts the uncalibrated probabilities."""
        raw = copy.copy(self)
        raw.calibration_ = None
        return raw

    @property
    def has_logits(self) -> bool:
        """Whether predict_proba is the task's activation of logits (`logits(images)`), which
        temperature scaling rescales; False for models whose probabilities are votes or scores."""
        return False

    @property
    def logits_are_votes(self) -> bool:
        """Whether predict_logits gives the logs of the shares of a vote (kNN's neighbours) rather
        than logits of the model's own: abstention's default score reads the two differently."""
        return False

    @property
    def takes_images(self) -> bool:
        """Whether this fitted model classifies images (False: it was fitted on feature vectors)."""
        return self.preprocessing_ is not None

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = self.capabilities.takes_features
        tags.input_tags.three_d_array = True           # images (N, H, W), and (N, C, H, W)
        tags.classifier_tags.multi_label = True        # a multi-hot y is multi-label data
        return tags

    # -- the contract ---------------------------------------------------------------------
    def fit(self, X, y=None, *, class_names: list[str] | None = None, validation: ImageDataset | None = None,
            **fit_options) -> Classifier:
        """Learn from (X, y) or an ImageDataset. `validation` and `fit_options` (run_dir, resume, ...)
        are used by classifiers trained by gradient descent and ignored by the others; any other
        option (sample_weight, say) is an error rather than silently ignored."""
        unknown = sorted(set(fit_options) - set(FIT_OPTIONS))
        if unknown:
            raise TypeError(f"{type(self).__name__}.fit() got unexpected keyword argument(s) {', '.join(unknown)}; "
                            f"it takes class_names, validation, {', '.join(FIT_OPTIONS)}")
        self.check()
        data, classes = training_data(self, X, y, class_names)
        if data.streamed and not self.capabilities.learns_from_streams:
            raise ImgclsError(f"{self.model_name} needs its training images in memory, and this dataset is streamed "
                              "from its files (too large for --memory-budget, or --data-mode stream); train a "
                              "neural network, or use --data-mode memory")
        self.check_can_learn(data.task)
        self.classes_ = classes
        self.class_names_ = list(data.class_names)
        self.preprocessing_ = data.preprocessing
        self.metrics_ = {}
        self.task_ = data.task
        self._fit(data, validation=validation, **fit_options)
        if data.multi_label:
            self.task_ = MultiLabel(tuple(self._thresholds_for(validation)))
        return self

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities (N, number of classes), columns in the order of classes_: a softmax
        over classes, or for multi-label models each label's own probability. Calibrated where
        the model has a calibration."""
        return self._calibrated_decide(self._inputs(X))[1]

    def predict(self, X) -> np.ndarray:
        """Labels (N,), values of classes_; for multi-label models a multi-hot matrix (N, labels) of
        the labels at or above their thresholds."""
        return self.predict_with_proba(X)[0]

    def predict_with_proba(self, X) -> tuple[np.ndarray, np.ndarray]:
        """predict and predict_proba in one pass (what evaluation needs)."""
        decided, proba = self._calibrated_decide(self._inputs(X))
        return self._labels(decided), proba

    def predict_logits(self, X) -> np.ndarray:
        """Logits (N, number of classes): the scores whose activation gives predict_proba (for a
        single-label model without test-time augmentation, softmax(predict_logits) is predict_proba).
        A model without logits of its own (kNN's votes) gives log-probabilities."""
        return self._logits(self._inputs(X)).numpy()

    def predict_with_rejection(self, X, abstention=None) -> tuple[np.ndarray, np.ndarray | None]:
        """predict_proba, and each input's rejection score under abstention (default: the model's
        own abstention_; see imgcls.models.abstention), higher meaning less like the training data;
        None for a model that does not abstain."""
        abstention = abstention if abstention is not None else self.abstention_
        inputs = self._inputs(X)
        proba = self._calibrated_decide(inputs)[1]
        if abstention is None:
            return proba, None
        logits = self._logits(inputs).numpy() if abstention.needs_logits else None
        return proba, abstention.scores(proba, logits)

    def score(self, X, y=None, sample_weight=None) -> float:
        """Accuracy on (X, y), or on an ImageDataset's own labels; for multi-label models the
        subset accuracy (every label of an image right), as scikit-learn scores them."""
        labels = X.labels.numpy() if isinstance(X, ImageDataset) else np.asarray(y)
        if labels.ndim != (2 if self.task_.multi_label else 1):
            raise ImgclsValueError(f"a {self.task_.kind} model scored against "
                                   f"{'multi-hot' if labels.ndim == 2 else 'class-index'} labels")
        with imgcls_errors():
            return float(accuracy_score(labels, self.predict(X), sample_weight=sample_weight))

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

    # -- what a model has: its parameters, its embedding --------------------------------------
    def parameter_count_for(self, input_shape: tuple[int, ...], num_classes: int) -> int:
        """Learned parameters of this model fitted on inputs of input_shape ((C, H, W) images, or
        (D,) feature vectors) with num_classes classes; 0 for a model that learns none (kNN
        memorises its training set)."""
        return 0

    @property
    def parameter_count(self) -> int | None:
        """Learned parameters of the fitted model (as parameter_count_for counts them); None before fit."""
        if not self.is_fitted:
            return None
        shape = self._image_shape() if self.takes_images else (self.n_features_in_,)
        return self.parameter_count_for(shape, len(self.class_names_))

    def embed(self, X) -> np.ndarray:
        """Each image's embedding (N, D): the features a network classifies, for models whose
        capabilities say `embedding`."""
        raise ImgclsError(f"{self.model_name} models have no image embedding; a neural network or a "
                          "pretrained model has one")

    # -- what a model shows of itself (reports and `imgcls show` draw these) ------------------
    def first_layer_filters(self) -> np.ndarray | None:
        """The first layer's weights as images, float32 (filters, channels, height, width): a
        network's first convolution kernels, or the rows of a first fully connected layer on the
        pixels reshaped to the input image. None where the model has no such layer."""
        return None

    def templates(self) -> np.ndarray | None:
        """A linear model's class templates, float32 (classes, channels, height, width): row c of W
        in f(x) = Wx + b, reshaped to the input image. None for other models."""
        return None

    def feature_stages(self) -> list[str]:
        """A network's stages, earliest first: the names of the modules whose outputs are its
        feature maps at each resolution. Empty for models without feature maps."""
        return []

    def feature_maps(self, images: torch.Tensor, layers: list[str]) -> dict[str, torch.Tensor]:
        """The named layers' outputs (float32) for a batch of images; networks only."""
        raise ImgclsError(f"{self.model_name} is not a neural network: it has no layers or feature maps")

    def preview_training_batch(self, data: ImageDataset, epoch: int = 0, index: int = 0
                               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(positions in data, images, targets) of training batch `index` of epoch `epoch`, exactly as
        fit would train on them (augmented, mixed), without training; for models trained on batches
        by imgcls's trainer."""
        raise ImgclsError(f"{self.model_name} is not trained on augmented batches (only neural networks are)")

    # -- what each classifier implements ----------------------------------------------------
    def _fit(self, data: TrainingData, validation: ImageDataset | None = None, **fit_options) -> None:
        raise NotImplementedError

    def _predict_proba(self, inputs: torch.Tensor) -> torch.Tensor:
        """Probabilities for inputs checked by _inputs (images, or feature vectors)."""
        raise NotImplementedError

    def _logits(self, inputs: torch.Tensor) -> torch.Tensor:
        """Logits for checked inputs (see predict_logits); by default log-probabilities, whose
        softmax gives the probabilities back. A calibrated model's temperature belongs here."""
        return self._predict_proba(inputs).double().clamp_min(1e-12).log().float()

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

    def __sklearn_is_fitted__(self) -> bool:
        return self.is_fitted

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise NotFittedError(f"this {self.model_name or type(self).__name__} model is not fitted yet; "
                                 "call fit() first")

    def _decide(self, inputs: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """(class indices, or a multi-hot matrix; probabilities) for checked inputs."""
        proba = self._predict_proba(inputs).numpy()
        return self.task_.decide(proba), proba

    def _calibrated_decide(self, inputs: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """_decide with the calibration applied: temperature scaling is inside the logits already
        (calibrated_logits); a one-vs-rest calibration maps the raw response, and the prediction is
        its argmax, as scikit-learn's CalibratedClassifierCV predicts."""
        calibration = self.calibration_
        if calibration is None or calibration.in_logits:
            return self._decide(inputs)
        proba = calibration.proba(self._response(inputs))
        return self.task_.decide(proba), proba

    def _response(self, inputs: torch.Tensor) -> np.ndarray:
        """What a one-vs-rest calibrator reads, as CalibratedClassifierCV reads it: decision_function
        where the model has one (linear), else the uncalibrated predict_proba."""
        return self._predict_proba(inputs).numpy()

    def _labels(self, decided: np.ndarray) -> np.ndarray:
        """Class indices as the labels fit was given (classes_); a multi-hot matrix in the dtype of
        the y it was fitted on (uint8 for datasets and loaded models). A model made without fit or
        load (an exported one) has no classes_ and predicts class indices."""
        if self.task_.multi_label:
            return decided.astype(self.__dict__.get("_multi_hot_dtype", np.uint8), copy=False)
        classes = self.__dict__.get("classes_")
        return decided if classes is None else classes[decided]

    def _inputs(self, X) -> torch.Tensor:
        """X checked against what the model was fitted on: uint8 images (N, C, H, W), or feature
        vectors (N, D) as the float type they were fitted in."""
        self._check_fitted()
        if not self.takes_images:
            if holds_images(X):
                raise ImgclsValueError(f"this model was fitted on feature vectors of {self.n_features_in_} values "
                                       f"(N, {self.n_features_in_}); got images")
            return read_features(self, X, reset=False)
        if not holds_images(X):
            raise ImgclsValueError(f"this model was fitted on images {self._image_shape()} (channels, height, width); "
                                   f"got an array of shape {getattr(X, 'shape', '?')}: pass images, or fit on "
                                   "feature vectors")
        images = X.images if isinstance(X, ImageDataset) else as_image_tensor(X)
        if tuple(images.shape[1:]) != self._image_shape():
            raise ImgclsValueError(f"images of shape {tuple(images.shape[1:])} given to a model trained on "
                                   f"{self._image_shape()} (channels, height, width)")
        if not isinstance(images, torch.Tensor) and not self.capabilities.learns_from_streams:
            images = images[:]         # streamed: this model reads its inputs whole, so decode them now
        return images

    def _image_shape(self) -> tuple[int, int, int]:
        return (self.preprocessing_.channels, *self.preprocessing_.size)
