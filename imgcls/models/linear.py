"""Linear classifier f(x) = Wx + b on pixels or feature vectors, trained by mini-batch SGD with momentum.

Two losses, as in the course: softmax (cross-entropy) and the multiclass SVM (hinge,
sum over wrong classes of max(0, s_j - s_y + 1)), each plus reg * ||W||^2.
Inputs are standardised feature by feature (pixel by pixel for images): centred by the training
set's mean and divided by its standard deviation (1 where a feature never varies), as
scikit-learn's StandardScaler does. Both are learned in fit and saved with the weights, so the
scale of the data (0..255 pixels, 0..16 digits, any embedding) does not change what is learned.
balance="weights" weights each sample's data loss by its class's balanced weight (see
imgcls.data.splits.class_balance_weights); balance="sampler" draws each epoch with replacement,
every class equally likely. Both are for imbalanced classes.
For the SVM, predict_proba is the softmax of the scores: a ranking, not a calibrated probability.
Multi-label data: one sigmoid per class and binary cross-entropy (the softmax loss's multi-label
form; the SVM loss is single-label only); balance="weights" is BCE's pos_weight per label.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from imgcls.data.dataset import ImageDataset
from imgcls.data.splits import balanced_order, check_balance, class_balance_weights
from imgcls.errors import ImgclsValueError
from imgcls.models.base import Capabilities, Classifier
from imgcls.models.inputs import TrainingData, rows
from imgcls.models.registry import register
from imgcls.progress import progress_bar

LOSSES = ("softmax", "svm")
SCHEDULES = ("constant", "cosine")
BALANCES = ("none", "weights", "sampler")


@register("linear")
@dataclass(repr=False, eq=False)
class LinearClassifier(Classifier):
    description = "linear classifier Wx + b, softmax or multiclass SVM loss, mini-batch SGD"
    capabilities: ClassVar[Capabilities] = Capabilities(takes_features=True, explained_by="template")

    loss: str = "softmax"
    lr: float = 0.05
    reg: float = 1e-4
    epochs: int = 15
    batch_size: int = 256
    momentum: float = 0.9
    schedule: str = "cosine"
    balance: str = "none"
    seed: int = 0

    def check_params(self) -> None:
        if self.loss not in LOSSES:
            raise ImgclsValueError(f"unknown loss {self.loss!r}; valid: {', '.join(LOSSES)}")
        if self.schedule not in SCHEDULES:
            raise ImgclsValueError(f"unknown schedule {self.schedule!r}; valid: {', '.join(SCHEDULES)}")
        if self.balance not in BALANCES:
            raise ImgclsValueError(f"unknown balance {self.balance!r}; valid: {', '.join(BALANCES)}")
        for name in ("epochs", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ImgclsValueError(f"{name} must be at least 1")
        if self.lr <= 0 or self.reg < 0 or not 0 <= self.momentum < 1:
            raise ImgclsValueError("need lr > 0, reg >= 0 and 0 <= momentum < 1")

    def check_task(self, task) -> None:
        if task.multi_label and self.loss == "svm":
            raise ImgclsValueError("the multiclass SVM loss is single-label; multi-label data needs loss=softmax "
                                   "(one sigmoid per label, binary cross-entropy)")
        check_balance(self.balance, task.multi_label)

    def _fit(self, data: TrainingData, validation: ImageDataset | None = None, **_) -> None:
        gen = torch.Generator().manual_seed(self.seed)
        x = rows(data)
        self.mean_, self.scale_ = standardisation(x)
        n_features, n_classes = x.shape[1], data.num_classes
        weight = (torch.randn(n_classes, n_features, generator=gen) * 1e-3).requires_grad_()
        bias = torch.zeros(n_classes, requires_grad=True)
        class_weight = class_balance_weights(data.labels, n_classes) if self.balance == "weights" else None
        optimizer = torch.optim.SGD([weight, bias], lr=self.lr, momentum=self.momentum)
        steps_per_epoch = math.ceil(len(data) / self.batch_size)
        self.history_ = []
        with progress_bar(self.epochs, f"linear ({self.loss})") as advance:
            for epoch in range(self.epochs):
                order = (balanced_order(data.labels, gen) if self.balance == "sampler"
                         else torch.randperm(len(data), generator=gen))
                total = 0.0
                for step, start in enumerate(range(0, len(data), self.batch_size)):
                    for group in optimizer.param_groups:
                        group["lr"] = self._lr_at(epoch * steps_per_epoch + step, self.epochs * steps_per_epoch)
                    batch = order[start:start + self.batch_size]
                    scores = self._features(x[batch]) @ weight.T + bias
                    loss = self._data_loss(scores, data.labels[batch], class_weight) + self.reg * weight.square().sum()
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    total += loss.item() * len(batch)
                self.history_.append({"epoch": epoch + 1, "train_loss": total / len(data)})
                advance()
        self.weight_, self.bias_ = weight.detach(), bias.detach()

    def _lr_at(self, step: int, total: int) -> float:
        if self.schedule == "constant":
            return self.lr
        return self.lr * 0.5 * (1 + math.cos(math.pi * step / total))

    def _data_loss(self, scores: torch.Tensor, labels: torch.Tensor,
                   class_weight: torch.Tensor | None = None) -> torch.Tensor:
        """Mean loss per sample; with class_weight, the weighted mean (as F.cross_entropy's weight)."""
        if self.loss == "softmax":
            return self.task_.loss(scores, labels, weight=class_weight)
        correct = scores.gather(1, labels[:, None])
        margins = (scores - correct + 1).clamp_min(0).scatter(1, labels[:, None], 0).sum(1)
        if class_weight is None:
            return margins.mean()
        weight = class_weight[labels]
        return (margins * weight).sum() / weight.sum()

    def _features(self, flat: torch.Tensor) -> torch.Tensor:
        """Standardised features (float32) of flattened inputs; float64 inputs are standardised in
        float64 (their offsets may be too large for float32), the others in float32, which is fast."""
        if flat.dtype == torch.float64:
            return ((flat - self.mean_) / self.scale_).float()
        return (flat.float() - self.mean_.float()) / self.scale_.float()

    def decision_function(self, X) -> np.ndarray:
        """Class scores Wx + b (N, classes); for two classes, as scikit-learn's, the second class's
        score minus the first's (N,): positive where classes_[1] is predicted."""
        return self._response(self._inputs(X))

    def _response(self, inputs: torch.Tensor) -> np.ndarray:
        # decision_function, read by a one-vs-rest calibration as CalibratedClassifierCV reads it.
        scores = self._scores(inputs)
        if scores.shape[1] == 2 and not self.task_.multi_label:
            scores = scores[:, 1] - scores[:, 0]
        return scores.numpy()

    def _scores(self, inputs: torch.Tensor) -> torch.Tensor:
        return self._features(inputs.reshape(len(inputs), -1)) @ self.weight_.T + self.bias_

    def _predict_proba(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.task_.activation(self._scores(inputs))

    def _logits(self, inputs: torch.Tensor) -> torch.Tensor:
        return self._scores(inputs).float()

    def parameter_count_for(self, input_shape: tuple[int, ...], num_classes: int) -> int:
        return (math.prod(input_shape) + 1) * num_classes      # W (classes, features) and b

    def templates(self) -> np.ndarray:
        """W's rows as images (classes, channels, height, width): the weight of each pixel for each class."""
        self._check_fitted()
        return self.weight_.reshape(len(self.weight_), self.preprocessing_.channels,
                                    *self.preprocessing_.size).float().numpy()

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {"weight": self.weight_, "bias": self.bias_, "feature_mean": self.mean_, "feature_scale": self.scale_}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.weight_, self.bias_ = tensors["weight"], tensors["bias"]
        if "feature_mean" in tensors:
            self.mean_, self.scale_ = tensors["feature_mean"], tensors["feature_scale"]
        else:
            # Saved before standardisation: features were x / 255 - mean, that is (x - 255 mean) / 255.
            self.mean_ = tensors["mean"].double() * 255
            self.scale_ = torch.full_like(self.mean_, 255.0)


def standardisation(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-feature mean and standard deviation (float64) of rows x; a feature that never varies
    keeps the scale 1, as scikit-learn's StandardScaler does."""
    x = x.double()
    mean, std = x.mean(0), x.std(0, correction=0)
    # A constant feature's computed deviation is the rounding error of its mean, not 0: treat any
    # deviation within a generous bound of that error as none.
    rounding = 10 * torch.finfo(torch.float64).eps * math.sqrt(len(x)) * mean.abs()
    return mean, torch.where(std > rounding, std, 1.0)
