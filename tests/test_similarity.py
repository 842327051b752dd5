"""Similarity search: indexes against scikit-learn's brute-force neighbours, HNSW recall, saving,
adding images, the CLI and its gallery."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image
from sklearn.neighbors import NearestNeighbors

from imgcls.cli import main
from imgcls.data import DataOptions, load_dataset
from imgcls.data.dataset import ImageDataset
from imgcls.errors import ImgclsError
from imgcls.models import create_model, load_model
from imgcls.similarity import ImageIndex, load_features, open_index_for


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", DataOptions(val_fraction=0))


def _index(kind: str, data: ImageDataset, features: str = "pixels", **hnsw) -> ImageIndex:
    return ImageIndex(features, kind, **hnsw).add(data, [f"item{i}" for i in range(len(data))], "train")


def test_exact_search_equals_sklearn_brute_force(digits):
    index = _index("exact", digits.train)
    distances, indices = index.nearest(digits.test.images, 5)
    x_train = digits.train.images.reshape(len(digits.train), -1).numpy().astype(np.float64)
    x_test = digits.test.images.reshape(len(digits.test), -1).numpy().astype(np.float64)
    ref_dist, ref_idx = NearestNeighbors(n_neighbors=5, algorithm="brute").fit(x_train).kneighbors(x_test)
    np.testing.assert_allclose(distances.numpy(), ref_dist, rtol=1e-9)
    # Indices agree except where two training images lie at exactly the same distance.
    ties = np.isclose(np.diff(ref_dist, axis=1), 0).any(1)
    assert (indices.numpy()[~ties] == ref_idx[~ties]).all() and ties.mean() < 0.05


def test_hnsw_recall_and_exact_distances(digits):
    exact = _index("exact", digits.train)
    hnsw = _index("hnsw", digits.train, m=16, ef_construction=100, ef_search=64)
    _, truth = exact.nearest(digits.test.images, 10)
    distances, found = hnsw.nearest(digits.test.images, 10)
    recall = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found.tolist(), truth.tolist())])
    assert recall > 0.97
    # Reported distances are exact, recomputed from the stored pixels, and sorted.
    x_train = digits.train.images.reshape(len(digits.train), -1).double()
    x_test = digits.test.images.reshape(len(digits.test), -1).double()
    expected = (x_train[found] - x_test[:, None]).norm(dim=-1)
    torch.testing.assert_close(distances, expected)
    assert (distances.diff(dim=1) >= 0).all()


def test_embedding_features_use_cosine_distance(digits, tmp_path):
    net = create_model("mlp", epochs=1, hidden="32", seed=0, bf16="off").fit(digits.train)
    net.save(tmp_path / "mlp")
    features = load_features(str(tmp_path / "mlp"))
    vectors = features.vectors(digits.train.images)
    torch.testing.assert_close(vectors.norm(dim=1), torch.ones(len(vectors)))
    index = _index("exact", digits.train, features=str(tmp_path / "mlp"))
    distances, indices = index.nearest(features.vectors(digits.test.images), 5)
    reference = NearestNeighbors(n_neighbors=5, algorithm="brute", metric="cosine")
    ref_dist, ref_idx = reference.fit(net.embed(digits.train)).kneighbors(net.embed(digits.test))
    np.testing.assert_allclose(distances.numpy(), ref_dist, atol=1e-5)
    assert (indices.numpy() == ref_idx).mean() > 0.99     # float ties aside


def test_models_without_an_embedding_are_refused(digits, tmp_path):
    create_model("knn").fit(digits.train).save(tmp_path / "knn")
    with pytest.raises(ImgclsError, match="no image embedding"):
        load_features(str(tmp_path / "knn"))
    with pytest.raises(ImgclsError, match="features must be pixels, a saved network"):
        load_features("no-such-model")


@pytest.mark.parametrize("kind", ["exact", "hnsw"])
def test_save_load_and_add_without_rebuilding(digits, tmp_path, kind):
    first, second = digits.train.subset(range(800)), digits.train.subset(range(800, len(digits.train)))
    index = ImageIndex("pixels", kind, m=16).add(first, [f"a{i}" for i in range(800)], "train")
    path = index.save(tmp_path / "index")
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask        # not mkstemp's private 0600
    loaded = ImageIndex.load(path)
    loaded.add(second, [f"b{i}" for i in range(len(second))], "extra")
    whole = _index(kind, digits.train, m=16)
    assert len(loaded) == len(whole) == len(digits.train)
    torch.testing.assert_close(loaded.vectors_, whole.vectors_)
    found = loaded.search(second.images[:20], 1)
    # Every added image finds itself; for exact search the whole answer matches a fresh build.
    assert [r[0].item for r in found] == [f"b{i}" for i in range(20)] and all(r[0].distance == 0 for r in found)
    assert {r[0].split for r in found} == {"extra"}
    if kind == "exact":
        assert torch.equal(loaded.nearest(digits.test.images, 5)[1], whole.nearest(digits.test.images, 5)[1])
    again = ImageIndex.load(loaded.save(tmp_path / "grown.safetensors"))
    assert again.items_ == loaded.items_ and again.splits_ == loaded.splits_ and len(again) == len(digits.train)
    assert torch.equal(again.thumbnails_, digits.train.images)     # pixel vectors double as thumbnails


def test_adding_new_classes_extends_the_names():
    a = ImageDataset(torch.zeros(4, 1, 4, 4, dtype=torch.uint8), [0, 1, 0, 1], ["cat", "dog"])
    b = ImageDataset(torch.full((2, 1, 4, 4), 200, dtype=torch.uint8), [0, 1], ["dog", "fox"])
    index = ImageIndex().add(a, list("abcd"), "train").add(b, list("ef"), "train")
    assert index.class_names_ == ["cat", "dog", "fox"]
    assert index.labels_.tolist() == [0, 1, 0, 1, 1, 2]


def test_an_index_is_not_a_model_and_a_model_is_not_an_index(digits, tmp_path):
    _index("exact", digits.train).save(tmp_path / "index")
    create_model("knn").fit(digits.train).save(tmp_path / "knn")
    with pytest.raises(ImgclsError, match="not an imgcls model"):
        load_model(tmp_path / "index" / "index.safetensors")
    with pytest.raises(ImgclsError, match="not an imgcls index"):
        ImageIndex.load(tmp_path / "knn" / "model.safetensors")
    with pytest.raises(ImgclsError, match="no index there"):
        ImageIndex.load(tmp_path / "nowhere")


def test_open_index_for_builds_a_new_index_or_reopens_one_with_its_settings(digits, tmp_path):
    index, path = open_index_for(tmp_path / "index", add=False, settings={"kind": "hnsw", "m": 8})
    assert (index.features, index.kind, index.m, index.ef_construction, len(index)) == ("pixels", "hnsw", 8, 200, 0)
    assert path == tmp_path / "index" / "index.safetensors" and not path.exists()
    index.add(digits.train.subset(range(50)), [f"a{i}" for i in range(50)], "train").save(path)
    with pytest.raises(ImgclsError, match="exists; add to it with --add"):
        open_index_for(tmp_path / "index", add=False, settings={})
    again, same = open_index_for(path, add=True, settings={"features": "pixels", "kind": "hnsw"})
    assert same == path and (again.kind, again.m, again.items_) == ("hnsw", 8, index.items_)
    with pytest.raises(ImgclsError, match=r"drop --kind exact \(the index has hnsw\), --m 16 \(the index has 8\)$"):
        open_index_for(path, add=True, settings={"kind": "exact", "m": 16, "ef_search": 64})
    with pytest.raises(ImgclsError, match="no index there"):
        open_index_for(tmp_path / "nowhere", add=True, settings={})
    with pytest.raises(ImgclsError, match="unknown index settings metric"):
        open_index_for(tmp_path / "other", add=False, settings={"metric": "l1"})


# -- the command line --------------------------------------------------------------------------
@pytest.fixture
def shapes(tmp_path, write_image):
    """Three classes of 16x16 images: bright squares at different places, with a little noise."""
    rng = np.random.default_rng(0)
    root = tmp_path / "shapes"
    for label, (name, corner) in enumerate({"top": (0, 4), "middle": (5, 5), "bottom": (10, 4)}.items()):
        for i in range(6):
            image = rng.integers(0, 30, (16, 16), dtype=np.uint8)
            image[corner[0]:corner[0] + 6, corner[1]:corner[1] + 6] = 220 + i
            write_image(root / name / f"{name}{i}.png", image)
    return root


def test_cli_index_search_gallery_and_add(shapes, tmp_path, capsys, write_image):
    out = tmp_path / "index"
    assert main(["index", str(shapes), "--out", str(out), "--image-size", "16"]) == 0
    assert "indexed 18 images" in capsys.readouterr().out
    query = write_image(tmp_path / "query.png", np.asarray(Image.open(shapes / "middle" / "middle3.png")))
    assert main(["search", str(out), str(query), "-k", "3", "--json", "--out", str(tmp_path / "g")]) == 0
    result = json.loads(capsys.readouterr().out)
    neighbours = result[0]["neighbours"]
    assert neighbours[0]["item"].endswith("middle/middle3.png") and neighbours[0]["distance"] == 0
    assert [n["label"] for n in neighbours] == ["middle"] * 3
    html = (tmp_path / "g" / "gallery.html").read_text()
    assert (tmp_path / "g" / "gallery.png").stat().st_size > 1000 and "middle3.png" in html
    assert not re.search(r'(src|href)="https?:', html) and html.count("data:image/png;base64,") == 4

    # An indexed file as the query: its neighbours, not itself.
    assert main(["search", str(out), str(shapes / "top" / "top0.png"), "-k", "2"]) == 0
    text = capsys.readouterr().out
    assert "top0.png" not in text.split("\n", 1)[1] and text.count("top ") == 2

    more = tmp_path / "more"
    write_image(more / "top" / "new.png", np.asarray(Image.open(shapes / "top" / "top0.png")))
    write_image(more / "side" / "odd.png", np.zeros((16, 16), dtype=np.uint8))
    assert main(["index", str(more), "--add", "--out", str(out)]) == 0
    assert "added 2 images" in capsys.readouterr().out and len(ImageIndex.load(out)) == 20
    assert ImageIndex.load(out).class_names_ == ["bottom", "middle", "top", "side"]


def test_cli_errors_are_one_line(shapes, tmp_path, capsys, write_image):
    out = tmp_path / "index"
    assert main(["index", str(shapes), "--out", str(out)]) == 0
    assert main(["index", str(shapes), "--out", str(out)]) == 2
    assert "exists; add to it with --add" in capsys.readouterr().err
    assert main(["index", str(shapes), "--out", str(tmp_path / "x"), "--features", "nonsense"]) == 2
    assert main(["index", str(shapes), "--out", str(tmp_path / "y"), "--kind", "hnsw", "--m", "0"]) == 2
    assert main(["search", str(tmp_path / "missing"), str(shapes)]) == 2
    assert "no index there" in capsys.readouterr().err
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image at all")
    assert main(["search", str(out), str(broken)]) == 2
    assert "no readable query images" in capsys.readouterr().err
    good = shapes / "top" / "top1.png"
    assert main(["search", str(out), str(broken), str(good), "-k", "1"]) == 0
    captured = capsys.readouterr()
    assert "top1.png" in captured.out and "skipped" in captured.err and "broken.png" in captured.err
    assert main(["search", str(out)]) == 2


def test_cli_queries_drawn_from_a_dataset(tmp_path, capsys):
    out = tmp_path / "digits-index"
    assert main(["index", "digits", "--kind", "hnsw", "--out", str(out)]) == 0
    assert "indexed 1,797 images" in capsys.readouterr().out      # no official test split: kept whole
    assert main(["search", str(out), "--from", "digits", "--split", "train", "--n", "20", "-k", "5", "--json",
                 "--ef-search", "32"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert len(results) == 20 and all(r["query"].startswith("digits/train/") for r in results)
    assert all(r["query"] not in {n["item"] for n in r["neighbours"]} and len(r["neighbours"]) == 5 for r in results)
    agreeing = np.mean([n["label"] == r["label"] for r in results for n in r["neighbours"]])
    assert agreeing > 0.9      # 8x8 digits: pixel neighbours mostly share the label
    assert main(["search", str(out), "--from", "digits", "--split", "test"]) == 2
    assert "has no test split" in capsys.readouterr().err


def test_pretrained_embeddings_find_the_same_photo(tmp_path, capsys):
    photos = tmp_path / "photos"
    for name in ("chelsea", "coffee", "astronaut", "rocket"):
        (photos / name).mkdir(parents=True)
        Image.fromarray(getattr(skimage.data, name)()).save(photos / name / f"{name}.jpg", quality=95)
    query = Image.fromarray(skimage.data.chelsea()).transpose(Image.Transpose.FLIP_LEFT_RIGHT).resize((200, 150))
    query.save(tmp_path / "cat-flipped.jpg")
    out = tmp_path / "photo-index"
    assert main(["index", str(photos), "--features", "efficientnet_lite0", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["search", str(out), str(tmp_path / "cat-flipped.jpg"), "-k", "4", "--json"]) == 0
    neighbours = json.loads(capsys.readouterr().out)[0]["neighbours"]
    assert neighbours[0]["label"] == "chelsea" and neighbours[0]["distance"] < 0.2
    assert neighbours[1]["distance"] > 2 * neighbours[0]["distance"]
    assert ImageIndex.load(out).metric == "cosine"


def _rectangles(root, write_image, count: int = 4, shape=(12, 20)):
    rng = np.random.default_rng(1)
    for name in ("a", "b"):
        for i in range(count):
            write_image(root / name / f"{name}{i}.png", rng.integers(0, 255, (*shape, 3), dtype=np.uint8))
    return root


def test_cli_index_keeps_the_resize_policy_and_non_square_sizes(tmp_path, capsys, write_image):
    data = _rectangles(tmp_path / "rect", write_image)
    out = tmp_path / "index"
    assert main(["index", str(data), "--out", str(out), "--image-size", "8", "--resize", "pad"]) == 0
    assert ImageIndex.load(out).preprocessing_.resize == "pad"
    capsys.readouterr()
    copy = write_image(tmp_path / "copy.png", np.asarray(Image.open(data / "a" / "a1.png")))
    assert main(["search", str(out), str(copy), "-k", "1", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)[0]["neighbours"][0]
    assert found["item"].endswith("a/a1.png") and found["distance"] == 0

    wide = tmp_path / "wide-index"
    assert main(["index", str(data), "--out", str(wide)]) == 0            # 12x20 kept as it is
    more = _rectangles(tmp_path / "more", write_image, count=1)
    (more / "a" / "a0.png").rename(more / "a" / "new.png")
    assert main(["index", str(more), "--add", "--out", str(wide)]) == 0
    assert "added 2 images" in capsys.readouterr().out and ImageIndex.load(wide).preprocessing_.size == (12, 20)


def test_cli_add_skips_what_the_index_holds_and_keeps_its_settings(shapes, tmp_path, capsys):
    out = tmp_path / "index"
    assert main(["index", str(shapes), "--out", str(out), "--kind", "hnsw", "--m", "8"]) == 0
    assert main(["index", str(shapes), "--add", "--out", str(out)]) == 0
    assert "added 0 images of shapes (18 already there, skipped)" in capsys.readouterr().out
    assert len(ImageIndex.load(out)) == 18
    assert main(["index", str(shapes), "--add", "--out", str(out), "--kind", "exact", "--m", "8"]) == 2
    assert "--add keeps the index's settings; drop --kind exact (the index has hnsw)" in capsys.readouterr().err
    assert main(["search", str(out), str(shapes / "top" / "top0.png"), "--from", "digits"]) == 2
    assert main(["search", str(out), "--from", "digits", "--n", "0"]) == 2
    assert "--n must be at least 1" in capsys.readouterr().err


def test_cli_indexes_a_flat_folder_or_a_single_class(tmp_path, capsys, write_image):
    flat = tmp_path / "holiday"
    for i in range(3):
        write_image(flat / f"p{i}.png", np.full((8, 8), 60 * i, dtype=np.uint8))
    assert main(["index", str(flat), "--out", str(tmp_path / "flat")]) == 0
    assert ImageIndex.load(tmp_path / "flat").class_names_ == ["holiday"]
    single = tmp_path / "single"
    write_image(single / "cats" / "c.png", np.zeros((8, 8), dtype=np.uint8))
    assert main(["index", str(single), "--out", str(tmp_path / "flat"), "--add"]) == 0
    assert "added 1 images" in capsys.readouterr().out
    assert ImageIndex.load(tmp_path / "flat").class_names_ == ["holiday", "cats"]


def test_a_changed_or_missing_features_model_is_a_clear_error(digits, tmp_path):
    first = create_model("mlp", epochs=1, hidden="16", bf16="off").fit(digits.train)
    first.save(tmp_path / "net")
    index = ImageIndex(str(tmp_path / "net")).add(digits.test, [str(i) for i in range(len(digits.test))], "test")
    assert index.features == str((tmp_path / "net" / "model.safetensors").resolve())
    index.save(tmp_path / "index")
    assert len(ImageIndex.load(tmp_path / "index").search(digits.test.images[:2], 3)[0]) == 3
    create_model("mlp", epochs=1, hidden="16", bf16="off", seed=1).fit(digits.train).save(tmp_path / "net")
    with pytest.raises(ImgclsError, match="has changed since this index was built"):
        ImageIndex.load(tmp_path / "index").search(digits.test.images[:2], 3)
    (tmp_path / "net" / "model.safetensors").unlink()
    with pytest.raises(ImgclsError, match="was built with features .* which are gone"):
        ImageIndex.load(tmp_path / "index").search(digits.test.images[:2], 3)


def test_network_features_of_non_square_images(tmp_path):
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 255, (40, 1, 12, 20), dtype=np.uint8), np.arange(40) % 2
    net = create_model("mlp", epochs=1, hidden="8", bf16="off").fit(images, labels)
    net.save(tmp_path / "net")
    features = load_features(str(tmp_path / "net"))
    assert features.vectors(torch.from_numpy(images[:5])).shape == (5, 8)
    rgb_large = torch.from_numpy(rng.integers(0, 255, (3, 3, 24, 40), dtype=np.uint8))
    assert features.vectors(rgb_large).shape == (3, 8)      # adapted to 1x12x20 inside


def test_known_decoding_streams_files_in_chunks(shapes, tmp_path, capsys, write_image, monkeypatch):
    import imgcls.similarity.build as build
    out = tmp_path / "index"
    assert main(["index", str(shapes), "--out", str(out)]) == 0
    monkeypatch.setattr(build, "PREDICT_BATCH", 4)
    more = tmp_path / "more"
    for i in range(7):
        write_image(more / ("left" if i % 2 else "right") / f"{i}.png", np.full((16, 16), 20 * i, dtype=np.uint8))
    (more / "left" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n cut short")
    assert main(["index", str(more), "--add", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "added 7 images" in captured.out and "broken.png" in captured.err
    index = ImageIndex.load(out)
    added = {Path(item).name: index.class_names_[int(label)] for item, label in zip(index.items_, index.labels_)
             if Path(item).parent.parent == more.resolve()}
    assert added == {f"{i}.png": "left" if i % 2 else "right" for i in range(7)}


def test_manifest_aliases_and_repeats_are_one_item_each(tmp_path, capsys, write_image):
    for i in range(4):
        write_image(tmp_path / "img" / f"{i}.png", np.full((8, 8), 50 * i, dtype=np.uint8))
    rows = ["img/0.png,a", "sub/../img/1.png,b", "img/2.png,a", "img/3.png,b", "img/0.png,b"]
    (tmp_path / "sub").mkdir()
    (tmp_path / "labels.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    out = tmp_path / "index"
    assert main(["index", str(tmp_path / "labels.csv"), "--out", str(out)]) == 0
    assert "indexed 4 images of labels (1 already there, skipped)" in capsys.readouterr().out
    index = ImageIndex.load(out)
    assert sorted(Path(item).name for item in index.items_) == ["0.png", "1.png", "2.png", "3.png"]
    assert all(".." not in item for item in index.items_)
    assert main(["search", str(out), str(tmp_path / "img" / "1.png"), "-k", "3", "--json"]) == 0
    assert "1.png" not in {Path(n["item"]).name for n in json.loads(capsys.readouterr().out)[0]["neighbours"]}


def test_an_index_of_unreadable_files_is_a_clear_error(tmp_path, capsys, digits):
    net = create_model("mlp", epochs=1, hidden="8", bf16="off").fit(digits.train)
    net.save(tmp_path / "net")
    (tmp_path / "bad" / "x").mkdir(parents=True)
    (tmp_path / "bad" / "x" / "a.png").write_bytes(b"nope")
    assert main(["index", str(tmp_path / "bad"), "--features", str(tmp_path / "net"), "--out",
                 str(tmp_path / "i")]) == 2
    assert "none of the 1 files is a readable image" in capsys.readouterr().err    # the loader's own error


def test_adding_copies_the_callers_images(digits):
    images = digits.train.images[:10].clone()
    index = ImageIndex().add(ImageDataset(images, digits.train.labels[:10], digits.train.class_names),
                             [str(i) for i in range(10)], "train")
    images.zero_()
    assert torch.equal(index.vectors_.reshape(10, 1, 8, 8), digits.train.images[:10])
    with pytest.raises(ImgclsError, match="already in the index"):
        index.add(digits.train.subset([0]), ["3"], "train")
