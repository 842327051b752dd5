"""kNN tuning by cross-validation: same accuracies as scikit-learn on the same folds, the k sweep from
one neighbour search equals separate fits, and the CLI touches the test split exactly once."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.neighbors import KNeighborsClassifier

import imgcls.fit_and_evaluate as finish
import imgcls.tuning.knn_cv as knn_cv
from imgcls.cli import main
from imgcls.data import DataOptions, load_dataset
from imgcls.data.splits import stratified_kfold
from imgcls.models import create_model
from imgcls.tuning import knn_cross_validation, parse_grid, summarise

KS = [1, 3, 5, 7, 9, 11, 15]


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", DataOptions(val_fraction=0)).train


def test_cv_accuracies_match_sklearn_cross_val_score(digits):
    folds, seed = 5, 3
    rows = knn_cross_validation(digits, KS, ["l1", "l2"], folds, seed)
    X, y = digits.images.reshape(len(digits), -1).numpy(), digits.labels.numpy()
    for metric, p in (("l1", 1), ("l2", 2)):
        for k in KS:
            ours = [r["accuracy"] for r in sorted(rows, key=lambda r: r["fold"]) if (r["metric"], r["k"]) == (metric, k)]
            theirs = cross_val_score(KNeighborsClassifier(n_neighbors=k, algorithm="brute", p=p), X, y,
                                     cv=StratifiedKFold(folds, shuffle=True, random_state=seed))
            # Digits has tied distances and tied votes, which the two libraries break differently:
            # a fold of ~288 images may differ by an image or three, the mean by much less.
            assert np.abs(np.array(ours) - theirs).max() <= 3 / 287, (metric, k)
            assert abs(np.mean(ours) - theirs.mean()) < 0.005, (metric, k)
    summary = summarise(rows)
    assert len(summary) == 2 * len(KS) and all(r["folds"] == folds for r in summary)
    assert [s["mean"] for s in summary] == sorted((s["mean"] for s in summary), reverse=True)


@pytest.mark.parametrize("weights", ["uniform", "distance"])
def test_k_sweep_from_one_search_equals_separate_fits(digits, weights):
    rows = knn_cross_validation(digits, KS, ["l1", "l2"], 3, 0, weights=[weights])
    train_idx, val_idx = next(stratified_kfold(digits.labels.numpy(), 3, 0))
    train, val = digits.subset(train_idx), digits.subset(val_idx)
    for metric in ("l1", "l2"):
        for k in KS:
            model = create_model("knn", k=k, metric=metric, weights=weights).fit(train)
            row, = [r for r in rows if (r["fold"], r["metric"], r["k"]) == (0, metric, k)]
            assert row["accuracy"] == model.score(val)


def test_tune_cli_evaluates_test_once_and_writes_results(tmp_path, monkeypatch, capsys):
    splits = load_dataset("digits")
    evaluated, searched = [], []
    real_evaluate, real_search = finish.evaluate_model, knn_cv.ExactSearch

    def spy_evaluate(model, data, *skipped):
        evaluated.append(data)
        return real_evaluate(model, data, *skipped)

    class SpySearch(real_search):
        def search(self, queries, k, progress=None):
            searched.append((len(self.reference), len(queries)))
            return super().search(queries, k, progress)

    monkeypatch.setattr(finish, "evaluate_model", spy_evaluate)     # tune_knn evaluates through finish_run
    monkeypatch.setattr(knn_cv, "ExactSearch", SpySearch)
    out = tmp_path / "tuned"
    argv = ["tune", "digits", "--model", "knn", "--grid", "k=1,3,5", "--grid", "metric=l1,l2", "--cv", "3",
            "--out", str(out)]
    assert main(argv) == 0

    # CV saw only train+val: 3 folds x 2 metrics, each fold's two parts adding up to train+val.
    development = len(splits.train) + len(splits.val)
    assert len(searched) == 6 and all(ref + queries == development for ref, queries in searched)
    assert sum(queries for _, queries in searched) == 2 * development
    assert len(evaluated) == 1 and evaluated[0].images.equal(splits.test.images)

    cv = json.loads((out / "cv_results.json").read_text())
    assert len(cv["rows"]) == 3 * 2 * 3 and len(cv["summary"]) == 6
    assert cv["best"] == {k: cv["summary"][0][k] for k in ("k", "metric", "weights")}
    assert (out / "cv.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((out / "report.json").read_text())
    assert report["test_evaluations"] == 1
    assert report["tuning"]["best"] == cv["best"] and report["tuning"]["rows"] == cv["rows"]
    assert report["params"] == {"threshold": 0.0, **cv["best"]}
    assert report["cv_accuracy"] == pytest.approx(cv["summary"][0]["mean"])
    model = create_model("knn", **cv["best"]).fit(splits.train.concat(splits.val))
    assert report["accuracy"] == pytest.approx(model.score(splits.test))
    assert (out / "model.safetensors").is_file()
    log = json.loads((out / "test_evaluations.json").read_text())
    assert len(log) == 1 and log[0]["model"] == "knn" and log[0]["command"].startswith("imgcls tune digits")

    # A second look at the test split in the same folder is counted, and the report says so.
    assert main(argv) == 0
    assert json.loads((out / "report.json").read_text())["test_evaluations"] == 2


@pytest.mark.parametrize("argv, message", [
    (["--grid", "depth=1,2"], "imgcls: error: unknown grid key 'depth' in --grid 'depth=1,2'; valid: k, metric, weights"),
    (["--grid", "metric=cosine"], "imgcls: error: unknown metric 'cosine'; valid: l2, l1"),
    (["--grid", "k=0,3"], "imgcls: error: --grid 'k=0,3': k must be positive whole numbers"),
    (["--model", "linear"], "imgcls: error: tune supports knn and neural networks; 'linear' is neither"),
])
def test_tune_cli_rejects_bad_settings_in_one_line(tmp_path, capsys, argv, message):
    assert main(["tune", "digits", *argv, "--out", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err == message + "\n"
    assert not (tmp_path / "x").exists()


def test_parse_grid_defaults_and_values():
    assert parse_grid([]) == {"k": KS, "metric": ["l1", "l2"], "weights": ["uniform"]}
    assert parse_grid(["k=5,1,5", "weights=distance"]) == {"k": [1, 5], "metric": ["l1", "l2"], "weights": ["distance"]}


def test_train_records_its_test_evaluation(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "digits", "--model", "knn", "--out", str(out)]) == 0
    log = json.loads((out / "test_evaluations.json").read_text())
    assert [r["model"] for r in log] == ["knn"]
