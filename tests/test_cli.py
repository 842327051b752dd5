"""The command line end to end, in-process and as a real `imgcls` process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from imgcls.cli import main
from imgcls.models import read_metadata


@pytest.fixture(scope="module")
def knn_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "knn"
    assert main(["train", "digits", "--model", "knn", "--k", "3", "--metric", "l1", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def digit_pngs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pngs")
    digits = load_digits()
    for i in range(12):
        image = np.round(digits.images[i] * 255 / 16).astype(np.uint8)
        Image.fromarray(image).resize((32, 32)).save(folder / f"digit{i}_{digits.target[i]}.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_train_writes_a_complete_run(knn_run):
    for name in ("model.safetensors", "config.json", "report.json", "report.html", "confusion_matrix.png"):
        assert (knn_run / name).is_file(), name
    report = json.loads((knn_run / "report.json").read_text())
    assert report["accuracy"] > 0.95 and report["val_accuracy"] > 0.9
    meta = read_metadata(knn_run)
    assert meta["model"] == "knn" and meta["params"] == {"threshold": 0.0, "k": 3, "metric": "l1", "weights": "uniform"}
    assert meta["class_names"] == [str(d) for d in range(10)]
    assert meta["preprocessing"] == {"channels": 1, "size": [8, 8], "resize": "crop", "crop_pct": 1.0,
                                     "interpolation": "bilinear", "decode": "draft"}
    assert meta["metrics"]["accuracy"] == pytest.approx(report["accuracy"])
    config = json.loads((knn_run / "config.json").read_text())
    assert config["data_options"]["seed"] == 0


def test_eval_reproduces_the_training_report(knn_run, tmp_path, capsys):
    assert main(["eval", str(knn_run / "model.safetensors"), "digits", "--out", str(tmp_path)]) == 0
    again = json.loads((tmp_path / "report.json").read_text())
    first = json.loads((knn_run / "report.json").read_text())
    assert again["accuracy"] == first["accuracy"]
    assert again["confusion_matrix"] == first["confusion_matrix"]


def test_predict_json_sorted_scores(knn_run, digit_pngs, capsys):
    assert main(["predict", str(knn_run), str(digit_pngs), "--top-k", "3", "--json"]) == 0
    captured = capsys.readouterr()
    results = json.loads(captured.out)
    assert len(results) == 12                     # notes.txt is not an image file
    for item in results:
        scores = [p["score"] for p in item["predictions"]]
        assert len(scores) == 3 and scores == sorted(scores, reverse=True)
        assert sum(scores) <= 1 + 1e-9
    right = sum(item["predictions"][0]["label"] == Path(item["path"]).stem.split("_")[1] for item in results)
    assert right >= 10


def test_predict_text_and_unreadable_file(knn_run, digit_pngs, tmp_path, capsys):
    broken = tmp_path / "broken.png"
    broken.write_bytes((digit_pngs / "digit0_0.png").read_bytes()[:40])
    assert main(["predict", str(knn_run), str(digit_pngs / "digit1_1.png"), str(broken)]) == 0
    captured = capsys.readouterr()
    assert "digit1_1.png: 1 " in captured.out
    assert "skipped" in captured.err and "broken.png" in captured.err


@pytest.mark.parametrize("argv,message", [
    (["train", "no/such/folder"], "no such file or folder"),
    (["train", "digits", "--model", "knm"], "unknown model 'knm' (did you mean knn?)"),
    (["train", "digits", "--model", "knn", "--lr", "0.1"], "--lr does not apply to model 'knn'"),
    (["predict", "no/such/model", "x.png"], "no/such/model: no such file or folder"),
    (["predict", "--model", "no/such/model", "x.png"], "neither a saved model"),
    (["eval", "no/such/model", "digits"], "neither a saved model"),
])
def test_bad_input_gets_one_line_errors(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_a_pickle_is_never_loaded(tmp_path, capsys):
    evil = tmp_path / "model.safetensors"
    torch.save({"weights": torch.zeros(3)}, evil)
    assert main(["predict", str(evil), str(evil)]) == 2
    assert "not a safetensors file" in capsys.readouterr().err


def test_folder_dataset_with_a_corrupt_file(tmp_path):
    rng = np.random.default_rng(0)
    for name, value in (("dark", 40), ("light", 210)):
        (tmp_path / "data" / name / "nested").mkdir(parents=True)
        for i in range(10):
            pixels = np.clip(rng.normal(value, 20, (12, 16, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(tmp_path / "data" / name / "nested" / f"{i}.jpg")
    (tmp_path / "data" / "dark" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    out = tmp_path / "run"
    assert main(["train", str(tmp_path / "data"), "--model", "linear", "--epochs", "5", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["accuracy"] == 1.0
    assert [s["path"] for s in report["skipped_files"]] == [str(Path("dark") / "corrupt.jpg")]
    assert main(["train", str(tmp_path / "data"), "--strict", "--out", str(out)]) == 2


def test_data_info_and_models(tmp_path, capsys):
    assert main(["data", "info", "digits", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "digits: 10 classes, grayscale 8x8" in out
    info = json.loads((tmp_path / "info.json").read_text())
    assert sum(sum(c.values()) for c in info["counts"].values()) == 1797
    with Image.open(tmp_path / "samples.png") as png:
        assert png.size[1] > 500
    assert main(["models"]) == 0
    assert "knn" in capsys.readouterr().out


def test_installed_command_runs(knn_run, digit_pngs):
    exe = Path(sys.executable).with_name("imgcls")
    env = {**os.environ, "IMGCLS_PROGRESS": "0"}
    result = subprocess.run([str(exe), "predict", str(knn_run), str(digit_pngs / "digit3_3.png"), "--json"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)[0]["predictions"][0]["label"] == "3"
    help_text = subprocess.run([str(exe), "train", "--help"], capture_output=True, text=True, timeout=60).stdout
    assert "examples:" in help_text and "--metric" in help_text
