"""Evaluation: metrics of a classifier on labelled data, and the reports that show them."""

from __future__ import annotations

import time

import torch

from imgcls.data.dataset import ImageDataset
from imgcls.errors import ImgclsError
from imgcls.evaluation.metrics import Evaluation, confusion_matrix, evaluate, top_k_accuracy
from imgcls.evaluation.report import RunInfo, print_report, write_report


def evaluate_model(model, data: ImageDataset) -> tuple[Evaluation, float]:
    """Evaluate a fitted classifier on a labelled dataset; also returns the prediction time in seconds."""
    if len(data) == 0:
        raise ImgclsError("nothing to evaluate: the split is empty")
    data = align_classes(data, model.class_names_)
    start = time.perf_counter()
    y_pred, proba = model.predict_with_proba(data)
    return evaluate(data.labels.numpy(), proba, model.class_names_, y_pred=y_pred), time.perf_counter() - start


def align_classes(data: ImageDataset, class_names: list[str]) -> ImageDataset:
    """Relabel data into the model's class order; a class the model never saw is an error."""
    if data.class_names == class_names:
        return data
    unknown = [name for name in data.class_names if name not in class_names]
    present = set(data.labels.unique().tolist())
    unknown = [name for name in unknown if data.class_names.index(name) in present]
    if unknown:
        raise ImgclsError(f"unknown label(s) for this model: {', '.join(unknown)}; "
                          f"the model knows: {', '.join(class_names)}")
    mapping = [class_names.index(n) if n in class_names else -1 for n in data.class_names]
    labels = torch.as_tensor(mapping)[data.labels]
    return ImageDataset(data.images, labels, class_names, data.paths, data.ids)


__all__ = ["Evaluation", "RunInfo", "align_classes", "confusion_matrix", "evaluate", "evaluate_model",
           "print_report", "top_k_accuracy", "write_report"]
