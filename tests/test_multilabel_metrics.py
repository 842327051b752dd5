"""Multi-label metrics, thresholds and reports against scikit-learn on the same predictions."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import (accuracy_score, average_precision_score, f1_score, hamming_loss,
                             precision_recall_curve, precision_score, recall_score)

from imgcls.data.dataset import ImageDataset
from imgcls.errors import ImgclsError
from imgcls.evaluation import (Evaluation, MultiLabelEvaluation, RunInfo, align_classes,
                               evaluate, evaluate_model, evaluate_multilabel, print_report, write_report)
from imgcls.evaluation import multilabel
from imgcls.task import MultiLabel, SingleLabel, choose_thresholds


def random_multilabel(n, labels, seed, decimals=None):
    """Multi-hot labels and probabilities that lean towards them; rounding makes many tied scores."""
    rng = np.random.default_rng(seed)
    y = (rng.random((n, labels)) < rng.uniform(0.05, 0.5, labels)).astype(np.uint8)
    signal = (2 * y.astype(int) - 1) * rng.uniform(0, 2, (n, labels))
    proba = 1 / (1 + np.exp(-signal - rng.normal(0, 1.5, (n, labels))))
    return y, (np.round(proba, decimals) if decimals is not None else proba)


def assert_matches_sklearn(ev: MultiLabelEvaluation, y, proba, thresholds):
    y_pred = (proba >= thresholds).astype(np.uint8)
    np.testing.assert_array_equal(ev.y_pred, y_pred)
    names = ev.class_names
    for name, metric in (("precision", precision_score), ("recall", recall_score), ("f1", f1_score)):
        per_label = metric(y, y_pred, average=None, zero_division=0)
        np.testing.assert_allclose([ev.per_class[c][name] for c in names], per_label, atol=1e-12)
        for average in ("micro", "macro", "samples"):
            ours = getattr(ev, f"{average}_avg")[name]
            assert ours == pytest.approx(metric(y, y_pred, average=average, zero_division=0), abs=1e-12)
    kept = y.sum(0) > 0
    for j, name in enumerate(names):
        row = ev.per_class[name]
        assert row["support"] == int(y[:, j].sum()) and row["threshold"] == thresholds[j]
        if kept[j]:
            assert row["average_precision"] == pytest.approx(average_precision_score(y[:, j], proba[:, j]), abs=1e-12)
        else:
            assert row["average_precision"] is None
    assert ev.mAP == pytest.approx(average_precision_score(y[:, kept], proba[:, kept], average="macro"), abs=1e-12)
    assert ev.subset_accuracy == pytest.approx(accuracy_score(y, y_pred), abs=1e-12)
    assert ev.hamming_loss == pytest.approx(hamming_loss(y, y_pred), abs=1e-12)
    for average in (ev.micro_avg, ev.macro_avg, ev.samples_avg):
        assert average["support"] == int(y.sum())
    assert ev.support == len(y)


@pytest.mark.parametrize("n,labels,seed,decimals",
                         [(300, 5, 0, None), (500, 12, 1, 2), (64, 3, 2, 1), (1000, 20, 3, 3)])
def test_metrics_match_sklearn(n, labels, seed, decimals):
    y, proba = random_multilabel(n, labels, seed, decimals)
    thresholds = np.random.default_rng(seed).uniform(0.2, 0.8, labels)
    ev = evaluate_multilabel(y, proba, [f"label{j}" for j in range(labels)], thresholds)
    assert_matches_sklearn(ev, y, proba, thresholds)
    assert ev.labels_without_positives == [] and ev.warnings == []


def test_default_threshold_is_one_half():
    y, proba = random_multilabel(100, 4, 5, decimals=1)    # many scores exactly 0.5
    ev = evaluate_multilabel(y, proba, list("abcd"))
    assert_matches_sklearn(ev, y, proba, np.full(4, 0.5))


def test_ties_and_constant_scores_match_sklearn():
    rng = np.random.default_rng(7)
    y = (rng.random((40, 4)) < 0.4).astype(np.uint8)
    y[0] = 1
    proba = np.stack([np.full(40, 0.3),                          # every score tied: AP is the prevalence
                      rng.integers(0, 3, 40) / 2,                # three tied values
                      np.where(y[:, 2] == 1, 0.9, 0.9),          # positives and negatives tied
                      rng.random(40)], axis=1)
    ev = evaluate_multilabel(y, proba, list("abcd"))
    assert_matches_sklearn(ev, y, proba, np.full(4, 0.5))
    assert ev.per_class["a"]["average_precision"] == pytest.approx(y[:, 0].mean())


def test_label_without_positives_is_left_out_of_map_and_warned_about():
    y, proba = random_multilabel(200, 5, 11, decimals=2)
    y[:, 1] = 0
    y[:, 3] = 0
    names = ["cat", "dog", "car", "tree", "sky"]
    ev = evaluate_multilabel(y, proba, names)
    assert_matches_sklearn(ev, y, proba, np.full(5, 0.5))
    assert ev.labels_without_positives == ["dog", "tree"]
    assert ev.per_class["dog"]["average_precision"] is None
    kept = [0, 2, 4]
    assert ev.mAP == pytest.approx(np.mean([average_precision_score(y[:, j], proba[:, j]) for j in kept]))
    assert len(ev.warnings) == 1 and "dog, tree" in ev.warnings[0] and "mAP" in ev.warnings[0]
    assert "2 of 5 labels" in ev.warnings[0]


def test_no_label_with_positives_has_no_map():
    ev = evaluate_multilabel(np.zeros((3, 2)), np.full((3, 2), 0.7), ["a", "b"])
    assert ev.mAP is None and ev.headline_value is None and "mAP" not in ev.headline()
    assert ev.labels_without_positives == ["a", "b"]
    assert ev.hamming_loss == 1.0 and ev.micro_avg["precision"] == 0.0


def test_label_never_predicted_and_image_without_labels():
    y = np.array([[1, 0, 1], [0, 0, 0], [1, 1, 0], [0, 1, 1], [0, 0, 0]], dtype=np.uint8)
    proba = np.array([[0.9, 0.1, 0.4], [0.2, 0.1, 0.3], [0.7, 0.8, 0.1], [0.3, 0.6, 0.2], [0.1, 0.2, 0.45]])
    ev = evaluate_multilabel(y, proba, ["a", "b", "c"])    # "c" is never predicted at 0.5
    assert ev.y_pred[:, 2].sum() == 0
    assert ev.per_class["c"]["precision"] == 0 and ev.per_class["c"]["recall"] == 0
    assert_matches_sklearn(ev, y, proba, np.full(3, 0.5))
    # Images 1 and 4 carry no label and none is predicted: right as a whole, 0 in the samples average.
    assert ev.subset_accuracy == pytest.approx(3 / 5)
    assert ev.samples_avg["f1"] == pytest.approx((2 / 3 + 1 + 2 / 3) / 5)


def test_all_correct():
    y = np.array([[1, 0], [0, 1], [1, 1], [0, 0]], dtype=np.uint8)
    proba = np.where(y == 1, 0.8, 0.1)
    ev = evaluate_multilabel(y, proba, ["a", "b"])
    assert_matches_sklearn(ev, y, proba, np.full(2, 0.5))
    assert ev.mAP == 1.0 and ev.subset_accuracy == 1.0 and ev.hamming_loss == 0.0
    assert ev.micro_avg["f1"] == 1.0 and ev.macro_avg["f1"] == 1.0


def test_precision_recall_curve_matches_sklearn():
    y, proba = random_multilabel(200, 1, 13, decimals=2)
    for ours, theirs in zip(multilabel.precision_recall_curve(y[:, 0], proba[:, 0]),
                            precision_recall_curve(y[:, 0], proba[:, 0])):
        np.testing.assert_allclose(ours, theirs, atol=1e-12)


def test_given_predictions_are_used():
    y, proba = random_multilabel(100, 3, 17)
    y_pred = (proba >= 0.3).astype(np.uint8)
    ev = evaluate_multilabel(y, proba, list("abc"), [0.3] * 3, y_pred=y_pred)
    assert ev.micro_avg["f1"] == pytest.approx(f1_score(y, y_pred, average="micro"))


def test_bad_shapes_are_errors():
    with pytest.raises(ImgclsError, match="shape"):
        evaluate_multilabel(np.zeros((4, 2)), np.zeros((4, 3)), ["a", "b"])
    with pytest.raises(ImgclsError, match="0 or 1"):
        evaluate_multilabel(np.full((4, 2), 2), np.zeros((4, 2)), ["a", "b"])
    with pytest.raises(ImgclsError, match="thresholds"):
        evaluate_multilabel(np.zeros((4, 2)), np.zeros((4, 2)), ["a", "b"], [0.5])


def test_to_dict_and_headline():
    y, proba = random_multilabel(50, 3, 19)
    y[:, 2] = 0
    ev = evaluate_multilabel(y, proba, ["a", "b", "c"], [0.4, 0.5, 0.6])
    ev.extra["note"] = "x"
    data = json.loads(json.dumps(ev.to_dict()))
    assert data["task"] == "multi-label" and data["mAP"] == pytest.approx(ev.mAP)
    assert data["per_class"]["a"] == pytest.approx(ev.per_class["a"])
    assert data["per_class"]["c"]["average_precision"] is None
    assert {"micro_avg", "macro_avg", "samples_avg", "subset_accuracy", "hamming_loss", "class_names",
            "support", "thresholds", "warnings", "labels_without_positives"} <= set(data)
    assert data["thresholds"] == [0.4, 0.5, 0.6] and data["support"] == 50 and data["note"] == "x"
    assert data["labels_without_positives"] == ["c"]
    assert ev.headline() == {"mAP": ev.mAP, "micro_f1": ev.micro_avg["f1"], "macro_f1": ev.macro_avg["f1"],
                             "samples_f1": ev.samples_avg["f1"], "subset_accuracy": ev.subset_accuracy,
                             "hamming_loss": ev.hamming_loss, "support": 50}
    assert ev.task == "multi-label" and ev.headline_value == ev.mAP


def label_f1(y, proba, threshold):
    return f1_score(y, proba >= threshold, zero_division=0)


def best_f1_on_grid(y, proba, grid):
    """Brute force: one label's F1 at every threshold of the grid; the best and where it is."""
    predicted = proba[:, None] >= grid[None, :]
    tp = (predicted & (y[:, None] == 1)).sum(0)
    f1 = 2 * tp / (predicted.sum(0) + y.sum())
    return f1.max(), grid[f1.argmax()]


@pytest.mark.parametrize("seed,decimals", [(0, None), (1, 2), (2, 1)])
def test_choose_thresholds_maximises_each_labels_f1(seed, decimals):
    y, proba = random_multilabel(150, 6, seed, decimals)
    y[:, 5] = 0
    thresholds = choose_thresholds(y, proba)
    assert thresholds.shape == (6,) and thresholds[5] == 0.5
    assert np.all((thresholds >= 1e-6) & (thresholds <= 1 - 1e-6))
    grid = np.clip(np.r_[np.linspace(0, 1, 1001), np.unique(proba)], 1e-6, 1 - 1e-6)
    for j in range(5):
        best, where = best_f1_on_grid(y[:, j], proba[:, j], grid)
        assert label_f1(y[:, j], proba[:, j], where) == pytest.approx(best, abs=1e-12)
        assert label_f1(y[:, j], proba[:, j], thresholds[j]) == pytest.approx(best, abs=1e-12)
    # The chosen thresholds give the best F1 per label in the evaluation too.
    ev = evaluate_multilabel(y, proba, list("abcdef"), thresholds)
    assert all(ev.per_class[c]["f1"] >= evaluate_multilabel(y, proba, list("abcdef")).per_class[c]["f1"]
               for c in "abcde")


def test_choose_thresholds_sits_midway_below_the_lowest_best_score():
    # F1 is 2/3 above 0.7 (1 of 2 positives, nothing wrong) and 0.8 from 0.6 on: midway to 0.5.
    y = np.array([[1], [0], [1], [0], [0]])
    proba = np.array([[0.9], [0.7], [0.6], [0.5], [0.2]])
    assert choose_thresholds(y, proba)[0] == pytest.approx(0.55)
    # F1 ties at 1/2 for the top 1, top 5 and all 9 scores: the lowest wins, midway to 0.
    y = np.array([1, 0, 0, 0, 1, 0, 0, 0, 1])[:, None]
    proba = np.linspace(0.9, 0.1, 9)[:, None]
    assert choose_thresholds(y, proba)[0] == pytest.approx(0.05)
    # Thresholds stay inside (0, 1): scores of 1 count from 1 - 1e-6, scores below 1e-6 never do.
    y = np.array([[1], [0], [1], [0]])
    assert choose_thresholds(y, np.array([[1.0], [0.3], [1.0], [1e-9]]))[0] == pytest.approx((1 - 1e-6 + 0.3) / 2)
    assert choose_thresholds(y, np.array([[0.4], [0.3], [1e-9], [1e-9]]))[0] == pytest.approx(0.35)
    assert choose_thresholds(y, np.array([[0.0], [0.3], [0.0], [0.2]]))[0] == 0.5   # no positive reachable


def test_evaluate_dispatches_by_task_or_labels():
    y, proba = random_multilabel(60, 3, 23)
    assert isinstance(evaluate(y, proba, list("abc")), MultiLabelEvaluation)
    by_kind = evaluate(y, proba, list("abc"), task="multi-label")
    with_thresholds = evaluate(y, proba, list("abc"), task=MultiLabel((0.2, 0.5, 0.7)))
    assert by_kind.thresholds.tolist() == [0.5, 0.5, 0.5]
    assert_matches_sklearn(with_thresholds, y, proba, np.array([0.2, 0.5, 0.7]))
    single = evaluate(proba.argmax(1), proba, list("abc"))
    assert isinstance(single, Evaluation) and single.task == "single-label"
    assert single.headline_value == single.accuracy
    assert isinstance(evaluate(proba.argmax(1), proba, list("abc"), task=SingleLabel()), Evaluation)
    with pytest.raises(ImgclsError, match="class indices"):
        evaluate(y, proba, list("abc"), task=SingleLabel())
    with pytest.raises(ImgclsError, match="unknown task"):
        evaluate(y, proba, list("abc"), task="regression")


class FakeMultiLabelModel:
    """Just what evaluate_model asks of a model: its labels, its task and one prediction pass."""

    def __init__(self, class_names, proba, task):
        self.class_names_, self.task_, self.proba = class_names, task, proba

    def predict_with_proba(self, data):
        return self.task_.decide(self.proba), self.proba


def test_evaluate_model_on_multi_label_data():
    y, proba = random_multilabel(30, 3, 29)
    data = ImageDataset(torch.zeros(30, 1, 4, 4, dtype=torch.uint8), y, ["a", "b", "c"])
    model = FakeMultiLabelModel(["a", "b", "c"], proba, MultiLabel((0.3, 0.5, 0.6)))
    ev, seconds = evaluate_model(model, data)
    assert isinstance(ev, MultiLabelEvaluation) and seconds >= 0
    assert_matches_sklearn(ev, y, proba, np.array([0.3, 0.5, 0.6]))
    # The data's labels in another order are put into the model's before comparing.
    reordered = ImageDataset(data.images, y[:, [2, 0, 1]], ["c", "a", "b"])
    assert evaluate_model(model, reordered)[0].per_class == ev.per_class
    with pytest.raises(ImgclsError, match="multi-label model cannot be evaluated on single-label data"):
        evaluate_model(model, ImageDataset(data.images, np.zeros(30), ["a", "b", "c"]))


def test_evaluate_model_without_a_task_is_single_label():
    class OldModel:
        class_names_ = ["a", "b"]

        def predict_with_proba(self, data):
            return np.array([0, 1, 1]), np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6]])
    data = ImageDataset(torch.zeros(3, 1, 4, 4, dtype=torch.uint8), [0, 1, 0], ["a", "b"])
    ev, _ = evaluate_model(OldModel(), data)
    assert isinstance(ev, Evaluation) and ev.accuracy == pytest.approx(2 / 3)
    with pytest.raises(ImgclsError, match="single-label model cannot be evaluated on multi-label data"):
        evaluate_model(OldModel(), ImageDataset(data.images, np.eye(2)[[0, 1, 0]], ["a", "b"]))


def test_align_classes_reorders_and_fills_multi_hot_labels():
    labels = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0]], dtype=np.uint8)
    data = ImageDataset(torch.zeros(3, 1, 4, 4, dtype=torch.uint8), labels, ["dog", "cat", "owl"],
                        paths=["x.png", "y.png", "z.png"])
    aligned = align_classes(data, ["cat", "bird", "dog"])     # "owl" carried by no image: dropped
    assert aligned.class_names == ["cat", "bird", "dog"] and aligned.paths == data.paths
    np.testing.assert_array_equal(aligned.labels.numpy(), [[0, 0, 1], [1, 0, 0], [1, 0, 1]])
    assert aligned.labels.dtype == torch.uint8
    labels[0, 2] = 1
    carried = ImageDataset(data.images, labels, ["dog", "cat", "owl"])
    with pytest.raises(ImgclsError, match="unknown label.*owl"):
        align_classes(carried, ["cat", "bird", "dog"])
    assert align_classes(carried, ["dog", "cat", "owl"]) is carried


def multilabel_run(tmp_path, y, proba, names, **write_options):
    ev = evaluate_multilabel(y, proba, names, np.linspace(0.3, 0.6, len(names)))
    info = RunInfo(title="multi-label run", model="cnn", params={"epochs": 1}, dataset="synthetic",
                   sizes={"test": len(y)}, extra_metrics={"val_mAP": 0.5})
    return ev, info, write_report(ev, info, tmp_path, **write_options)


def test_multilabel_report_files(tmp_path, monkeypatch):
    from imgcls.evaluation import report
    plotted = []
    real_curve = report.precision_recall_curve
    monkeypatch.setattr(report, "precision_recall_curve",
                        lambda y, s: plotted.append(np.asarray(y).copy()) or real_curve(y, s))
    y, proba = random_multilabel(120, 9, 31, decimals=2)
    y[:, 4] = 0
    names = [f"label <{j}>" for j in range(9)]
    rng = np.random.default_rng(0)
    images = torch.as_tensor(rng.integers(0, 256, (120, 3, 12, 12)), dtype=torch.uint8)
    ev, info, paths = multilabel_run(tmp_path, y, proba, names, images=images)

    assert set(paths) == {"json", "html", "pr_curves", "mistakes"}
    assert not (tmp_path / "confusion_matrix.png").exists()
    data = json.loads(paths["json"].read_text())
    assert data["task"] == "multi-label" and data["mAP"] == pytest.approx(ev.mAP)
    kept = y.sum(0) > 0
    assert data["mAP"] == pytest.approx(average_precision_score(y[:, kept], proba[:, kept], average="macro"))
    assert data["per_class"]["label <2>"]["average_precision"] == pytest.approx(
        average_precision_score(y[:, 2], proba[:, 2]))
    assert data["per_class"]["label <4>"]["average_precision"] is None
    assert data["labels_without_positives"] == ["label <4>"] and "label <4>" in data["warnings"][0]
    assert data["thresholds"] == pytest.approx(np.linspace(0.3, 0.6, 9).tolist())
    assert data["subset_accuracy"] == pytest.approx(accuracy_score(y, ev.y_pred))
    assert data["hamming_loss"] == pytest.approx(hamming_loss(y, ev.y_pred))
    assert data["samples_avg"]["f1"] == pytest.approx(f1_score(y, ev.y_pred, average="samples", zero_division=0))
    assert data["support"] == 120 and data["val_mAP"] == 0.5 and "confusion_matrix" not in data

    # The curves are those of the six labels with the lowest average precision.
    lowest = sorted(j for j in range(9) if kept[j])
    lowest = sorted(lowest, key=lambda j: average_precision_score(y[:, j], proba[:, j]))[:6]
    assert len(plotted) == 6
    assert all(np.array_equal(curve, y[:, j]) for curve, j in zip(plotted, lowest))
    for key, min_width in (("pr_curves", 500), ("mistakes", 500)):
        with Image.open(paths[key]) as png:
            assert png.format == "PNG" and png.size[0] > min_width
            assert len(png.convert("RGB").getcolors(1 << 24)) > 50   # drawn, not blank

    html = paths["html"].read_text()
    assert "Per-label results" in html and "Confusion matrix" not in html
    for j, name in enumerate(names):
        escaped = name.replace("<", "&lt;").replace(">", "&gt;")
        assert f"<tr><td>{escaped}</td>" in html
        assert f"<td>{int(y[:, j].sum()):,}</td><td>{np.linspace(0.3, 0.6, 9)[j]:.3f}</td></tr>" in html
    assert f"{ev.per_class['label <2>']['average_precision']:.3f}" in html
    assert ">mAP<" in html and f"{ev.mAP:.3f}" in html and "Hamming loss" in html and "Samples average" in html
    assert "no positive among these 120 images" in html
    assert html.count("data:image/png;base64,") == 2
    assert "http://" not in html and "https://" not in html


def test_multilabel_mistakes_are_the_most_confident_wrong_labels(tmp_path, monkeypatch):
    from imgcls.evaluation import report
    import matplotlib.axes
    titles = []
    real_set_title = matplotlib.axes.Axes.set_title
    monkeypatch.setattr(matplotlib.axes.Axes, "set_title",
                        lambda self, label, *a, **k: titles.append(label) or real_set_title(self, label, *a, **k))
    y = np.array([[1, 0], [0, 1], [1, 1], [0, 0]], dtype=np.uint8)
    proba = np.array([[0.9, 0.8], [0.2, 0.6], [0.1, 0.7], [0.55, 0.3]])
    ev = evaluate_multilabel(y, proba, ["cat", "dog"])
    assert report.plot_label_mistakes(ev, torch.zeros(4, 1, 8, 8, dtype=torch.uint8), tmp_path / "m.png")
    # False positives by highest probability first, then false negatives by lowest.
    assert titles == ["FP: dog\n(80%)", "FP: cat\n(55%)", "FN: cat\n(10%)"]


def test_all_correct_report_has_no_mistakes_figure(tmp_path):
    y = np.array([[1, 0], [0, 1], [1, 1]], dtype=np.uint8)
    _, _, paths = multilabel_run(tmp_path, y, np.where(y == 1, 0.9, 0.1), ["a", "b"],
                                 images=torch.zeros(3, 1, 8, 8, dtype=torch.uint8))
    assert "mistakes" not in paths and paths["pr_curves"].is_file()


def test_multilabel_terminal_report():
    import io

    from rich.console import Console
    y, proba = random_multilabel(80, 4, 37, decimals=2)
    y[:, 3] = 0
    ev = evaluate_multilabel(y, proba, ["cat", "dog", "car", "[boat]"])
    buffer = io.StringIO()
    print_report(ev, RunInfo(title="run", model="cnn", params={}, dataset="d"), Console(file=buffer, width=150))
    text = buffer.getvalue()
    for name in ("cat", "dog", "car"):
        row = ev.per_class[name]
        cells = [f"{row[m]:.3f}" for m in ("precision", "recall", "f1", "average_precision")]
        line = next(line for line in text.splitlines() if f" {name} " in line)
        assert all(cell in line for cell in cells) and f" {row['support']} " in line
    assert next(line for line in text.splitlines() if "[boat]" in line and "│" in line).count("—") == 1
    summary = next(line for line in text.splitlines() if line.startswith("mAP"))
    for part in (f"mAP {ev.mAP:.3f}", f"micro F1 {ev.micro_avg['f1']:.3f}", f"macro F1 {ev.macro_avg['f1']:.3f}",
                 f"samples F1 {ev.samples_avg['f1']:.3f}", f"subset accuracy {ev.subset_accuracy:.2%}",
                 f"Hamming loss {ev.hamming_loss:.4f}"):
        assert part in summary
    assert "warning: [boat]: no positive among these 80 images" in " ".join(text.split())


def test_single_label_report_keeps_its_files_and_format(tmp_path):
    rng = np.random.default_rng(41)
    proba = rng.dirichlet(np.ones(4), 50)
    ev = evaluate(rng.integers(0, 4, 50), proba, list("abcd"))
    info = RunInfo(title="single", model="knn", params={}, dataset="d")
    paths = write_report(ev, info, tmp_path, images=torch.zeros(50, 1, 8, 8, dtype=torch.uint8))
    assert set(paths) == {"json", "confusion_matrix", "html", "mistakes"}
    assert not (tmp_path / "pr_curves.png").exists()
    data = json.loads(paths["json"].read_text())
    assert "task" not in data and "mAP" not in data and data["accuracy"] == ev.accuracy
    html = paths["html"].read_text()
    assert "Per-class results" in html and "Per-label results" not in html and "Hamming" not in html
