"""Warnings about a useless model (imgcls.evaluation.sanity): a collapsed network's run warns in
report.json, the terminal and report.html; a good model's does not; overfitting histories and a
learning rate far from lr-find's advice warn."""

from __future__ import annotations

import json

import numpy as np

from imgcls.cli import main
from imgcls.evaluation.sanity import (find_lr_advice, lr_advice_warning, overfitting_warning,
                                      useless_model_warnings)

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
    [useless, collapsed] = report["warnings"]
    assert "commonest class" in useless and "collapsed onto one class" in collapsed and "100.0%" in collapsed
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
    [only] = useless_model_warnings(y, guesses, NAMES)
    assert "commonest class" in only
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
