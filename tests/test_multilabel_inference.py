"""Multi-label models through `imgcls predict`: every label ranked, the labels at or above their
thresholds, text and CSV; single-label output as before."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from imgcls.cli import main
from imgcls.data.images import decode_image
from imgcls.inference.predict import predictions
from imgcls.models import create_model, load_model
from imgcls.task import MultiLabel, SingleLabel

NAMES = ["a", "b", "c"]


@pytest.fixture(scope="module")
def linear_run(quadrant_model, tmp_path_factory):
    """A linear multi-label model (thresholds chosen on validation), saved."""
    assert quadrant_model.class_names_ == NAMES
    out = tmp_path_factory.mktemp("run") / "linear"
    quadrant_model.save(out)
    return out


@pytest.fixture(scope="module")
def pngs(quadrants, tmp_path_factory):
    """Noisy quadrant images as 8x8 grayscale PNGs, and their true label sets."""
    folder = tmp_path_factory.mktemp("pngs")
    x, y = quadrants(24, seed=7, noise=90)
    x[0], y[0] = 20, 0                  # an image with no label at all
    for i, image in enumerate(x):
        Image.fromarray(image).save(folder / f"img{i:02d}.png")
    return folder, y


def expected(run, folder):
    """What the library predicts for each file: probabilities, the multi-hot decision, and the
    labels at or above their thresholds in score order."""
    model = load_model(run)
    paths = sorted(folder.glob("*.png"))
    images = np.stack([decode_image(p, model.preprocessing_) for p in paths])
    proba, limits = model.predict_proba(images), model.task_.thresholds
    chosen = [[NAMES[j] for j in np.argsort(-p, kind="stable") if p[j] >= limits[j]] for p in proba]
    return paths, proba, model.predict(images), chosen


def test_labels_at_or_above_each_labels_own_threshold_in_score_order():
    # float64, so that a score equal to its threshold is exactly "at" it
    proba = np.array([[0.35, 0.45, 0.85], [0.2, 0.5, 0.95], [0.29, 0.1, 0.89], [0.3, 0.6, 0.9]])
    got = predictions(proba, NAMES, MultiLabel((0.3, 0.5, 0.9)))
    assert [p.chosen for p in got] == [["a"], ["c", "b"], [], ["c", "b", "a"]]
    assert [p.chosen_scores for p in got][1] == pytest.approx([0.95, 0.5])
    assert [p.labels for p in got] == [["c", "b", "a"], ["c", "b", "a"], ["c", "a", "b"], ["c", "b", "a"]]
    assert got[2].body() == {"predictions": [{"label": "c", "score": pytest.approx(0.89)},
                                             {"label": "a", "score": pytest.approx(0.29)},
                                             {"label": "b", "score": pytest.approx(0.1)}], "labels": []}
    # without thresholds a multi-label model uses 1/2; k ranks fewer labels, never fewer chosen ones
    assert [p.chosen for p in predictions(proba, NAMES, MultiLabel(), k=1)] == [["c"], ["c", "b"], ["c"], ["c", "b"]]
    assert [p.labels for p in predictions(proba, NAMES, MultiLabel(), k=1)] == [["c"]] * 4
    single = predictions(proba, NAMES, SingleLabel())
    assert [p.chosen for p in single] == [None] * 4 and set(single[0].body()) == {"predictions"}


def test_json_ranks_every_label_and_lists_those_at_or_above_their_thresholds(linear_run, pngs, capsys):
    folder, truth = pngs
    assert main(["predict", str(linear_run), str(folder), "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    paths, proba, decided, chosen = expected(linear_run, folder)
    assert [r["path"] for r in results] == [str(p) for p in paths]
    for r, p, d, c in zip(results, proba, decided, chosen):
        assert set(r) == {"path", "predictions", "labels"}
        assert sorted(x["label"] for x in r["predictions"]) == NAMES          # all labels, not top-5
        scores = [x["score"] for x in r["predictions"]]
        assert scores == sorted(scores, reverse=True)
        assert {x["label"]: x["score"] for x in r["predictions"]} == pytest.approx(dict(zip(NAMES, p.tolist())))
        assert r["labels"] == c                                               # in score order
        assert set(r["labels"]) == {NAMES[j] for j in np.flatnonzero(d)}      # = model.predict
    # The model has learned the quadrants: the label sets are the true ones, none for image 0.
    hits = [set(r["labels"]) == {NAMES[j] for j in np.flatnonzero(t)} for r, t in zip(results, truth)]
    assert results[0]["labels"] == [] and np.mean(hits) >= 0.9
    assert {len(r["labels"]) for r in results} >= {0, 1, 2}


def test_an_explicit_top_k_ranks_fewer_labels_but_keeps_every_chosen_one(linear_run, pngs, capsys):
    folder, _ = pngs
    assert main(["predict", str(linear_run), str(folder), "--json", "--top-k", "1"]) == 0
    results = json.loads(capsys.readouterr().out)
    paths, proba, _, chosen = expected(linear_run, folder)
    for r, p, c in zip(results, proba, chosen):
        assert [x["label"] for x in r["predictions"]] == [NAMES[int(np.argmax(p))]]
        assert r["labels"] == c
    assert any(len(r["labels"]) > 1 for r in results)


def test_text_shows_the_chosen_labels_or_the_best_one_and_csv_has_a_labels_column(linear_run, pngs, tmp_path,
                                                                                  capsys):
    folder, _ = pngs
    table = tmp_path / "predictions.csv"
    assert main(["predict", str(linear_run), str(folder), "--csv", str(table)]) == 0
    lines = capsys.readouterr().out.splitlines()
    paths, proba, _, chosen = expected(linear_run, folder)
    assert len(lines) == len(paths)
    for line, path, p, c in zip(lines, paths, proba, chosen):
        order = np.argsort(-p, kind="stable")
        if c:
            assert line == f"{path}: " + ", ".join(f"{name} {p[NAMES.index(name)]:.0%}" for name in c)
        else:
            assert line == f"{path}: (none above threshold; best: {NAMES[order[0]]} {p[order[0]]:.0%})"
    assert lines[0].startswith(f"{paths[0]}: (none above threshold; best: ")

    with open(table, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["path", "labels", "label1", "score1", "label2", "score2", "label3", "score3"]
    for row, path, p, c in zip(rows[1:], paths, proba, chosen):
        order = np.argsort(-p, kind="stable")
        assert row[0] == str(path)
        assert row[1] == ";".join(c)                            # as in a multi-label manifest
        assert row[2::2] == [NAMES[j] for j in order]
        assert [float(s) for s in row[3::2]] == pytest.approx(p[order].tolist(), rel=1e-5)


def test_single_label_output_keeps_its_shape(pngs, tmp_path, capsys):
    folder, _ = pngs
    x = np.stack([np.full((8, 8), 40 * i, np.uint8) for i in range(6)] * 3)
    create_model("knn", k=1).fit(x, np.arange(18) % 6, class_names=list("uvwxyz")).save(tmp_path / "knn")
    assert main(["predict", str(tmp_path / "knn"), str(folder / "img03.png"), "--json"]) == 0
    (result,) = json.loads(capsys.readouterr().out)
    assert set(result) == {"path", "predictions"} and len(result["predictions"]) == 5        # top 5, no labels
    assert main(["predict", str(tmp_path / "knn"), str(folder / "img03.png"), "--csv", str(tmp_path / "p.csv")]) == 0
    assert capsys.readouterr().out.count("%") == 5
    assert (tmp_path / "p.csv").read_text().splitlines()[0] == "path," + ",".join(
        f"label{i},score{i}" for i in range(1, 6))
