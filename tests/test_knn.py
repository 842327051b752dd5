"""kNN against scikit-learn's brute-force KNeighborsClassifier, the trusted reference."""

import numpy as np
import pytest
import torch
from sklearn.neighbors import KNeighborsClassifier

from imgcls.data import ImageDataset
from imgcls.errors import ImgclsError
from imgcls.models import create_model, load_model
from imgcls.models import distance
from imgcls.models.distance import ExactSearch


def random_images(n, seed, classes=10, side=8):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 1, side, side), dtype=np.uint8), rng.integers(0, classes, n)


def expected_votes(sk_model, X, k, n_classes):
    """sklearn's neighbours' labels, vote counts, and whether the k-th neighbour is tied in distance."""
    dist, idx = sk_model.kneighbors(X, k + 1)
    labels = sk_model._y[idx[:, :k]]
    counts = np.stack([np.bincount(row, minlength=n_classes) for row in labels])
    return labels, counts, dist[:, k - 1] == dist[:, k]


@pytest.mark.parametrize("metric,p", [("l2", 2), ("l1", 1)])
@pytest.mark.parametrize("k", [1, 4, 5])
def test_predictions_match_sklearn(metric, p, k):
    train_x, train_y = random_images(600, 0, side=16)
    test_x, _ = random_images(300, 1, side=16)
    ours = create_model("knn", k=k, metric=metric).fit(train_x, train_y)
    sk = KNeighborsClassifier(n_neighbors=k, algorithm="brute", p=p).fit(train_x.reshape(600, -1), train_y)
    flat = test_x.reshape(300, -1)
    labels, counts, distance_tie = expected_votes(sk, flat, k, 10)
    pred, sk_pred = ours.predict(test_x), sk.predict(flat)
    unique = ((counts == counts.max(1, keepdims=True)).sum(1) == 1) & ~distance_tie
    assert unique.sum() > 100
    np.testing.assert_array_equal(pred[unique], sk_pred[unique])
    # Tied votes: the tied class whose member is nearest (first in sklearn's sorted neighbours).
    for i in np.flatnonzero(~unique & ~distance_tie):
        tied = np.flatnonzero(counts[i] == counts[i].max())
        assert pred[i] == next(label for label in labels[i] if label in tied)
    np.testing.assert_allclose(ours.predict_proba(test_x)[~distance_tie], sk.predict_proba(flat)[~distance_tie])


@pytest.mark.parametrize("metric,p", [("l2", 2), ("l1", 1)])
def test_neighbours_and_distances_match_sklearn(metric, p):
    train_x, train_y = random_images(500, 2, side=12)
    test_x, _ = random_images(80, 3, side=12)
    ours = create_model("knn", k=7, metric=metric).fit(train_x, train_y)
    sk = KNeighborsClassifier(n_neighbors=7, algorithm="brute", p=p).fit(train_x.reshape(500, -1), train_y)
    dist, idx = ours.kneighbors(test_x)
    sk_dist, sk_idx = sk.kneighbors(test_x.reshape(80, -1).astype(np.float64), 8)
    no_ties = (np.diff(sk_dist, axis=1) > 0).all(1)
    assert no_ties.sum() > 40
    np.testing.assert_array_equal(idx[no_ties], sk_idx[no_ties, :7])
    np.testing.assert_allclose(dist, sk_dist[:, :7], rtol=1e-12)   # distances agree even where tied


def test_float_features_match_sklearn():
    rng = np.random.default_rng(4)
    train = rng.normal(size=(400, 3, 4, 4)).astype(np.float32)
    queries = rng.normal(size=(50, 3, 4, 4)).astype(np.float32)
    search = ExactSearch(torch.from_numpy(train.reshape(400, -1)), "l2")
    dist, idx = search.search(torch.from_numpy(queries.reshape(50, -1)), 5)
    sk = KNeighborsClassifier(n_neighbors=5, algorithm="brute").fit(train.reshape(400, -1), np.zeros(400))
    sk_dist, sk_idx = sk.kneighbors(queries.reshape(50, -1))
    np.testing.assert_array_equal(idx.numpy(), sk_idx)
    np.testing.assert_allclose(dist.numpy(), sk_dist, rtol=1e-5)


def test_distance_weighting_matches_sklearn():
    train_x, train_y = random_images(400, 5, classes=4)
    test_x, _ = random_images(100, 6, classes=4)
    test_x[:3] = train_x[:3]   # exact matches: those neighbours take the whole vote
    ours = create_model("knn", k=6, weights="distance").fit(train_x, train_y)
    sk = KNeighborsClassifier(n_neighbors=6, algorithm="brute", weights="distance").fit(train_x.reshape(400, -1), train_y)
    np.testing.assert_allclose(ours.predict_proba(test_x), sk.predict_proba(test_x.reshape(100, -1)), rtol=1e-9)
    np.testing.assert_array_equal(ours.predict(test_x)[:3], train_y[:3])


def test_chunking_and_int8_path_agree_with_float_path(monkeypatch):
    train_x, _ = random_images(300, 7, side=10)
    test_x, _ = random_images(70, 8, side=10)
    reference = torch.from_numpy(train_x.reshape(300, -1))
    queries = torch.from_numpy(test_x.reshape(70, -1))
    whole = ExactSearch(reference, "l2").search(queries, 4)
    monkeypatch.setattr(distance, "_CHUNK", 16)
    monkeypatch.setattr(distance, "_KERNEL_CHUNK", 16)
    chunked = ExactSearch(reference, "l2").search(queries, 4)
    as_float = ExactSearch(reference.float(), "l2").search(queries.float(), 4)
    for got in (chunked, as_float):
        torch.testing.assert_close(got[1], whole[1])
        torch.testing.assert_close(got[0], whole[0])


def test_save_load_roundtrip_keeps_predictions(tmp_path):
    train_x, train_y = random_images(200, 9)
    model = create_model("knn", k=3, metric="l1").fit(train_x, train_y, class_names=list("abcdefghij"))
    path = model.save(tmp_path / "knn.safetensors")
    loaded = load_model(path)
    assert loaded.get_params() == {"threshold": 0.0, "k": 3, "metric": "l1", "weights": "uniform"}
    assert loaded.class_names_ == list("abcdefghij")
    np.testing.assert_array_equal(loaded.predict(train_x[:50]), model.predict(train_x[:50]))


def test_k_larger_than_training_set_and_bad_params():
    x, y = random_images(4, 10, classes=2)
    y[:2] = [0, 1]
    model = create_model("knn", k=10).fit(x, y)
    assert model.predict_proba(x).sum(1) == pytest.approx(np.ones(4))
    with pytest.raises(ImgclsError, match="metric"):
        create_model("knn", metric="cosine")
    with pytest.raises(ImgclsError, match="k must be"):
        create_model("knn", k=0)


def test_predict_refuses_images_of_another_shape():
    x, y = random_images(20, 11)
    model = create_model("knn").fit(ImageDataset.from_arrays(x, y))
    with pytest.raises(ImgclsError, match="shape"):
        model.predict(np.zeros((2, 1, 9, 9), dtype=np.uint8))


def test_the_exact_rerank_a_few_queries_at_a_time_gives_the_brute_force_answer(monkeypatch):
    """Photos have 150,528 values each: the re-rank's differences are sliced to stay small."""
    gen = torch.Generator().manual_seed(0)
    reference = torch.randint(0, 256, (300, 500), dtype=torch.uint8, generator=gen)
    queries = torch.randint(0, 256, (50, 500), dtype=torch.uint8, generator=gen)
    monkeypatch.setattr(distance, "_RERANK_BYTES", 1)        # one query at a time
    dist, idx = distance.CandidateSearch(reference, "l2", distance.float_l2_candidates).search(queries, 7)
    brute = torch.cdist(queries.double(), reference.double())
    assert torch.equal(idx, brute.argsort(dim=1, stable=True)[:, :7])
    torch.testing.assert_close(dist, brute.gather(1, idx))
