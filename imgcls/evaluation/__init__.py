"""Evaluation: metrics of a classifier on labelled data, and the reports that show them.

Single-label models get an Evaluation (headed by accuracy), multi-label ones a
MultiLabelEvaluation (headed by mAP); both have class_names, per_class, macro_avg, support,
task, headline(), headline_value and to_dict(), so callers can treat them alike.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from imgcls.data.dataset import ImageDataset, SkippedFile
from imgcls.data.stream import image_batches
from imgcls.errors import ImgclsError
from imgcls.evaluation import metrics
from imgcls.evaluation.metrics import Evaluation, confusion_matrix, top_k_accuracy
from imgcls.evaluation.multilabel import MultiLabelEvaluation, evaluate_multilabel
from imgcls.evaluation.report import RunInfo, print_report, write_report
from imgcls.progress import console
from imgcls.runtime import rows_per_read
from imgcls.task import SingleLabel, Task, task_from_dict, task_of_labels


def evaluate(y_true, proba: np.ndarray, class_names: list[str], y_pred=None,
             task: Task | str | None = None) -> Evaluation | MultiLabelEvaluation:
    """Metrics for true labels and probabilities (N, C), single- or multi-label by the task
    (a task object or its kind), or else by the labels: class indices (N,) or multi-hot (N, C).

    y_pred defaults to the task's decision: the argmax, or each label at its threshold
    (a MultiLabel task's thresholds, 0.5 without them).
    """
    if isinstance(task, str):
        task = task_from_dict({"kind": task})
    task = task or task_of_labels(y_true)
    if task.multi_label:
        return evaluate_multilabel(y_true, proba, class_names, task.threshold_vector(len(class_names)),
                                   y_pred=y_pred)
    if np.ndim(y_true) != 1:
        raise ImgclsError(f"single-label evaluation needs class indices (N,); got labels of shape "
                          f"{np.shape(y_true)}")
    return metrics.evaluate(y_true, proba, class_names, y_pred=y_pred)


def evaluate_model(model, data: ImageDataset, skipped: list[SkippedFile] | None = None
                   ) -> tuple[Evaluation | MultiLabelEvaluation, float]:
    """Evaluate a fitted classifier on a labelled dataset; also returns the prediction time in seconds.

    A streamed dataset is predicted batch by batch as DataLoader workers decode it (see
    image_batches). A file that no longer decodes is left out and listed in skipped (a warning
    where skipped is None); the evaluation's `rows` then says which of data's images it covers."""
    if len(data) == 0:
        raise ImgclsError("nothing to evaluate: the split is empty")
    # Models saved before tasks existed carry no task_; they are all single-label.
    task = getattr(model, "task_", None) or SingleLabel()
    if task.multi_label != data.multi_label:
        raise ImgclsError(f"a {task.kind} model cannot be evaluated on {data.task.kind} data")
    data = align_classes(data, model.class_names_)
    start = time.perf_counter()
    if data.streamed:
        rows, y_pred, proba = _predict_streamed(model, data, skipped)
        labels = data.labels[rows]
    else:
        (y_pred, proba), rows, labels = model.predict_with_proba(data), None, data.labels
    seconds = time.perf_counter() - start
    evaluation = evaluate(labels.numpy(), proba, model.class_names_, y_pred=y_pred, task=task)
    evaluation.rows = rows.numpy() if rows is not None and len(rows) < len(data) else None
    return evaluation, seconds


def _predict_streamed(model, data: ImageDataset, skipped: list[SkippedFile] | None):
    """(rows that decoded, their predictions, their probabilities), rows_per_read images at a time
    (the same forward passes as in memory, so the probabilities come out identical)."""
    rows, preds, probas, failed = [], [], [], []
    names = data.names("image")
    for positions, images, unreadable in image_batches(data.images, rows_per_read(data.images.shape), "evaluating"):
        failed += [SkippedFile(names[i], reason) for i, reason in unreadable]
        if len(positions):
            y_pred, proba = model.predict_with_proba(images)
            rows.append(positions), preds.append(y_pred), probas.append(proba)
    if failed and skipped is not None:
        skipped += failed
    elif failed:
        console.print(f"[yellow]warning:[/] {len(failed)} file(s) no longer decode and were left out: "
                      + ", ".join(f.path for f in failed[:5]) + (" ..." if len(failed) > 5 else ""))
    if not rows:
        raise ImgclsError("nothing to evaluate: none of the split's files decodes any more")
    return torch.cat(rows), np.concatenate(preds), np.concatenate(probas)


def align_classes(data: ImageDataset, class_names: list[str]) -> ImageDataset:
    """Relabel data into the model's class order; a class the model never saw is an error.

    Multi-hot labels get the model's columns: a label of the data that no image carries is
    dropped, and a model's label the data lacks becomes a column of zeros (no image has it).
    """
    if data.class_names == class_names:
        return data
    if data.multi_label:
        present = set(np.flatnonzero(data.labels.sum(0, dtype=torch.int64).numpy()).tolist())
    else:
        present = set(data.labels.unique().tolist())
    unknown = [name for i, name in enumerate(data.class_names) if name not in class_names and i in present]
    if unknown:
        raise ImgclsError(f"unknown label(s) for this model: {', '.join(unknown)}; "
                          f"the model knows: {', '.join(class_names)}")
    if data.multi_label:
        labels = torch.zeros((len(data), len(class_names)), dtype=torch.uint8)
        for i, name in enumerate(data.class_names):
            if name in class_names:
                labels[:, class_names.index(name)] = data.labels[:, i]
    else:
        mapping = [class_names.index(n) if n in class_names else -1 for n in data.class_names]
        labels = torch.as_tensor(mapping)[data.labels]
    return ImageDataset(data.images, labels, list(class_names), data.paths, data.ids, data.decoded_with)


__all__ = ["Evaluation", "MultiLabelEvaluation", "RunInfo", "align_classes",
           "confusion_matrix", "evaluate", "evaluate_model", "evaluate_multilabel", "print_report",
           "top_k_accuracy", "write_report"]
