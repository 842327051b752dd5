"""explain(model, images): why a classifier decided what it did, in the model's own terms.

- networks (imgcls's own, `timm:NAME`, the pretrained EfficientNet-Lites, `transfer:*`): an
  attribution map by one of NETWORK_METHODS (see imgcls.explain.attribution), Grad-CAM on the
  last convolutional stage unless another layer is named;
- kNN (method "neighbours"): the k nearest training images with their labels and distances,
  exactly those of model.kneighbors; its map splits the distance to the nearest training image
  of the target class pixel by pixel (minus the squared difference for L2, the absolute
  difference for L1), so it sums to minus that distance (squared for L2);
- linear (method "template"): the class template (W's row for the class, as an image) times the
  standardised image; the map plus the bias sums to the class score Wx + b.

Every map is float32 at the model's input resolution, higher meaning more evidence for the
target. A single-label model explains its predicted class, a multi-label one each label at or
above its threshold (its best label, marked as below threshold, when none is); `target` names
one label to explain in every image instead.
"""

from __future__ import annotations

import difflib

import numpy as np
import torch

from imgcls.data.dataset import as_image_tensor
from imgcls.errors import ImgclsError
from imgcls.explain.attribution import GRADCAM_METHODS, NETWORK_METHODS, attribute
from imgcls.explain.intrinsic import explain_knn, explain_linear
from imgcls.explain.layers import Layers, find_layers
from imgcls.explain.results import Explanation
from imgcls.models.neural import Normalize
from imgcls.runtime import resolve_device

OWN_METHODS = {"neighbours": "neighbours", "template": "template"}   # capabilities.explained_by -> its one method
METHODS = (*NETWORK_METHODS, *OWN_METHODS.values())
BATCH = 16          # images per attribution pass: bounds the memory of the backward pass


def default_method(model) -> str:
    """Grad-CAM for networks, the model's own way for kNN and linear models."""
    kind = _explained_by(model)
    return "gradcam" if kind == "network" else OWN_METHODS[kind]


def explain(model, images, method: str | None = None, target: str | None = None, layer: str | None = None
            ) -> list[Explanation]:
    """Explanations of a fitted classifier's decisions on uint8 images (N, C, H, W) at its input
    size: one per image, or per chosen label for multi-label models (see the module docstring).
    Errors are ImgclsErrors of one line: an unknown method or label, a method or layer that does
    not apply to this model."""
    kind = _explained_by(model)
    method = method or default_method(model)
    _check_method(model, kind, method)
    if layer is not None and method not in GRADCAM_METHODS:
        raise ImgclsError(f"a layer applies to Grad-CAM (gradcam, gradcam++), not to method {method}")
    images = _model_images(model, images)
    proba = np.asarray(model.predict_proba(images))
    picks = _targets(model, proba, target)
    if kind == "neighbours":
        return explain_knn(model, images, picks, proba)
    if kind == "template":
        return explain_linear(model, images, picks, proba)
    return _explain_network(model, images, picks, proba, method, layer)


def network_layers(model) -> Layers:
    """The layers a Grad-CAM map can be read from, for a network classifier."""
    scores, trunk = model.attribution_network()
    prep = model.preprocessing_
    device = next(scores.parameters()).device
    return find_layers(scores, trunk, torch.zeros(1, prep.channels, *prep.size, device=device), model.model_name)


def _explain_network(model, images: torch.Tensor, picks: list[tuple[int, int, bool]], proba: np.ndarray,
                     method: str, layer: str | None) -> list[Explanation]:
    scores, _ = model.attribution_network()
    device = resolve_device(model.device)
    scores = scores.to(device).float().eval()
    layer_name, layer_module = (network_layers(model).module(layer, model.model_name) if method in GRADCAM_METHODS
                                else (None, None))
    baseline = _mean_pixel(scores, images.shape[1]).to(device)
    explanations = []
    for start in range(0, len(picks), BATCH):
        batch = picks[start:start + BATCH]
        x = images[[i for i, _, _ in batch]].float().to(device)
        maps = attribute(method, scores, x, [c for _, c, _ in batch], layer=layer_module, baseline=baseline)
        explanations += [Explanation(i, model.class_names_[c], c, float(proba[i, c]), method, m.astype(np.float32),
                                     layer=layer_name, above_threshold=above) for (i, c, above), m in zip(batch, maps)]
    return explanations


def _explained_by(model) -> str:
    kind = model.capabilities.explained_by
    if kind is None:
        if model.capabilities.exported:
            raise ImgclsError(f"{model.path} is an exported model, and ONNX Runtime gives no gradients to explain "
                              "it with; explain the saved model it was exported from")
        raise ImgclsError(f"{model.model_name} models cannot explain themselves")
    return kind


def _model_images(model, images) -> torch.Tensor:
    """uint8 images (N, C, H, W) checked against the model's input."""
    if not model.is_fitted:
        raise ImgclsError(f"this {model.model_name} model is not fitted yet; nothing to explain")
    images = as_image_tensor(images)
    expected = (model.preprocessing_.channels, *model.preprocessing_.size)
    if tuple(images.shape[1:]) != expected:
        raise ImgclsError(f"images of shape {tuple(images.shape[1:])} given to a model whose input is {expected} "
                          "(channels, height, width)")
    return images


def _check_method(model, kind: str, method: str) -> None:
    if method not in METHODS:
        raise ImgclsError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    if kind == "network" and method in NETWORK_METHODS:
        return
    if kind != "network" and method == OWN_METHODS[kind]:
        return
    how = {"network": f"by its network ({', '.join(NETWORK_METHODS)})",
           "neighbours": "by its nearest training images (method neighbours)",
           "template": "by its class templates times the image (method template)"}[kind]
    raise ImgclsError(f"method {method} does not apply to a {model.model_name} model: it explains itself {how}")


def _targets(model, proba: np.ndarray, target: str | None) -> list[tuple[int, int, bool]]:
    """(image, class, above threshold) for every explanation to make."""
    names = list(model.class_names_)
    task = model.task_
    if target is not None:
        if target not in names:
            raise ImgclsError(f"unknown label {target!r} for this model{_suggest(target, names)}")
        c = names.index(target)
        chosen = task.decide(proba) if task.multi_label else None
        return [(i, c, bool(chosen[i, c]) if chosen is not None else True) for i in range(len(proba))]
    if not task.multi_label:
        return [(i, int(c), True) for i, c in enumerate(proba.argmax(1))]
    chosen = task.decide(proba).astype(bool)
    picks = []
    for i, row in enumerate(chosen):
        labels = np.flatnonzero(row)
        labels = labels[np.argsort(-proba[i, labels], kind="stable")]
        picks += [(i, int(c), True) for c in labels] if len(labels) else [(i, int(proba[i].argmax()), False)]
    return picks


def _suggest(name: str, names: list[str]) -> str:
    if len(names) <= 40:
        return f"; its labels: {', '.join(names)}"
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    return f"; {hint}(it has {len(names)} labels: {', '.join(names[:10])}, ...)"


def _mean_pixel(scores: torch.nn.Module, channels: int) -> torch.Tensor:
    """The pixel (1, C, 1, 1), 0..255, that the network's normalisation maps to zero: its "no information"."""
    normalize = next((m for m in scores.modules() if isinstance(m, Normalize)), None)
    if normalize is None:
        return torch.full((1, channels, 1, 1), 127.5)
    mean = normalize.mean.detach().float().cpu() * 255
    if mean.shape[1] != channels:      # a transfer network's adapter repeats or averages channels
        mean = mean.mean(1, keepdim=True).expand(1, channels, 1, 1)
    return mean.reshape(1, channels, 1, 1).clone()
