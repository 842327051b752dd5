"""Linear classifier: losses against hand-written references, learning on real data, saving."""

import numpy as np
import pytest
import torch

from imgcls.data import load_dataset
from imgcls.errors import ImgclsError
from imgcls.models import LinearClassifier, create_model, list_models, load_model


def test_svm_loss_is_the_multiclass_hinge():
    rng = np.random.default_rng(0)
    scores, labels = rng.normal(size=(32, 5)), rng.integers(0, 5, 32)
    expected = np.mean([sum(max(0.0, s[j] - s[y] + 1) for j in range(5) if j != y) for s, y in zip(scores, labels)])
    got = LinearClassifier(loss="svm")._data_loss(torch.tensor(scores), torch.tensor(labels))
    assert got.item() == pytest.approx(expected)


def test_softmax_loss_is_cross_entropy():
    rng = np.random.default_rng(1)
    scores, labels = rng.normal(size=(16, 4)), rng.integers(0, 4, 16)
    log_probs = scores - np.log(np.exp(scores).sum(1, keepdims=True))
    got = LinearClassifier(loss="softmax")._data_loss(torch.tensor(scores), torch.tensor(labels))
    assert got.item() == pytest.approx(-log_probs[np.arange(16), labels].mean())


@pytest.mark.parametrize("loss", ["softmax", "svm"])
def test_learns_digits(loss):
    splits = load_dataset("digits")
    model = create_model("linear", loss=loss, epochs=20).fit(splits.train)
    assert model.score(splits.test) > 0.9
    losses = [h["train_loss"] for h in model.history_]
    assert losses[-1] < losses[0] / 2
    proba = model.predict_proba(splits.test)
    np.testing.assert_allclose(proba.sum(1), 1, rtol=1e-5)


def test_same_seed_same_model_and_roundtrip(tmp_path):
    splits = load_dataset("digits")
    a = create_model("linear", epochs=2, seed=3).fit(splits.train)
    b = create_model("linear", epochs=2, seed=3).fit(splits.train)
    torch.testing.assert_close(a.weight_, b.weight_)
    loaded = load_model(a.save(tmp_path))
    np.testing.assert_array_equal(loaded.predict(splits.test), a.predict(splits.test))
    assert loaded.get_params() == a.get_params()


def test_registry_errors_name_the_valid_choices():
    assert {"knn", "linear"} <= set(list_models())
    with pytest.raises(ImgclsError, match="valid models: .*knn.*linear"):
        create_model("resnet9000")
    with pytest.raises(ImgclsError, match="no parameter.*momentun"):
        create_model("linear", momentun=0.9)
    with pytest.raises(ImgclsError, match="unknown loss"):
        create_model("linear", loss="hinge2")
