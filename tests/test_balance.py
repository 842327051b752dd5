"""Class balancing (balance=weights|sampler): the weights against scikit-learn, the sampler's draws,
better minority recall on an imbalanced set, exact resume, and the command line."""

import numpy as np
import pytest
import torch
from scipy.stats import chi2
from sklearn.metrics import balanced_accuracy_score
from sklearn.utils.class_weight import compute_class_weight

from imgcls.cli import main
from imgcls.data import ImageDataset
from imgcls.data.splits import balanced_order, class_balance_weights
from imgcls.errors import ImgclsError
from imgcls.models import LinearClassifier, create_model, read_metadata
from imgcls.training.config import TrainingConfig

MLP = dict(epochs=10, hidden="32", bf16="off", batch_size=64, lr=0.05)


def imbalanced(counts: list[int], seed: int, brighter: float = 40) -> ImageDataset:
    """8x8 grayscale images: class c is a slightly brighter column pair 2c, 2c+1 under heavy noise,
    so a minority class is learnable but swamped when it is rare."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for c, n in enumerate(counts):
        base = np.full((8, 8), 110.0)
        base[:, 2 * c:2 * c + 2] += brighter
        images.append(np.clip(base + rng.normal(0, 45, (n, 8, 8)), 0, 255))
        labels += [c] * n
    return ImageDataset.from_arrays(np.concatenate(images).astype(np.uint8), labels)


@pytest.fixture(scope="module")
def data():
    return imbalanced([400, 20], seed=0), imbalanced([200, 200], seed=1)


@pytest.fixture(scope="module")
def faint():
    """The same with the column pair 25 brighter, not 40: the linear model standardises its pixels,
    so it finds even a rare class 40 brighter, and needs fainter columns to be swamped."""
    return imbalanced([400, 20], seed=0, brighter=25), imbalanced([200, 200], seed=1, brighter=25)


def test_weights_match_scikit_learn_and_absent_classes_stay_finite():
    labels = np.random.default_rng(0).choice(5, size=300, p=[0.6, 0.25, 0.1, 0.04, 0.01])
    expected = compute_class_weight("balanced", classes=np.arange(5), y=labels)
    np.testing.assert_allclose(class_balance_weights(labels, 5).numpy(), expected, rtol=1e-6)
    # Class 2 absent (and a trailing class 4): weight 0, the others as scikit-learn's on the classes present.
    labels = np.array([0] * 30 + [1] * 5 + [3] * 2)
    weights = class_balance_weights(torch.tensor(labels), 5).numpy()
    assert np.isfinite(weights).all() and weights[2] == weights[4] == 0
    np.testing.assert_allclose(weights[[0, 1, 3]], compute_class_weight("balanced", classes=np.array([0, 1, 3]),
                                                                        y=labels), rtol=1e-6)


def test_weighted_svm_loss_is_the_weighted_mean_hinge():
    rng = np.random.default_rng(2)
    scores, labels, w = rng.normal(size=(32, 4)), rng.integers(0, 4, 32), np.array([0.5, 1.0, 2.0, 4.0])
    hinge = np.array([sum(max(0.0, s[j] - s[y] + 1) for j in range(4) if j != y) for s, y in zip(scores, labels)])
    got = LinearClassifier(loss="svm")._data_loss(torch.tensor(scores), torch.tensor(labels), torch.tensor(w))
    assert got.item() == pytest.approx((w[labels] * hinge).sum() / w[labels].sum())


def test_sampler_draws_classes_uniformly_and_is_seeded():
    labels = torch.tensor([0] * 2000 + [1] * 300 + [2] * 60 + [3] * 10)
    order = balanced_order(labels, torch.Generator().manual_seed(0))
    assert len(order) == len(labels) and order.min() >= 0 and order.max() < len(labels)
    drawn = torch.bincount(labels[order], minlength=4).numpy()
    expected = len(labels) / 4
    assert ((drawn - expected) ** 2 / expected).sum() < chi2.ppf(0.999, df=3)
    again = balanced_order(labels, torch.Generator().manual_seed(0))
    other = balanced_order(labels, torch.Generator().manual_seed(1))
    assert torch.equal(order, again) and not torch.equal(order, other)


@pytest.mark.parametrize("name, params", [("linear", dict(epochs=10)), ("linear", dict(epochs=10, loss="svm")),
                                          ("mlp", MLP)])
def test_balancing_recovers_the_minority_class(data, faint, name, params):
    train, test = faint if name == "linear" else data
    truth = test.labels.numpy()
    scores = {}
    for balance in ("none", "weights", "sampler"):
        predicted = create_model(name, balance=balance, **params).fit(train).predict(test)
        scores[balance] = balanced_accuracy_score(truth, predicted), (predicted[truth == 1] == 1).mean()
    (plain, plain_recall) = scores["none"]
    assert plain < 0.75 and plain_recall < 0.5, scores       # the minority class is swamped
    for balance in ("weights", "sampler"):
        accuracy, recall = scores[balance]
        assert accuracy > plain + 0.15 and recall > 0.8, scores


def test_transfer_probe_weights_its_head():
    """The probe's full-batch head on embeddings where one of 4 informative features shifts with the class."""
    gen = torch.Generator().manual_seed(0)
    model = create_model("transfer:efficientnet_lite0", balance="none")
    net = model.new_network(2, pretrained=False)        # no download: the head alone is fitted here

    def blobs(counts):
        labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
        embeddings = torch.zeros(len(labels), net.num_features)
        embeddings[:, :4] = torch.randn(len(labels), 4, generator=gen) + labels[:, None]
        return embeddings, labels
    (x, y), (x_test, y_test) = blobs([400, 20]), blobs([200, 200])
    heads, scores = {}, {}
    for balance in ("none", "weights", "sampler"):
        model.balance, model.net_ = balance, net
        torch.manual_seed(0)                             # the head's initialisation, as fit() seeds it
        model._fit_probe(x, y, 2)
        head = net.backbone.body.get_classifier()
        heads[balance] = head.weight.detach().clone()
        with torch.no_grad():
            scores[balance] = balanced_accuracy_score(y_test, head(x_test).argmax(1))
    assert scores["weights"] > scores["none"] + 0.15, scores
    assert torch.equal(heads["weights"], heads["sampler"])      # full batch: the sampler weights too


@pytest.mark.parametrize("name", ["linear", "mlp"])
def test_unknown_balance_is_an_error_listing_the_choices(name):
    with pytest.raises(ImgclsError, match="unknown balance 'oversample'; valid: none, weights, sampler"):
        create_model(name, balance="oversample")
    with pytest.raises(ImgclsError, match="unknown balance"):
        TrainingConfig(balance="Weights").check()


def test_sampler_resume_is_exact(data, tmp_path, stop_after):
    train, test = data
    params = {**MLP, "epochs": 4, "balance": "sampler"}
    whole = create_model("mlp", **params).fit(train, validation=test, run_dir=tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        create_model("mlp", **params).fit(train, validation=test, run_dir=tmp_path / "b", hooks=[stop_after(2)])
    resumed = create_model("mlp", **params).fit(train, validation=test, run_dir=tmp_path / "b", resume=True)
    for (name, a), b in zip(whole.net_.state_dict().items(), resumed.net_.state_dict().values()):
        assert torch.equal(a, b), name
    assert [r["train_loss"] for r in resumed.history_] == [r["train_loss"] for r in whole.history_]
    with pytest.raises(ImgclsError, match="other settings"):
        create_model("mlp", **{**params, "balance": "weights"}).fit(train, run_dir=tmp_path / "b", resume=True)


def test_cli_trains_with_balance_and_records_it(class_tree, tmp_path, capsys):
    root = class_tree(tmp_path / "data", {"common": 40, "rare": 8})
    out = tmp_path / "run"
    assert main(["train", str(root), "--model", "mlp", "--hidden", "16", "--epochs", "2", "--bf16", "off",
                 "--balance", "weights", "--out", str(out)]) == 0
    assert read_metadata(out)["params"]["balance"] == "weights"
    assert main(["train", str(root), "--model", "knn", "--balance", "weights", "--out", str(out)]) == 2
    assert "--balance does not apply to model 'knn'" in capsys.readouterr().err


def test_lr_find_draws_batches_as_balanced_training_would():
    from imgcls.training.config import TrainingConfig
    from imgcls.training.lr_find import _draw
    labels = torch.tensor([0] * 950 + [1] * 50)
    gen = torch.Generator().manual_seed(0)
    drawn = labels[_draw(labels, TrainingConfig(balance="sampler", batch_size=4000), gen)]
    assert abs(drawn.float().mean().item() - 0.5) < 0.03           # minority drawn half the time
    drawn = labels[_draw(labels, TrainingConfig(balance="none", batch_size=4000), gen)]
    assert abs(drawn.float().mean().item() - 0.05) < 0.02
