"""Metrics and reports against scikit-learn's classification_report, confusion_matrix, top_k_accuracy_score."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import classification_report, confusion_matrix, top_k_accuracy_score

from imgcls.evaluation import RunInfo, evaluate, write_report


def random_proba(n, classes, seed):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, classes))
    y_true = np.where(rng.random(n) < 0.6, logits.argmax(1), rng.integers(0, classes, n))
    return y_true, np.exp(logits) / np.exp(logits).sum(1, keepdims=True)


@pytest.mark.parametrize("classes,seed", [(3, 0), (10, 1), (12, 2)])
def test_report_matches_sklearn(classes, seed):
    y_true, proba = random_proba(500, classes, seed)
    names = [f"class{i}" for i in range(classes)]
    ev = evaluate(y_true, proba, names)
    y_pred = proba.argmax(1)
    expected = classification_report(y_true, y_pred, output_dict=True, zero_division=0)
    for i, name in enumerate(names):
        for metric in ("precision", "recall", "f1-score", "support"):
            key = "f1" if metric == "f1-score" else metric
            assert ev.per_class[name][key] == pytest.approx(expected[str(i)][metric], abs=1e-12)
    for ours, theirs in ((ev.macro_avg, "macro avg"), (ev.weighted_avg, "weighted avg")):
        assert ours["precision"] == pytest.approx(expected[theirs]["precision"], abs=1e-12)
        assert ours["recall"] == pytest.approx(expected[theirs]["recall"], abs=1e-12)
        assert ours["f1"] == pytest.approx(expected[theirs]["f1-score"], abs=1e-12)
    assert ev.accuracy == pytest.approx(expected["accuracy"])
    np.testing.assert_array_equal(ev.confusion_matrix, confusion_matrix(y_true, y_pred, labels=range(classes)))
    if classes > 5:
        assert ev.top5_accuracy == pytest.approx(top_k_accuracy_score(y_true, proba, k=5, labels=range(classes)))
    else:
        assert ev.top5_accuracy is None


def test_class_never_predicted_or_absent_matches_sklearn():
    y_true = np.array([0, 0, 1, 1, 2, 2, 0])
    y_pred = np.array([0, 1, 1, 1, 1, 0, 0])     # class 2 never predicted
    proba = np.eye(4)[y_pred]                     # class 3 neither true nor predicted
    ev = evaluate(y_true, proba, ["a", "b", "c", "d"], y_pred=y_pred)
    expected = classification_report(y_true, y_pred, output_dict=True, zero_division=0)
    assert ev.per_class["c"]["precision"] == 0 and ev.per_class["d"]["support"] == 0
    assert ev.macro_avg["f1"] == pytest.approx(expected["macro avg"]["f1-score"])
    assert ev.weighted_avg["recall"] == pytest.approx(expected["weighted avg"]["recall"])


def test_top5_counts_ties_against_the_true_class():
    proba = np.zeros((1, 10))
    proba[0, :3] = [0.5, 0.3, 0.2]               # a kNN-like vote: seven classes tie at zero
    assert evaluate([9], proba, [str(i) for i in range(10)]).top5_accuracy == 0.0
    assert evaluate([2], proba, [str(i) for i in range(10)]).top5_accuracy == 1.0


def test_report_files(tmp_path):
    y_true, proba = random_proba(200, 10, 3)
    names = [f"kind <{i}>" for i in range(10)]
    ev = evaluate(y_true, proba, names)
    info = RunInfo(title="test run", model="knn", params={"k": 5}, dataset="synthetic", sizes={"test": 200},
                   skipped_files=[{"path": "bad.jpg", "reason": "not an image file"}],
                   extra_metrics={"val_accuracy": 0.5})
    images = torch.zeros(200, 1, 8, 8, dtype=torch.uint8)
    paths = write_report(ev, info, tmp_path, images=images)
    data = json.loads(paths["json"].read_text())
    off_diagonal = ev.confusion_matrix - np.diag(np.diag(ev.confusion_matrix))
    assert data["most_confused"][0]["count"] == off_diagonal.max()
    with Image.open(paths["mistakes"]) as png:
        assert png.format == "PNG"
    for key in ("accuracy", "top5_accuracy", "per_class", "macro_avg", "weighted_avg", "confusion_matrix",
                "class_names", "skipped_files"):
        assert key in data
    assert data["per_class"]["kind <3>"]["support"] == int((y_true == 3).sum())
    assert data["skipped_files"] == [{"path": "bad.jpg", "reason": "not an image file"}]
    assert np.array(data["confusion_matrix"]).sum() == 200
    with Image.open(paths["confusion_matrix"]) as png:
        assert png.format == "PNG" and png.size[0] > 400
    html = paths["html"].read_text()
    assert "kind &lt;3&gt;" in html and "bad.jpg" in html and "data:image/png;base64," in html
    assert "http://" not in html and "https://" not in html   # self-contained, nothing fetched
