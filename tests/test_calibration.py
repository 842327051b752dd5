"""Calibration: metrics against torchmetrics and NumPy, temperature against a direct minimisation of
the validation NLL, kNN/linear against scikit-learn's CalibratedClassifierCV, and the calibration
travelling through save/load, ONNX export, training's report and `imgcls calibrate`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.optimize import minimize_scalar
from sklearn.calibration import CalibratedClassifierCV
from sklearn.frozen import FrozenEstimator

from checks import one_line_error
from imgcls.cli import main
from imgcls.data.dataset import ImageDataset
from imgcls.data.load import load_dataset
from imgcls.evaluation.calibration import calibration_metrics, expected_calibration_error
from imgcls.models import create_model, load_model, read_metadata
from imgcls.models.calibration import Temperature, calibrate, fit_temperature, temperature_nll, uncalibrated

FIXTURES = Path(__file__).parent / "fixtures" / "before_sklearn"


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def noisy():
    """The digits with heavy pixel noise (fixed seed): hard enough that a network can be overconfident."""
    generator = torch.Generator().manual_seed(0)

    def noised(split: ImageDataset) -> ImageDataset:
        pixels = split.images.float() + torch.randn(split.images.shape, generator=generator) * 90
        return ImageDataset(pixels.clamp(0, 255).round().to(torch.uint8), split.labels, split.class_names)
    splits = load_dataset("digits")
    return noised(splits.train.subset(torch.arange(150))), noised(splits.val), noised(splits.test)


@pytest.fixture(scope="module")
def overfit_mlp(noisy):
    """An MLP trained on 150 noisy digits long past fitting them: confidently wrong on new ones."""
    return create_model("mlp", epochs=40, batch_size=150, hidden="256", bf16="off", channels_last="off",
                        augment="none", weight_decay=0.0, opt="adamw", lr=0.01).fit(noisy[0])


def _random_probabilities(n=600, classes=5, seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, classes)) * 3
    labels = np.where(rng.random(n) < 0.7, logits.argmax(1), rng.integers(0, classes, n))
    proba = np.exp(logits - logits.max(1, keepdims=True))
    return proba / proba.sum(1, keepdims=True), labels, logits


def test_ece_nll_and_brier_match_torchmetrics_and_direct_computations():
    from torchmetrics.classification import MulticlassCalibrationError
    proba, labels, _ = _random_probabilities()
    ours = calibration_metrics(labels, proba)
    reference = MulticlassCalibrationError(num_classes=5, n_bins=15, norm="l1")
    assert ours["ece"] == pytest.approx(float(reference(torch.from_numpy(proba).float(), torch.from_numpy(labels))),
                                        abs=1e-6)
    confidence, correct = proba.max(1), proba.argmax(1) == labels
    edges = np.linspace(0, 1, 16)
    direct = sum(abs(correct[m].mean() - confidence[m].mean()) * m.mean()
                 for m in ((confidence >= lo) & ((confidence < hi) | (hi == 1)) for lo, hi in zip(edges, edges[1:]))
                 if m.any())
    assert ours["ece"] == pytest.approx(direct, abs=1e-12)
    assert ours["nll"] == pytest.approx(-np.log(proba[np.arange(len(labels)), labels]).mean(), rel=1e-9)
    assert ours["brier"] == pytest.approx(((proba - np.eye(5)[labels]) ** 2).sum(1).mean(), rel=1e-9)
    perfect = np.eye(5)[labels]
    assert expected_calibration_error(labels, perfect) == 0.0


def test_fitted_temperature_is_the_minimum_of_the_validation_nll():
    _, labels, logits = _random_probabilities(seed=1)
    views = [torch.from_numpy(logits)]

    def nll(t):
        return float(temperature_nll(views, torch.from_numpy(labels), torch.tensor(1 / t, dtype=torch.float64)))
    direct = minimize_scalar(nll, bounds=(0.05, 20), method="bounded", options={"xatol": 1e-10}).x
    fitted = fit_temperature(views, labels)
    assert fitted == pytest.approx(direct, rel=1e-5)
    assert fitted > 1.5          # 30% of the labels are noise: the logits are overconfident
    # Two views (flip TTA): the minimum of the NLL of the averaged probabilities, which differs from one view's.
    flipped = [views[0], views[0][:, torch.randperm(5, generator=torch.Generator().manual_seed(0))]]
    direct = minimize_scalar(lambda t: float(temperature_nll(flipped, torch.from_numpy(labels),
                                                             torch.tensor(1 / t, dtype=torch.float64))),
                             bounds=(0.05, 20), method="bounded", options={"xatol": 1e-10}).x
    assert fit_temperature(flipped, labels) == pytest.approx(direct, rel=1e-5)


def test_temperature_scaling_lowers_an_overfit_networks_ece(noisy, overfit_mlp):
    _, val, test = noisy
    calibrated = calibrate(overfit_mlp, val)
    assert calibrated.calibration_.temperature > 1.5 and overfit_mlp.calibration_ is None
    before, after = overfit_mlp.predict_proba(test), calibrated.predict_proba(test)
    np.testing.assert_array_equal(before.argmax(1), after.argmax(1))       # temperature keeps every prediction
    y = test.labels.numpy()
    assert expected_calibration_error(y, after) < 0.5 * expected_calibration_error(y, before)
    assert calibration_metrics(y, after)["nll"] < calibration_metrics(y, before)["nll"]
    logits = overfit_mlp.logits(test.images)
    torch.testing.assert_close(calibrated.calibrated_logits(test.images), logits / calibrated.calibration_.temperature)
    torch.testing.assert_close(overfit_mlp.calibrated_logits(test.images), logits)


def _two_classes(digits_split):
    keep = torch.isin(digits_split.labels, torch.tensor([3, 8]))
    labels = (digits_split.labels[keep] == 8).long()
    return ImageDataset(digits_split.images[keep], labels, ["3", "8"])


@pytest.mark.parametrize("name", ["knn", "linear"])
@pytest.mark.parametrize("method", ["sigmoid", "isotonic"])
@pytest.mark.parametrize("binary", [False, True])
def test_knn_and_linear_calibration_is_calibrated_classifier_cvs(digits, name, method, binary):
    train, val, test = (_two_classes(s) if binary else s for s in (digits.train, digits.val, digits.test))
    model = create_model(name, **({"k": 7} if name == "knn" else {"epochs": 3})).fit(train)
    calibrated = calibrate(model, val, method=method)
    reference = CalibratedClassifierCV(FrozenEstimator(model), method=method).fit(val.images.numpy(),
                                                                                 val.labels.numpy())
    # Within float32 rounding: scikit-learn's isotonic regression interpolates in the dtype of the
    # float32 scores it is given; the saved calibration interpolates in float64.
    np.testing.assert_allclose(calibrated.predict_proba(test), reference.predict_proba(test.images.numpy()),
                               rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(calibrated.predict(test), reference.predict(test.images.numpy()))


def test_calibration_on_feature_vectors_with_string_labels():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 4)) + np.repeat(np.eye(3, 4) * 2, 100, axis=0)
    y = np.repeat(np.array(["ant", "bee", "cat"]), 100)
    model = create_model("linear", epochs=5).fit(X[::2], y[::2])
    calibrated = calibrate(model, X[1::2], y[1::2], method="sigmoid")
    reference = CalibratedClassifierCV(FrozenEstimator(model), method="sigmoid").fit(X[1::2], y[1::2])
    np.testing.assert_allclose(calibrated.predict_proba(X), reference.predict_proba(X), rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(calibrated.predict(X), reference.predict(X))


def test_save_and_load_keep_the_calibration(digits, noisy, overfit_mlp, tmp_path):
    knn = calibrate(create_model("knn", k=5).fit(digits.train), digits.val, method="isotonic")
    for model in (calibrate(overfit_mlp, noisy[1]), knn):
        path = model.save(tmp_path / f"{model.model_name}.safetensors")
        metadata = read_metadata(path)
        assert metadata["format_version"] == 4 and metadata["calibration"]["method"] == model.calibration_.method
        loaded = load_model(path)
        assert loaded.calibration_ == model.calibration_
        np.testing.assert_allclose(loaded.predict_proba(digits.test), model.predict_proba(digits.test), rtol=1e-6)
    plain = read_metadata(overfit_mlp.save(tmp_path / "plain.safetensors"))
    assert plain["format_version"] == 3 and plain["calibration"] is None     # older imgcls still reads it


def test_onnx_export_holds_the_calibration(noisy, overfit_mlp, tmp_path):
    from imgcls.inference.export import export_model
    from imgcls.inference.onnx_model import OnnxClassifier
    _, val, test = noisy
    images = test.images[:200]
    for method in ("temperature", "sigmoid"):
        model = calibrate(overfit_mlp, val, method=method)
        exported = OnnxClassifier.load(export_model(model, tmp_path / f"{method}.onnx"))
        assert exported.calibration_ == model.calibration_
        assert exported.metadata_["format_version"] == (1 if method == "temperature" else 3)
        np.testing.assert_allclose(exported.predict_proba(images), model.predict_proba(images), atol=2e-5)
        assert np.abs(exported.predict_proba(images) - overfit_mlp.predict_proba(images)).max() > 0.05
        # What eval's "before" column reads from an export: the uncalibrated probabilities.
        np.testing.assert_allclose(uncalibrated(exported).predict_proba(images), overfit_mlp.predict_proba(images),
                                   atol=2e-5)
    pytest.importorskip("openvino")
    from imgcls.inference.openvino_model import OpenVinoClassifier
    model = calibrate(overfit_mlp, val)
    ir = OpenVinoClassifier.load(export_model(model, tmp_path / "temperature.xml", "openvino"))
    np.testing.assert_allclose(ir.predict_proba(images), model.predict_proba(images), atol=2e-5)
    # Temperature scaling is in the graph: its logits are the calibrated ones.
    torch.testing.assert_close(OnnxClassifier.load(tmp_path / "temperature.onnx").calibrated_logits(images),
                               calibrate(overfit_mlp, val).calibrated_logits(images), atol=1e-4, rtol=1e-4)


def test_models_saved_before_calibration_load_and_predict_uncalibrated(digits):
    """Files written by imgcls 4218ca4 (format 2, tests/fixtures/before_sklearn) have no calibration,
    predict as they always did, and can be calibrated now."""
    expected = json.loads((FIXTURES / "expected.json").read_text())
    rng = np.random.default_rng(expected["queries_seed"])
    training = rng.integers(0, 256, (60, 1, 6, 6), dtype=np.uint8)          # the training images come first
    queries = rng.integers(0, 256, (12, 1, 6, 6), dtype=np.uint8)
    for name in ("knn", "linear", "mlp"):
        model = load_model(FIXTURES / f"{name}.safetensors")
        if "bf16" in model.get_params():     # recorded in fp32; bf16 "auto" may measure faster under load
            model.set_params(bf16="off")
        assert model.calibration_ is None and uncalibrated(model) is model
        np.testing.assert_allclose(model.predict_proba(queries), expected[name]["proba"], rtol=1e-5, atol=1e-6)
        labels = model.predict(training)          # the model's own labels: every class appears
        calibrated = calibrate(model, training, labels, "temperature" if model.has_logits else "sigmoid")
        assert calibrated.calibration_ is not None and model.calibration_ is None


def test_bad_calibration_inputs_are_one_line_errors(digits, overfit_mlp, quadrant_model):
    other = ImageDataset(digits.val.images, digits.val.labels, [f"c{i}" for i in range(10)])
    one_line_error(lambda: calibrate(overfit_mlp, other), "differ from the model's", "c0")
    one_line_error(lambda: calibrate(create_model("knn").fit(digits.train), digits.val), "temperature scaling needs")
    one_line_error(lambda: calibrate(quadrant_model, np.zeros((4, 8, 8), np.uint8), np.zeros((4, 3)), "sigmoid"),
                   "multi-label models are not calibrated")
    few = digits.val.subset(torch.nonzero(digits.val.labels < 9).flatten())
    one_line_error(lambda: calibrate(create_model("knn").fit(digits.train), few, method="sigmoid"),
                   "needs every class", "9")


def test_training_calibrates_networks_and_reports_before_and_after(tmp_path, capsys):
    out = tmp_path / "mlp"
    assert main(["train", "digits", "--model", "mlp", "--epochs", "3", "--hidden", "64", "--out", str(out)]) == 0
    assert "temperature scaling (T = " in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())["calibration"]
    assert report["method"] == "temperature" and report["measured_on"] == "test"
    assert report["ece_bins"] == "15 equal-width confidence bins"
    assert set(report["before"]) == set(report["after"]) == {"ece", "nll", "brier"}
    html = (out / "report.html").read_text()
    assert "<h2>Calibration</h2>" in html and "Reliability diagram" in html and (out / "reliability.png").is_file()
    model = load_model(out)
    assert isinstance(model.calibration_, Temperature) and model.calibration_.temperature == report["temperature"]
    assert main(["eval", str(out), "digits", "--out", str(tmp_path / "eval")]) == 0      # eval shows it as well
    again = json.loads((tmp_path / "eval" / "report.json").read_text())["calibration"]
    assert again["temperature"] == report["temperature"]
    assert again["after"] == pytest.approx(report["after"], rel=1e-3)

    # kNN is left uncalibrated by default; `imgcls calibrate` calibrates the saved model on the same val split.
    knn = tmp_path / "knn"
    assert main(["train", "digits", "--model", "knn", "--out", str(knn)]) == 0
    assert "calibration" not in json.loads((knn / "report.json").read_text())
    assert main(["calibrate", str(knn), "digits", "--method", "isotonic", "--out", str(tmp_path / "iso")]) == 0
    calibrated = load_model(tmp_path / "iso")
    splits = load_dataset("digits")
    expected = calibrate(load_model(knn), splits.val, method="isotonic")
    np.testing.assert_allclose(calibrated.predict_proba(splits.test), expected.predict_proba(splits.test))
    assert json.loads((tmp_path / "iso" / "report.json").read_text())["calibration"]["method"] == "isotonic"


def test_calibrate_command_errors_are_one_line(tmp_path, capsys, class_tree):
    model = create_model("knn").fit(np.zeros((4, 1, 8, 8), np.uint8) + np.arange(4)[:, None, None, None] * 50,
                                    [0, 1, 0, 1], class_names=["x", "y"])
    path = model.save(tmp_path / "knn.safetensors")
    root = class_tree(tmp_path / "tree", {"cat": 12, "dog": 12})
    assert main(["calibrate", str(path), str(root), "--channels", "3", "--out", str(tmp_path / "o")]) == 2
    assert main(["calibrate", str(path), str(root), "--out", str(tmp_path / "o.safetensors")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("imgcls: error: ") and "differ from the model's" in err[-1]
    assert main(["calibrate", str(path), str(root), "--method", "temperature", "--out", str(tmp_path / "o")]) == 2
    assert "temperature scaling needs" in capsys.readouterr().err


def test_calibrate_accept_fits_an_abstention_on_the_calibrated_scores(tmp_path, capsys):
    """--accept on calibrate: the threshold is chosen on val after calibrating, so it accepts the
    share asked of the calibrated model's scores; a model that already abstains is refitted alike."""
    from imgcls.models.abstention import fit_abstention
    knn = tmp_path / "knn.safetensors"
    splits = load_dataset("digits")
    create_model("knn").fit(splits.train).save(knn)
    out = tmp_path / "sure.safetensors"
    assert main(["calibrate", str(knn), "digits", "--method", "sigmoid", "--accept", "0.9", "--out", str(out)]) == 0
    model = load_model(out)
    expected = fit_abstention(calibrate(load_model(knn), splits.val, method="sigmoid"), splits.val, 0.9, "msp",
                              reference=splits.train)
    assert model.abstention_.threshold == pytest.approx(expected.threshold)
    assert model.calibration_ is not None and model.abstention_.accept == 0.9
    again = tmp_path / "again.safetensors"          # calibrating the abstaining model again keeps its 0.9
    assert main(["calibrate", str(out), "digits", "--method", "isotonic", "--out", str(again)]) == 0
    assert load_model(again).abstention_.accept == 0.9
    assert main(["calibrate", str(knn), "digits", "--accept", "1.5", "--out", str(out)]) == 2
    assert "imgcls: error:" in capsys.readouterr().err
