"""The preprocessing that decoded the training images travels whole to the model, and every place
that means "decode like this model" decodes exactly so."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
from PIL import Image

import imgcls.data.load as data_load
from imgcls.cli import main
from imgcls.data.images import Preprocessing, decode_image
from imgcls.data.load import DataOptions
from imgcls.inference import predict_files
from imgcls.models import create_model, load_model, read_metadata
from imgcls.models.pretrained import pretrained_model
from imgcls.saved_models import evaluate_saved


@pytest.fixture
def spy_load_dataset(monkeypatch):
    """Records the DataOptions every load_dataset call receives (runs, export and the rest)."""
    seen = []
    real = data_load.load_dataset

    def spy(source, options=None):
        seen.append(options)
        return real(source, options)
    monkeypatch.setattr(data_load, "load_dataset", spy)
    monkeypatch.setattr("imgcls.saved_models.load_dataset", spy)
    return seen


@pytest.mark.parametrize("resize", ["pad", "stretch"])
def test_a_model_trained_with_pad_or_stretch_predicts_a_file_as_training_decoded_it(tmp_path, resize):
    rng = np.random.default_rng(0)
    for label, shape in (("wide", (10, 30, 3)), ("tall", (30, 12, 3))):
        (tmp_path / "d" / label).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(tmp_path / "d" / label / f"{i}.png")
    out = tmp_path / "run"
    assert main(["train", str(tmp_path / "d"), "--model", "knn", "--k", "1", "--image-size", "16",
                 "--resize", resize, "--val-fraction", "0", "--out", str(out)]) == 0
    model = load_model(out)
    assert model.preprocessing_ == Preprocessing(3, (16, 16), resize=resize)
    assert read_metadata(out)["preprocessing"]["resize"] == resize
    # every training image is its own nearest neighbour once a file is decoded the way training did
    files = [tmp_path / "d" / label / f"{i}.png" for label in ("wide", "tall") for i in range(6)]
    reference = model.reference_.reshape(-1, 3, 16, 16)
    decoded = np.stack([decode_image(f, model.preprocessing_) for f in files])
    hits = [(reference == decoded[i]).flatten(1).all(1).any().item() for i in range(len(files))]
    assert sum(hits) == len(reference)           # the training files (test files are not memorised)
    predictions, failures = predict_files(model, files, k=1)
    assert not failures and all(p.scores[0] == 1.0 for p, hit in zip(predictions, hits) if hit)


@pytest.fixture(scope="module")
def photo_splits(tmp_path_factory):
    """train/ and test/ folders of scikit-image photos, their class folders named as ImageNet's labels."""
    root = tmp_path_factory.mktemp("photos")
    for split in ("train", "test"):
        for label, name in (("tiger cat", "chelsea"), ("espresso", "coffee")):
            (root / split / label).mkdir(parents=True)
            Image.fromarray(getattr(skimage.data, name)()).save(root / split / label / f"{name}.jpg", quality=95)
    return root


def test_eval_and_export_calibration_decode_lite0s_way(photo_splits, spy_load_dataset, tmp_path):
    lite0 = pretrained_model("efficientnet_lite0")
    assert lite0.preprocessing_.crop_pct == 0.875 and lite0.preprocessing_.interpolation == "bicubic"
    result = evaluate_saved("efficientnet_lite0", str(photo_splits), DataOptions(val_fraction=0), out=None)
    assert spy_load_dataset[-1].preprocessing == lite0.preprocessing_
    assert result.metrics["accuracy"] == 1.0
    splits = data_load.load_dataset(photo_splits, spy_load_dataset[-1])
    expected = decode_image(photo_splits / "test" / "espresso" / "coffee.jpg", lite0.preprocessing_)
    assert np.array_equal(splits.test.images[splits.test.paths.index("test/espresso/coffee.jpg")].numpy(), expected)
    with pytest.raises(Exception, match="drop --image-size"):
        evaluate_saved("efficientnet_lite0", str(photo_splits), DataOptions(size=64, val_fraction=0), out=None)


def test_export_calibration_decodes_as_the_model(photo_splits, spy_load_dataset, tmp_path):
    x = np.random.default_rng(0).integers(0, 255, (40, 3, 24, 24), dtype=np.uint8)
    model = create_model("mlp", hidden="8", epochs=1).fit(x, np.arange(40) % 2, class_names=["tiger cat", "espresso"])
    model.preprocessing_ = Preprocessing(3, (24, 24), resize="crop", crop_pct=0.8, interpolation="bicubic")
    model.save(tmp_path / "m")
    assert main(["export", str(tmp_path / "m"), "--int8", "--calibrate", str(photo_splits),
                 "--calibration-images", "2", "--out", str(tmp_path / "m.int8.onnx")]) == 0
    assert spy_load_dataset[-1].preprocessing == model.preprocessing_


def test_a_transfer_model_decodes_large_photos_at_its_backbones_size(tmp_path):
    rng = np.random.default_rng(0)
    sources = {"cat": skimage.data.chelsea(), "coffee": skimage.data.coffee()}
    for label, photo in sources.items():
        (tmp_path / "d" / label).mkdir(parents=True)
        for i in range(4):
            h, w = rng.integers(160, 320, 2)
            top, left = rng.integers(0, photo.shape[0] - h), rng.integers(0, photo.shape[1] - w)
            Image.fromarray(photo[top:top + h, left:left + w]).save(tmp_path / "d" / label / f"{i}.jpg")
    model = create_model("transfer:efficientnet_lite0", mode="probe", input_size=96)
    out = tmp_path / "run"
    assert main(["train", str(tmp_path / "d"), "--model", "transfer:efficientnet_lite0", "--input-size", "96",
                 "--val-fraction", "0", "--test-fraction", "0.25", "--out", str(out)]) == 0
    saved = load_model(out).preprocessing_
    assert saved == model.input_preprocessing() == Preprocessing(3, (96, 96), "crop", 0.75, "bicubic")
    # flags still win: --image-size sets the side, the backbone keeps its crop and interpolation
    assert main(["train", str(tmp_path / "d"), "--model", "transfer:efficientnet_lite0", "--input-size", "96",
                 "--image-size", "80", "--val-fraction", "0", "--test-fraction", "0.25", "--out", str(out / "b")]) == 0
    assert load_model(out / "b").preprocessing_ == Preprocessing(3, (80, 80), "crop", 0.75, "bicubic")
