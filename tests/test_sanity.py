"""Warnings about a useless model (imgcls.evaluation.sanity): a collapsed network's run warns in
report.json, the terminal and report.html; a good model's does not; the useless-model line scales
with the classes (against scikit-learn's Cohen's kappa and a direct binomial sum); a network that
did not learn says so with advice for it (the issue's translated digits: the course cnn warns, a
VGG does not); overfitting histories and a learning rate far from lr-find's advice warn."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score

from imgcls.cli import main
from imgcls.evaluation.sanity import (SKILL_MIN, chance_loss, find_lr_advice, learning_warnings, lr_advice_warning,
                                      overfitting_warning, skill, useless_model_warnings)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import defaults  # noqa: E402  (bench/defaults.py: the zoo's datasets)

NAMES = [str(i) for i in range(10)]


def test_a_collapsed_lenet5_warns_in_json_terminal_and_html(tmp_path, capsys):
    # "A 2-epoch LeNet-5 on the digits scored 10% and predicted 'three' for every image": a
    # learning rate of 10 makes it so, deterministically (seed 0)
    out = tmp_path / "lenet"
    assert main(["train", "digits", "--model", "lenet5", "--epochs", "2", "--lr", "10", "--bf16", "off",
                 "--seed", "0", "--out", str(out)]) == 0
    terminal = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert report["accuracy"] < 0.15
    [useless, collapsed, stuck] = report["warnings"]
    assert "commonest class" in useless and "collapsed onto one class" in collapsed and "100.0%" in collapsed
    assert "training loss has not fallen" in stuck and "validation accuracy stayed near chance" in stuck
    assert "try a learning rate 10x lower (--lr 1)" in stuck
    assert "warning:" in terminal and "collapsed onto one class" in " ".join(terminal.split())
    html = (out / "report.html").read_text()
    assert html.index('class="alert warning"') < html.index('class="cards"')      # at the top
    assert "collapsed onto one class" in html


def test_a_good_model_gets_no_warning(tmp_path, capsys):
    assert main(["train", "digits", "--model", "knn", "--out", str(tmp_path / "knn")]) == 0
    report = json.loads((tmp_path / "knn/report.json").read_text())
    assert report["accuracy"] > 0.95 and report["warnings"] == []
    assert "warning:" not in capsys.readouterr().out
    assert 'class="alert warning"' not in (tmp_path / "knn/report.html").read_text()


def test_useless_and_collapsed_predictions():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(10), 50)
    assert useless_model_warnings(y, y, NAMES) == []
    noisy = np.where(rng.random(500) < 0.3, rng.integers(0, 10, 500), y)         # ~73% right: fine
    assert useless_model_warnings(y, noisy, NAMES) == []
    guesses = rng.integers(0, 10, 500)                                            # ~10%: useless
    [only] = useless_model_warnings(y, guesses, NAMES, "try --model vgg")
    assert "commonest class" in only and only.endswith(": try --model vgg")
    threes = np.full(500, 3)
    assert len(useless_model_warnings(y, threes, NAMES)) == 2
    # 92% of images really are one class: answering it is a baseline, not a collapse onto one class
    skewed = np.r_[np.zeros(460, int), np.ones(40, int)]
    assert not any("collapsed" in w for w in useless_model_warnings(skewed, np.zeros(500, int), ["a", "b"]))


def history(val_losses, train_losses=None):
    train_losses = train_losses or [1.0 / (i + 1) for i in range(len(val_losses))]
    return [{"epoch": i + 1, "train_loss": t, "val_loss": v} for i, (v, t) in enumerate(zip(val_losses, train_losses))]


def test_overfitting_history_warns():
    [warning] = overfitting_warning(history([0.50, 0.40, 0.45, 0.52, 0.60, 0.66, 0.70, 0.75]))
    assert "rose from 0.4 at epoch 2 to 0.75 at epoch 8" in warning
    assert overfitting_warning(history([0.9, 0.7, 0.6, 0.5, 0.45, 0.42, 0.41, 0.40])) == []   # still learning
    assert overfitting_warning(history([0.9, 0.7, 0.6, 0.5, 0.45, 0.40, 0.47, 0.50])) == []   # rose late
    assert overfitting_warning(history([0.50, 0.40, 0.41, 0.42])) == []                      # under 10% up
    assert overfitting_warning(history([0.5, 0.4, 0.6])) == []                               # too short to say
    assert overfitting_warning([{"epoch": 1, "train_loss": 1.0}] * 5) == []                  # no validation


def test_learning_rate_far_from_the_finders_advice(tmp_path):
    assert lr_advice_warning(0.05, 0.01) == [] and lr_advice_warning(0.001, 0.01) == []
    [above] = lr_advice_warning(10.0, 0.01)
    assert "1000x above" in above
    assert "20x below" in lr_advice_warning(0.0005, 0.01)[0]
    folder = tmp_path / "runs/lr-find-cnn"
    folder.mkdir(parents=True)
    (folder / "lr_find.json").write_text(json.dumps({"model": "cnn", "dataset": "digits", "suggested_lr": 0.02}))
    advice, path = find_lr_advice(tmp_path / "runs/my-cnn", "cnn", "digits")
    assert advice["suggested_lr"] == 0.02 and path == folder / "lr_find.json"
    assert find_lr_advice(tmp_path / "runs/my-cnn", "cnn", "fashion-mnist") is None    # another dataset's advice
    assert find_lr_advice(tmp_path / "runs/my-mlp", "mlp", "digits") is None


def test_a_run_beside_lr_find_records_the_advice_and_warns(tmp_path, capsys):
    runs = tmp_path / "runs"
    assert main(["lr-find", "digits", "--model", "mlp", "--hidden", "16", "--steps", "20", "--bf16", "off",
                 "--out", str(runs / "lr-find-mlp")]) == 0
    advice = json.loads((runs / "lr-find-mlp/lr_find.json").read_text())
    assert advice["model"] == "mlp" and advice["dataset"] == "digits"
    lr = advice["suggested_lr"] * 50
    assert main(["train", "digits", "--model", "mlp", "--hidden", "16", "--epochs", "1", "--bf16", "off",
                 "--lr", str(lr), "--out", str(runs / "mlp")]) == 0
    report = json.loads((runs / "mlp/report.json").read_text())
    assert report["lr_find"]["suggested_lr"] == advice["suggested_lr"] and report["lr_find"]["lr"] == lr
    assert any("50x above" in w for w in report["warnings"])


def accuracy_of(y: np.ndarray, share: float, rng: np.random.Generator) -> np.ndarray:
    """Predictions right for exactly round(share * len(y)) images, wrong (another class) for the rest."""
    pred = (y + 1 + rng.integers(0, y.max(), len(y))) % (y.max() + 1)
    right = rng.choice(len(y), round(share * len(y)), replace=False)
    pred[right] = y[right]
    return pred


@pytest.mark.parametrize("classes, accuracy, warns", [
    (10, 0.18, True),       # the translated digits: 18% on 10 classes, silent before
    (10, 0.26, True), (10, 0.30, False),
    (2, 0.58, True), (2, 0.62, False),
    (100, 0.19, True), (100, 0.23, False),
])
def test_the_useless_line_scales_with_the_classes(classes, accuracy, warns):
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(classes), 2000 // classes)
    pred = accuracy_of(y, accuracy, rng)
    # on balanced classes the share of the majority rule's errors removed is Cohen's kappa
    assert skill(np.mean(pred == y), 1 / classes) == pytest.approx(cohen_kappa_score(y, pred))
    found = useless_model_warnings(y, pred, [str(c) for c in range(classes)])
    assert any("learnt next to nothing" in w for w in found) == warns
    assert (skill(accuracy, 1 / classes) < SKILL_MIN) == warns


def test_a_test_split_too_small_to_tell_warns():
    y = np.repeat([0, 1], 10)
    pred = y.copy()
    pred[[0, 1, 2, 10, 11, 12, 13]] ^= 1                    # 13 of 20 right: 65%, kappa 0.3
    [warning] = useless_model_warnings(y, pred, ["a", "b"])
    p = sum(math.comb(20, k) for k in range(13, 21)) / 2 ** 20     # P(X >= 13), X ~ Binomial(20, 0.5)
    assert "not significantly above" in warning and f"p = {p:.2g}" in warning
    assert useless_model_warnings(np.repeat([0, 1], 100), np.repeat([0, 1], 100) ^ (np.arange(200) % 3 == 0),
                                  ["a", "b"]) == []                         # 67% of 200: significant


# The course cnn on the translated digits (48 px, 15 epochs, measured): it never learns.
STUCK = [(2.439, 0.096), (2.434, 0.052), (2.337, 0.074), (2.307, 0.089), (2.301, 0.074), (2.29, 0.059),
         (2.278, 0.074), (2.279, 0.119), (2.263, 0.089), (2.253, 0.119), (2.25, 0.081), (2.233, 0.104),
         (2.22, 0.111), (2.216, 0.104), (2.211, 0.089)]


def records(pairs):
    return [{"epoch": i + 1, "train_loss": loss, "val_accuracy": acc} for i, (loss, acc) in enumerate(pairs)]


def test_a_network_that_did_not_learn_warns_from_its_history():
    balanced = np.full(10, 0.1)
    assert chance_loss(balanced) == pytest.approx(math.log(10))
    [warning] = learning_warnings(records(STUCK), balanced, "try --model vgg")
    assert "training loss has not fallen in 15 epochs (2.21 at best, against the 2.3 " in warning
    assert "validation accuracy stayed near chance through training (11.9% at best, epoch 8" in warning
    assert warning.endswith("the network did not learn: try --model vgg")
    learning = [(2.0 / (i + 1), min(0.3 + 0.1 * i, 0.95)) for i in range(10)]
    assert learning_warnings(records(learning), balanced) == []
    # cutmix holds the training loss high while validation shows learning: no warning
    assert learning_warnings(records([(2.2, 0.5), (2.15, 0.8), (2.1, 0.9)]), balanced) == []
    # the loss alone, without validation
    [alone] = learning_warnings([{"epoch": 1, "train_loss": 2.4}, {"epoch": 2, "train_loss": 2.3}], balanced)
    assert "training loss has not fallen" in alone and "validation" not in alone
    # validation near chance while the training loss fell: memorised, did not generalise
    [memorised] = learning_warnings(records([(1.5, 0.12), (0.5, 0.11), (0.1, 0.13)]), balanced)
    assert "validation accuracy stayed near chance" in memorised and "loss" not in memorised
    # class frequencies set chance: 90% of one class
    skewed = np.r_[0.9, np.full(9, 0.1 / 9)]
    assert learning_warnings(records([(0.5, 0.9), (0.45, 0.91)]), skewed)          # learnt the prior only
    [diverged] = learning_warnings(records([(1.0, 0.5), (float("nan"), 0.1)]), balanced, "lower the rate")
    assert "became nan at epoch 2" in diverged and diverged.endswith("lower the rate")


@pytest.fixture(scope="module")
def translated_digits(tmp_path_factory):
    """The issue's case, smaller so that it runs fast: the digits on 16 px noisy canvases."""
    images, labels = defaults.translated_digits(canvas=16)
    _, _, order = defaults.digits_split()
    train, test = order[:1347], order[1347:]
    return defaults.write_idx(tmp_path_factory.mktemp("translated") / "digits-translated",
                              (images[train], labels[train]), (images[test], labels[test]))


def test_the_course_cnn_on_translated_digits_warns_with_advice_and_vgg_does_not(translated_digits, tmp_path,
                                                                                capsys):
    fast = ["--bf16", "off", "--seed", "0", "--lr", "0.05", "--batch-size", "64"]    # no range test: fixed settings
    assert main(["train", str(translated_digits), "--model", "cnn", "--epochs", "3", *fast,
                 "--out", str(tmp_path / "cnn")]) == 0
    terminal = " ".join(capsys.readouterr().out.split())
    report = json.loads((tmp_path / "cnn/report.json").read_text())
    assert report["accuracy"] < 0.25
    advice = "the course cnn's dense head is position-specific; try --model vgg"
    assert any("learnt next to nothing" in w and advice in w for w in report["warnings"])
    assert any("the network did not learn" in w for w in report["warnings"])
    assert advice in terminal and advice in (tmp_path / "cnn/report.html").read_text().replace("&#39;", "'")
    assert main(["train", str(translated_digits), "--model", "vgg", "--widths", "16,32,64", "--epochs", "4", *fast,
                 "--out", str(tmp_path / "vgg")]) == 0
    report = json.loads((tmp_path / "vgg/report.json").read_text())
    assert report["accuracy"] > 0.4 and report["warnings"] == []
