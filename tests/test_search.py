"""Hyperparameter search for networks: trials on the validation split, pruning, resume, one test look."""

import json

from imgcls.cli import main

GRID = ["--grid", "lr=0.01,0.1,0.3", "--grid", "hidden=32,64", "--grid", "epochs=3", "--grid", "bf16=off"]


def test_random_search_saves_every_trial_and_resumes(tmp_path, capsys):
    out = tmp_path / "search"
    assert main(["tune", "digits", "--model", "mlp", *GRID, "--trials", "3", "--out", str(out)]) == 0
    trials = json.loads((out / "trials.json").read_text())
    assert len(trials) == 3 and {t["state"] for t in trials} <= {"complete", "pruned"}
    scores = [t["val_accuracy"] for t in trials]
    assert scores == sorted(scores, reverse=True)
    report = json.loads((out / "report.json").read_text())
    assert report["tuning"]["best_params"] == trials[0]["params"] and report["test_evaluations"] == 1
    assert report["val_accuracy"] == trials[0]["val_accuracy"]
    completed = [t for t in trials if t["state"] == "complete"]
    assert all((out / "trials" / f"trial-{t['trial']:03d}" / "trial.json").is_file() for t in completed)
    # Same command with more trials: the 3 done are kept, one more runs.
    assert main(["tune", "digits", "--model", "mlp", *GRID, "--trials", "4", "--out", str(out)]) == 0
    again = json.loads((out / "trials.json").read_text())
    assert len(again) == 4 and {t["trial"] for t in trials} < {t["trial"] for t in again}


def test_grid_search_covers_the_grid(tmp_path):
    out = tmp_path / "grid"
    grid = ["--grid", "lr=0.05,0.2", "--grid", "hidden=32", "--grid", "epochs=2", "--grid", "bf16=off"]
    assert main(["tune", "digits", "--model", "mlp", *grid, "--search", "grid", "--out", str(out)]) == 0
    trials = json.loads((out / "trials.json").read_text())
    assert sorted(t["params"]["lr"] for t in trials) == [0.05, 0.2]


def test_bad_search_settings(tmp_path, capsys):
    assert main(["tune", "digits", "--model", "mlp", "--grid", "learning_rate=0.1", "--out", str(tmp_path)]) == 2
    assert "KEY among" in capsys.readouterr().err
    assert main(["tune", "digits", "--model", "mlp", *GRID, "--val-fraction", "0", "--out", str(tmp_path)]) == 2
    assert "validation split" in capsys.readouterr().err
