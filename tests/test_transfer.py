"""Transfer learning from the pretrained EfficientNet-Lite0: probe, kNN on embeddings, fine-tuning."""

import numpy as np
import pytest
import torch

from imgcls.data import load_dataset
from imgcls.errors import ImgclsError
from imgcls.models import create_model, load_model, pretrained_model
from imgcls.training.trainer import Hook


@pytest.fixture(scope="module")
def small_fashion():
    splits = load_dataset("fashion-mnist")
    return splits.train.subset(range(0, 54000, 90)), splits.test.subset(range(0, 10000, 50))


@pytest.mark.parametrize("mode,floor", [("probe", 0.7), ("knn", 0.65), ("finetune", 0.3)])
def test_modes_learn_and_roundtrip(mode, floor, small_fashion, tmp_path):
    train, test = small_fashion
    model = create_model("transfer:efficientnet_lite0", mode=mode, input_size=48, epochs=1, head_epochs=1,
                         batch_size=50, bf16="off")
    model.fit(train)
    assert model.score(test) > floor
    loaded = load_model(model.save(tmp_path / f"{mode}.safetensors"))
    np.testing.assert_array_equal(loaded.predict(test), model.predict(test))
    assert loaded.model_name == "transfer:efficientnet_lite0" and loaded.mode == mode


def test_embeddings_are_the_pretrained_bodys(small_fashion):
    train, _ = small_fashion
    model = create_model("transfer:efficientnet_lite0", mode="probe", input_size=48, bf16="off").fit(train)
    body = pretrained_model("efficientnet_lite0").net_.eval()
    x = train.images[:4].float().expand(-1, 3, -1, -1)
    x = torch.nn.functional.interpolate(x, size=(48, 48), mode="bilinear", antialias=True)
    with torch.no_grad():
        expected = body.forward_head(body.forward_features(x), pre_logits=True)
    torch.testing.assert_close(torch.from_numpy(model.embed(train.images[:4])), expected, atol=1e-4, rtol=1e-4)


def test_finetune_freezes_then_thaws_the_body(small_fashion):
    train, _ = small_fashion
    model = create_model("transfer:efficientnet_lite0", mode="finetune", input_size=32, epochs=1, head_epochs=1,
                         batch_size=100, bf16="off", lr=1e-3)
    before = pretrained_model("efficientnet_lite0").net_.body.conv_stem.weight.clone()
    seen = []

    class Watch(Hook):
        def on_epoch_end(self, trainer, record):
            seen.append(trainer.net.backbone.body.conv_stem.weight.detach().clone())

    model.fit(train, hooks=[Watch()])
    assert [r["stage"] for r in model.history_] == ["head", "all"]
    assert torch.equal(seen[0], before)             # head stage: the body is frozen
    assert not torch.equal(seen[1], before)         # then it learns, at body_lr x lr


def test_bad_transfer_settings():
    with pytest.raises(ImgclsError, match="unknown mode"):
        create_model("transfer:efficientnet_lite0", mode="linear")
    with pytest.raises(ImgclsError, match="no pretrained backbone"):
        create_model("transfer:resnet20")
