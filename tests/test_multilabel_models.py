"""Multi-label classifiers: kNN against scikit-learn's multi-output kNN, linear with BCE, per-label
thresholds, saving, and clear errors for models and options that cannot handle multi-label data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from sklearn.neighbors import KNeighborsClassifier

from imgcls.data.load import DataOptions, from_arrays
from imgcls.errors import ImgclsError
from imgcls.models import create_model, load_model
from imgcls.task import MultiLabel, choose_thresholds


@pytest.fixture(scope="module")
def splits(quadrants):
    x, y = quadrants(600)
    return from_arrays(x, y, class_names=["a", "b", "c"], options=DataOptions(val_fraction=0.15, test_fraction=0.2))


@pytest.mark.parametrize("weights", ["uniform", "distance"])
def test_knn_label_shares_equal_scikit_learns_multi_output_knn(quadrants, weights):
    x, y = quadrants(300, seed=1, noise=200)      # noisy enough that neighbours disagree
    train_x, train_y, test_x = x[:240], y[:240], x[240:]
    ours = create_model("knn", k=7, weights=weights, threshold=0.5).fit(train_x, train_y)
    theirs = KNeighborsClassifier(7, weights=weights, algorithm="brute").fit(
        train_x.reshape(240, -1).astype(float), train_y)
    flat = test_x.reshape(60, -1).astype(float)
    expected = np.stack([p[:, 1] for p in theirs.predict_proba(flat)], axis=1)
    assert np.allclose(ours.predict_proba(test_x), expected)
    # scikit-learn's multi-output vote takes a label where more than half the weight carries it
    assert ours.predict(test_x).shape == (60, 3)
    assert (expected > 0.5).astype(np.uint8)[np.abs(expected - 0.5) > 1e-9].tolist() == \
        ours.predict(test_x)[np.abs(expected - 0.5) > 1e-9].tolist()


@pytest.mark.parametrize("name, params", [("knn", {"k": 5}), ("linear", {"epochs": 20}),
                                          ("mlp", {"epochs": 8, "hidden": "32"})])
def test_multi_label_models_learn_save_and_reload(splits, name, params, tmp_path):
    model = create_model(name, **params).fit(splits.train, validation=splits.val)
    assert isinstance(model.task_, MultiLabel) and len(model.task_.thresholds) == 3
    proba = model.predict_proba(splits.test)
    assert proba.shape == (len(splits.test), 3) and ((proba >= 0) & (proba <= 1)).all()
    assert not np.allclose(proba.sum(1), 1)                    # not a softmax: labels are independent
    predicted = model.predict(splits.test)
    assert predicted.shape == (len(splits.test), 3) and set(np.unique(predicted)) <= {0, 1}
    assert model.score(splits.test) > 0.85                    # subset accuracy: every label right
    expected = choose_thresholds(splits.val.labels.numpy(), model.predict_proba(splits.val))
    assert np.allclose(model.task_.thresholds, expected)      # chosen on validation for F1
    model.save(tmp_path / "m")
    again = load_model(tmp_path / "m")
    assert again.task_ == model.task_
    assert np.array_equal(again.predict(splits.test), predicted)


def test_a_global_threshold_is_used_for_every_label(splits):
    model = create_model("linear", epochs=5, threshold=0.3).fit(splits.train, validation=splits.val)
    assert model.task_.thresholds == (0.3, 0.3, 0.3)
    assert np.array_equal(model.predict(splits.test), (model.predict_proba(splits.test) >= 0.3).astype(np.uint8))


def test_balance_weights_trains_with_pos_weight(splits):
    model = create_model("linear", epochs=5, balance="weights").fit(splits.train, validation=splits.val)
    assert model.score(splits.test) > 0.8


@pytest.mark.parametrize("params, fragment", [
    ({"loss": "svm"}, "loss=softmax"),
    ({"balance": "sampler"}, "balance=weights"),
])
def test_options_that_cannot_handle_multi_label_data_are_one_line_errors(splits, params, fragment):
    with pytest.raises(ImgclsError, match=fragment) as info:
        create_model("linear", **params).fit(splits.train)
    assert "\n" not in str(info.value)


def test_thresholds_outside_the_open_unit_interval_and_on_single_label_data_are_errors(quadrants):
    for bad in (1.0, 1.5, -0.2):
        with pytest.raises(ImgclsError, match="strictly between 0 and 1"):
            create_model("knn", threshold=bad)
    x, _ = quadrants(20)
    with pytest.raises(ImgclsError, match="multi-label data only"):
        create_model("knn", threshold=0.4).fit(x, np.arange(20) % 2)


def test_a_model_saved_before_tasks_existed_loads_as_single_label(quadrants, tmp_path):
    x, _ = quadrants(40)
    model = create_model("knn", k=1).fit(x, np.arange(40) % 2)
    path = model.save(tmp_path / "old")
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["imgcls"])
    del meta["task"]
    del meta["params"]["threshold"]
    save_file(load_file(str(path)), str(path), metadata={"imgcls": json.dumps(meta)})
    again = load_model(path)
    assert not again.task_.multi_label and np.array_equal(again.predict(x), model.predict(x))
    assert torch.equal(torch.as_tensor(again.predict(x)), torch.as_tensor(np.arange(40) % 2))


@pytest.fixture(scope="module")
def splits16(quadrants):
    x, y = quadrants(480, seed=2)
    x = np.kron(x, np.ones((2, 2), dtype=np.uint8))              # 16x16: big enough for every network
    return from_arrays(x, y, class_names=["a", "b", "c"], options=DataOptions(val_fraction=0.2, test_fraction=0.2))


@pytest.mark.parametrize("name, params", [
    ("mlp", {"hidden": "64"}), ("lenet5", {}), ("cnn", {}), ("vgg", {"widths": "8,16"}), ("resnet20", {}),
    ("alexnet", {"widths": "8,16,16,16,16", "hidden": "32,32"}), ("inception", {"width_mult": 0.125}),
    ("timm:resnet10t", {}),
])
def test_every_network_trains_on_multi_label_data_with_bce_and_validation_map(splits16, name, params):
    model = create_model(name, epochs=3, batch_size=32, lr=0.05, **params)
    model.fit(splits16.train, validation=splits16.val)
    assert [set(r) >= {"val_loss", "val_mAP", "val_accuracy"} for r in model.history_] == [True] * 3
    best = max(range(3), key=lambda e: model.history_[e]["val_mAP"])
    assert model.train_state_.best_epoch == best + 1                     # auto monitor: validation mAP
    assert isinstance(model.task_, MultiLabel) and len(model.task_.thresholds) == 3
    proba = model.predict_proba(splits16.test)
    assert proba.shape == (len(splits16.test), 3) and not np.allclose(proba.sum(1), 1)
    logits = model.logits(torch.as_tensor(splits16.test.images))
    assert np.allclose(proba, torch.sigmoid(logits).numpy(), atol=1e-5)  # one sigmoid per label


def test_multi_label_network_learns_and_early_stops_on_map(splits16, tmp_path):
    model = create_model("cnn", epochs=12, batch_size=32, lr=0.05, patience=3, balance="weights")
    model.fit(splits16.train, validation=splits16.val, run_dir=tmp_path / "run")
    from sklearn.metrics import average_precision_score
    test_map = average_precision_score(splits16.test.labels.numpy(), model.predict_proba(splits16.test))
    assert test_map > 0.9
    assert (tmp_path / "run" / "checkpoints" / "best.safetensors").is_file()
    one = create_model("cnn", monitor="val_mAP")
    with pytest.raises(ImgclsError, match="multi-label data"):
        one.fit(splits16.train.images, np.arange(len(splits16.train)) % 2)


@pytest.mark.parametrize("mode", ["probe", "knn", "finetune"])
def test_transfer_learns_multi_label_data_in_every_mode(splits16, mode):
    model = create_model("transfer:efficientnet_lite0", mode=mode, input_size=32, epochs=2, head_epochs=2,
                         lr=0.01, batch_size=32, k=5)
    model.fit(splits16.train, validation=splits16.val)
    assert isinstance(model.task_, MultiLabel)
    proba = model.predict_proba(splits16.test)
    assert proba.shape == (len(splits16.test), 3) and not np.allclose(proba.sum(1), 1)
    predicted = model.predict(splits16.test)
    assert np.array_equal(predicted, (proba >= np.asarray(model.task_.thresholds)).astype(np.uint8))
    if mode == "knn":      # a label's score is the share of the k nearest training embeddings carrying it
        assert set(np.unique(np.round(proba * 5, 6))) <= {0, 1, 2, 3, 4, 5}
    from sklearn.metrics import average_precision_score
    assert average_precision_score(splits16.test.labels.numpy(), proba) > 0.6


def test_resume_refuses_a_checkpoint_of_the_other_task_and_takes_one_from_before_auto(splits16, tmp_path):
    from imgcls.training import checkpoint as ckpt
    run = tmp_path / "run"
    create_model("mlp", hidden="16", epochs=1, batch_size=64).fit(splits16.train, validation=splits16.val,
                                                                  run_dir=run)
    last = run / "checkpoints" / "last.safetensors"
    tensors, meta = ckpt.load_checkpoint(last)
    assert meta["task"] == "multi-label"
    # a checkpoint written before monitor "auto" existed (monitor val_mAP spelled out) resumes
    ckpt.save_checkpoint(last, tensors, {**meta, "config": {**meta["config"], "monitor": "val_mAP"}})
    resumed = create_model("mlp", hidden="16", epochs=2, batch_size=64)
    resumed.fit(splits16.train, validation=splits16.val, run_dir=run, resume=True)
    assert [r["epoch"] for r in resumed.history_] == [1, 2]
    single = splits16.train.images, np.arange(len(splits16.train)) % 2
    with pytest.raises(ImgclsError, match="multi-label data, this data is single-label"):
        create_model("mlp", hidden="16", epochs=3, batch_size=64).fit(*single, run_dir=run, resume=True)


def test_score_refuses_labels_of_the_other_task(splits):
    model = create_model("knn", k=3).fit(splits.train)
    with pytest.raises(ImgclsError, match="multi-label model scored against class-index labels"):
        model.score(splits.test.images, np.zeros(len(splits.test), dtype=int))
