"""`imgcls show ...`: each visual's numbers against a trusted reference (torch's conv2d, scikit-learn's
kNN, the model's own weights and layers, the trainer's own batch, numpy's norms)."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image
from sklearn.neighbors import KNeighborsClassifier

from imgcls.cli import main
from imgcls.data.load import DataOptions, load_dataset
from imgcls.errors import ImgclsError
from imgcls.evaluation.weight_images import FILTERS_TITLE, TEMPLATES_TITLE
from imgcls.models import create_model
from imgcls.models.pretrained import pretrained_model
from imgcls.visuals import (apply_kernel, parse_kernel, show_activations, show_batch, show_boundaries, show_distances,
                            show_filters, show_templates, show_top_images, top_images)
from imgcls.visuals.kernel import KERNELS

QUICK = {"epochs": 1, "batch_size": 64, "bf16": "off", "channels_last": "off", "device": "cpu"}


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", DataOptions())


@pytest.fixture(scope="module")
def cnn(digits):
    """The course CNN after one epoch on the 8x8 digits (what the checks need is a fitted network)."""
    return create_model("cnn", **QUICK).fit(digits.train)


@pytest.fixture(scope="module")
def linear(digits):
    return create_model("linear", epochs=2).fit(digits.train)


@pytest.fixture(scope="module")
def saved(cnn, linear, tmp_path_factory):
    folder = tmp_path_factory.mktemp("saved")
    return {"cnn": cnn.save(folder / "cnn"), "linear": linear.save(folder / "linear")}


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    """EfficientNet-Lite0 converted once for the module (about 10 s), in a folder of its own."""
    folder = tmp_path_factory.mktemp("pretrained")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("IMGCLS_MODELS", str(folder))
        pretrained_model("efficientnet_lite0")
    return folder


@pytest.fixture
def lite0(models_dir, monkeypatch):
    monkeypatch.setenv("IMGCLS_MODELS", str(models_dir))
    return pretrained_model("efficientnet_lite0")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    import skimage.data
    folder = tmp_path_factory.mktemp("photos")
    Image.fromarray(skimage.data.camera()[::4, ::4]).save(folder / "camera.png")       # 128 x 128, grayscale
    Image.fromarray(skimage.data.chelsea()).save(folder / "cat.png")                   # 300 x 451, colour
    return folder


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("imgcls: error: ") and err.count("\n") == 1, err
    return err


# -- show kernel --------------------------------------------------------------------------------
def torch_correlation(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """torch's conv2d (a correlation), zero padding, per channel, in float64: the reference."""
    x = torch.from_numpy(image.astype(np.float64))[:, None]
    w = torch.from_numpy(kernel)[None, None]
    return F.conv2d(x, w, padding=len(kernel) // 2)[:, 0].numpy()


@pytest.mark.parametrize("spec", [*KERNELS, "blur:5", "blur", "2 -1 0; 0 1 3; -4 0 1"])
def test_kernel_output_equals_torch_conv2d(spec, photos):
    from imgcls.visuals.common import read_image
    _, kernel = parse_kernel(spec)
    for name in ("camera.png", "cat.png"):
        image = read_image(photos / name, max_side=96)
        ours = apply_kernel(image, kernel)
        reference = torch_correlation(image, kernel)
        if np.all(kernel == np.round(kernel)):
            np.testing.assert_array_equal(ours, reference)   # integer weights: exact sums either way
        else:
            np.testing.assert_allclose(ours, reference, rtol=1e-12, atol=1e-10)
        # A convolution is the correlation with the kernel flipped in both axes.
        np.testing.assert_allclose(apply_kernel(image, kernel, "convolution"),
                                   torch_correlation(image, kernel[::-1, ::-1].copy()), rtol=1e-12, atol=1e-10)


def test_blur_is_the_courses_21x21_box_and_sobel_tells_the_operations_apart(photos):
    name, blur = parse_kernel("blur")
    assert name == "blur 21x21" and blur.shape == (21, 21) and np.allclose(blur, 1 / 441)
    _, sobel = parse_kernel("sobel-x")
    from imgcls.visuals.common import read_image
    image = read_image(photos / "camera.png")
    np.testing.assert_array_equal(apply_kernel(image, sobel, "convolution"), -apply_kernel(image, sobel))
    _, thirds = parse_kernel("1/9 1/9 1/9; 1/9, 1/9, 1/9; 1/9 1/9 1/9")
    np.testing.assert_array_equal(thirds, np.full((3, 3), 1 / 9))


@pytest.mark.parametrize("operation", ["correlation", "convolution"])
def test_show_kernel_writes_what_it_computed_and_says_which(operation, photos, tmp_path, capsys):
    assert main(["show", "kernel", str(photos / "camera.png"), "--kernel", "sobel-y", "--operation", operation,
                 "--out", str(tmp_path)]) == 0
    numbers = json.loads((tmp_path / "kernel.json").read_text())
    arrays = np.load(tmp_path / "kernel.npz")
    kernel = np.array(KERNELS["sobel-y"], dtype=np.float64)
    flipped = operation == "convolution"
    np.testing.assert_array_equal(arrays["output"],
                                  torch_correlation(arrays["input"], kernel[::-1, ::-1].copy() if flipped else kernel))
    assert numbers["operation"] == operation and numbers["kernel_flipped"] is flipped
    assert numbers["meaning"].startswith(operation) and numbers["matrix"] == kernel.tolist()
    assert numbers["output_max"] == arrays["output"].max() and (tmp_path / "kernel.png").is_file()


@pytest.mark.parametrize("spec, reason", [
    ("sobel-z", "not a kernel's name"), ("1 2 3", "1 row(s) of 3 number(s) is not square"),
    ("1 2; 3 4", "side 2 is not odd"), ("1 0 1; 0 x 0; 1 0 1", "'x' (row 2) is not a number"),
    ("1 2 3; 4 5; 6 7 8", "rows hold different counts"), ("", "it is empty"), ("blur:4", "side 4 is not odd"),
    ("1 nan 1; 0 0 0; 1 1 1", "'nan' (row 1) is not a number")])
def test_a_kernel_that_is_not_a_square_matrix_of_numbers_is_a_one_line_error(spec, reason, photos, tmp_path, capsys):
    assert main(["show", "kernel", str(photos / "camera.png"), "--kernel", spec, "--out", str(tmp_path)]) == 2
    assert reason in one_line_error(capsys)
    assert not (tmp_path / "kernel.png").exists()


# -- show filters / templates, and the report ---------------------------------------------------
def test_templates_equal_the_rows_of_w(linear, tmp_path):
    numbers = show_templates(linear, tmp_path)
    expected = linear.weight_.numpy().reshape(10, 1, 8, 8)
    np.testing.assert_array_equal(np.load(tmp_path / "templates.npy"), expected)
    np.testing.assert_array_equal(linear.templates(), expected)
    assert [row["label"] for row in numbers["templates"]] == linear.class_names_
    assert numbers["templates"][3]["l2_norm"] == pytest.approx(float(np.linalg.norm(linear.weight_[3].double())))


def test_filters_are_the_first_layers_weights(cnn, linear, lite0, digits, tmp_path):
    show_filters(cnn, tmp_path / "cnn")
    np.testing.assert_array_equal(np.load(tmp_path / "cnn" / "filters.npy"), cnn.net_.body.features[0].weight.detach())
    show_filters(lite0, tmp_path / "lite0")       # timm's EfficientNet: its stem, a "same"-padded conv
    np.testing.assert_array_equal(np.load(tmp_path / "lite0" / "filters.npy"), lite0.net_.body.conv_stem.weight.detach())
    timm_net = create_model("timm:mobilenetv3_small_050", **QUICK).fit(digits.train.subset(range(128)))
    np.testing.assert_array_equal(timm_net.first_layer_filters(), timm_net.net_.body.conv_stem.weight.detach())
    mlp = create_model("mlp", hidden="16", **QUICK).fit(digits.train.subset(range(128)))
    np.testing.assert_array_equal(mlp.first_layer_filters(),          # an MLP's first layer reads the pixels
                                  mlp.net_.body.features[1].weight.detach().reshape(16, 1, 8, 8))
    with pytest.raises(ImgclsError, match="no first-layer filters.*show templates"):
        show_filters(linear, tmp_path / "x")
    with pytest.raises(ImgclsError, match="not a linear model"):
        show_templates(cnn, tmp_path / "x")


def test_the_report_shows_a_networks_filters_and_a_linear_models_templates(tmp_path):
    for model, title, figure in (("linear", TEMPLATES_TITLE, "templates.png"), ("lenet5", FILTERS_TITLE, "filters.png")):
        out = tmp_path / model
        assert main(["train", "digits", "--model", model, "--epochs", "1", "--out", str(out)]) == 0
        html = (out / "report.html").read_text()
        embedded = base64.b64encode((out / figure).read_bytes()).decode()
        assert f'alt="{title}" src="data:image/png;base64,{embedded}"' in html
        other = FILTERS_TITLE if title == TEMPLATES_TITLE else TEMPLATES_TITLE
        assert other not in html


# -- show activations / top-images --------------------------------------------------------------
def test_activations_are_the_outputs_of_each_stage(cnn, digits, tmp_path):
    path = tmp_path / "digit.png"
    Image.fromarray(digits.test.images[0, 0].numpy()).save(path)
    numbers = show_activations(cnn, path, tmp_path, per_stage=4)
    maps = np.load(tmp_path / "activations.npz")
    assert [s["stage"] for s in numbers["stages"]] == ["body.features.5", "body.features.13", "body.features.14"]
    net = cnn.net_.eval()
    with torch.no_grad():
        x = net.normalize(digits.test.images[:1])
        for stage in numbers["stages"]:
            depth = int(stage["stage"].rsplit(".", 1)[1]) + 1
            np.testing.assert_allclose(maps[stage["stage"]], net.body.features[:depth](x)[0].numpy(), rtol=1e-6)
        means = maps["body.features.13"].mean(axis=(1, 2))
        assert numbers["stages"][1]["channels_shown"] == np.argsort(-means, kind="stable")[:4].tolist()


def test_efficientnet_stages_are_its_blocks(lite0, photos, tmp_path):
    numbers = show_activations(lite0, photos / "cat.png", tmp_path, per_stage=2)
    assert [s["stage"] for s in numbers["stages"]] == [f"body.blocks.{i}" for i in (0, 1, 2, 4, 6)]
    assert [s["shape"] for s in numbers["stages"]][-1] == [320, 7, 7]
    body = lite0.net_.body
    from imgcls.visuals.common import read_image
    x = torch.from_numpy(read_image(photos / "cat.png", prep=lite0.preprocessing_)).float()[None]
    with torch.no_grad():
        expected = body.blocks(body.bn1(body.conv_stem((x - 127) / 128)))   # the Lite models' (x - 127) / 128
    np.testing.assert_allclose(np.load(tmp_path / "activations.npz")["body.blocks.6"], expected[0].numpy(),
                               rtol=1e-4, atol=1e-4)


def test_top_images_equal_a_sort_of_every_response_and_stream_in_batches(cnn, digits, monkeypatch):
    data = digits.test
    with torch.no_grad():
        everything = cnn.feature_maps(data.images, ["body.features.13"])["body.features.13"]
    response = everything.flatten(2).amax(2).numpy()                       # (images, units)
    seen = []
    real = type(cnn).feature_maps
    monkeypatch.setattr(type(cnn), "feature_maps", lambda self, images, layers: seen.append(len(images)) or
                        real(self, images, layers))
    found = top_images(cnn, data, "body.features.13", k=5, batch_size=37)
    assert max(seen) == 37 and sum(seen) == len(data) and len(seen) == -(-len(data) // 37)
    np.testing.assert_allclose(found.means, response.mean(0), rtol=1e-6)
    expected = np.argsort(-response, axis=0, kind="stable")[:5].T
    np.testing.assert_array_equal(found.top_positions, expected)
    np.testing.assert_array_equal(found.top_responses, np.take_along_axis(response.T, expected, 1))
    np.testing.assert_array_equal(found.strongest(3), np.argsort(-response.mean(0), kind="stable")[:3])


def test_show_top_images_from_the_command_line(saved, digits, tmp_path, capsys):
    assert main(["show", "top-images", str(saved["cnn"]), "digits", "--split", "test", "--units", "3", "--top", "4",
                 "--out", str(tmp_path)]) == 0
    numbers = json.loads((tmp_path / "top_images.json").read_text())
    assert numbers["layer"] == "body.features.14" and numbers["images_seen"] == len(digits.test)
    assert len(numbers["units"]) == 3 and all(len(u["images"]) == 4 for u in numbers["units"])
    responses = [im["response"] for im in numbers["units"][0]["images"]]
    assert responses == sorted(responses, reverse=True)


def test_an_unknown_layer_lists_the_stages(saved, tmp_path, capsys):
    assert main(["show", "top-images", str(saved["cnn"]), "digits", "--layer", "body.features.99",
                 "--out", str(tmp_path)]) == 2
    assert "valid: body.features.5, body.features.13, body.features.14" in one_line_error(capsys)
    assert main(["show", "activations", str(saved["linear"]), "x.png", "--out", str(tmp_path)]) == 2
    one_line_error(capsys)


# -- show boundaries ----------------------------------------------------------------------------
def sklearn_knn(points: np.ndarray, labels: np.ndarray, queries: np.ndarray, k: int):
    """scikit-learn's brute-force neighbours, voted: (predictions, whether the vote was clear (one
    class ahead), whether the k-th neighbour is tied in distance with the next). Tied votes go to the
    tied class whose member is nearest, `knn`'s documented rule (scikit-learn takes the lowest label)."""
    sk = KNeighborsClassifier(n_neighbors=k, algorithm="brute").fit(points, labels)
    distances, neighbours = sk.kneighbors(queries, n_neighbors=k + 1)
    votes = np.stack([np.bincount(row, minlength=labels.max() + 1) for row in labels[neighbours[:, :k]]])
    clear = (votes == votes.max(1, keepdims=True)).sum(1) == 1
    predicted = sk.predict(queries)
    for i in np.flatnonzero(~clear):
        best = np.flatnonzero(votes[i] == votes[i].max())
        predicted[i] = next(label for label in labels[neighbours[i, :k]] if label in best)
    return predicted, clear, distances[:, k - 1] == distances[:, k]


def test_boundaries_are_scikit_learns_knn_on_the_projected_points(digits, tmp_path):
    from sklearn.decomposition import PCA
    numbers = show_boundaries(digits, tmp_path, [1, 5, 15], grid=50)
    arrays = np.load(tmp_path / "boundaries.npz")
    points, labels = arrays["points"], arrays["labels"]
    pixels = digits.train.images.reshape(len(points), -1).double().numpy() / 255
    np.testing.assert_allclose(np.abs(points), np.abs(PCA(2).fit_transform(pixels)), atol=1e-9)   # up to sign
    grid = np.stack(np.meshgrid(arrays["x"], arrays["y"]), -1).reshape(-1, 2)
    for panel in numbers["panels"]:
        k = panel["k"]
        expected, clear, distance_tie = sklearn_knn(points, labels, grid, k)
        assert clear.mean() > 0.8 and distance_tie.mean() < 0.01
        regions = arrays[f"regions_k{k}"].ravel()
        np.testing.assert_array_equal(regions[clear & ~distance_tie],
                                      KNeighborsClassifier(k, algorithm="brute").fit(points, labels)
                                      .predict(grid)[clear & ~distance_tie])
        np.testing.assert_array_equal(regions[~distance_tie], expected[~distance_tie])
        expected, _, distance_tie = sklearn_knn(points, labels, arrays["test_points"], k)
        assert panel["test_accuracy_2d"] == pytest.approx((expected == arrays["test_labels"]).mean(),
                                                          abs=distance_tie.mean() + 1e-12)


def test_boundaries_flags(tmp_path, capsys):
    assert main(["show", "boundaries", "digits", "--k", "1,five", "--out", str(tmp_path)]) == 2
    assert "--k takes positive whole numbers" in one_line_error(capsys)
    assert main(["show", "boundaries", "digits", "--k", "3", "--grid", "20", "--metric", "l1",
                 "--out", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "boundaries.json").read_text())["panels"][0]["k"] == 3


# -- show batch ---------------------------------------------------------------------------------
def test_show_batch_shows_exactly_what_the_trainer_trains_on(tmp_path, monkeypatch, capsys):
    """The first batch a real `imgcls train` run trains on, caught inside the trainer, against the
    batch `imgcls show batch` draws from the same recipe."""
    from imgcls.training.trainer import Trainer
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"model": "cnn", "augment": "crop=2,flip,rotate=10,erase=0.5,mixup=0.4",
                                      "batch_size": 24, "seed": 3, "bf16": "off", "epochs": 1}))
    caught = {}

    def first_step(self, x, y, *args, **kwargs):
        caught.update(x=x.detach().clone(), y=y.detach().clone())
        raise KeyboardInterrupt          # stop the run here: the batch is all this test needs
    monkeypatch.setattr(Trainer, "step", first_step)
    assert main(["train", "digits", "--config", str(recipe), "--out", str(tmp_path / "run")]) == 130
    assert main(["show", "batch", "digits", "--config", str(recipe), "--max-images", "12",
                 "--out", str(tmp_path / "show")]) == 0
    arrays = np.load(tmp_path / "show" / "batch.npz")
    np.testing.assert_array_equal(arrays["images"], caught["x"].numpy())
    np.testing.assert_array_equal(arrays["targets"], caught["y"].numpy())
    numbers = json.loads((tmp_path / "show" / "batch.json").read_text())
    assert numbers["images"] == 24 and numbers["shown"] == 12 and numbers["augment"].startswith("crop=2,flip")
    assert re.fullmatch(r"0\.\d\d \d( \+ 0\.\d\d \d)?|\d", numbers["items"][0]["target"])
    # Flags override the recipe, and another seed gives another batch.
    assert main(["show", "batch", "digits", "--config", str(recipe), "--seed", "4", "--out", str(tmp_path / "s4")]) == 0
    assert not np.array_equal(np.load(tmp_path / "s4" / "batch.npz")["positions"], arrays["positions"])
    # A recipe that states its budget (recipes/fashion-5min.yaml does): the batch is the same.
    budgeted = tmp_path / "budgeted.yaml"
    budgeted.write_text(recipe.read_text() + "time_budget: 5m\n")
    assert main(["show", "batch", "digits", "--config", str(budgeted), "--max-images", "12",
                 "--out", str(tmp_path / "budgeted")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "budgeted" / "batch.npz")["images"], arrays["images"])


def test_show_batch_of_a_model_without_batches_is_a_one_line_error(tmp_path, capsys):
    assert main(["show", "batch", "digits", "--model", "knn", "--out", str(tmp_path)]) == 2
    assert "not trained on augmented batches" in one_line_error(capsys)
    assert main(["show", "batch", "digits", "--batch", "999", "--out", str(tmp_path)]) == 2
    assert "there is no batch 999" in one_line_error(capsys)


def test_transfer_models_show_batches_only_when_they_fine_tune(digits):
    with pytest.raises(ImgclsError, match="only mode finetune trains on augmented batches"):
        create_model("transfer:efficientnet_lite0").preview_training_batch(digits.train)
    finetune = create_model("transfer:efficientnet_lite0", mode="finetune", augment="flip", batch_size=8)
    positions, x, y = finetune.preview_training_batch(digits.train)
    plain = create_model("cnn", augment="flip", batch_size=8, opt="adamw", lr=1e-3, epochs=3)
    expected = plain.preview_training_batch(digits.train)    # the same settings where the batch is concerned
    assert torch.equal(positions, expected[0]) and torch.equal(x, expected[1]) and torch.equal(y, expected[2])


def test_show_batch_on_arrays_matches_preview_of_a_fresh_trainer(digits, tmp_path):
    model = create_model("cnn", augment="crop=1,flip", batch_size=10, seed=1)
    numbers = show_batch(model, digits, tmp_path, index=2)
    positions, x, y = model.preview_training_batch(digits.train, 0, 2)
    np.testing.assert_array_equal(np.load(tmp_path / "batch.npz")["images"], x.numpy())
    assert [item["position"] for item in numbers["items"]] == positions.tolist()
    assert [item["target"] for item in numbers["items"]] == [digits.class_names[int(c)] for c in y]


# -- show distances -----------------------------------------------------------------------------
def test_distances_equal_in_pixels_and_unequal_in_the_embedding(lite0, photos, tmp_path, capsys):
    assert main(["show", "distances", str(photos / "cat.png"), "--out", str(tmp_path)]) == 0
    numbers = json.loads((tmp_path / "distances.json").read_text())
    arrays = np.load(tmp_path / "distances.npz")
    original = arrays["original"]
    l2 = {}
    for name in ("boxed", "shifted", "tinted"):
        difference = arrays[name] - original
        l2[name] = np.linalg.norm(difference.ravel())
        assert numbers["copies"][name]["l2"] == pytest.approx(l2[name], rel=1e-12)
        assert numbers["copies"][name]["l1"] == pytest.approx(np.abs(difference).sum(), rel=1e-12)
        assert arrays[name].min() >= 0 and arrays[name].max() <= 255
    assert max(l2.values()) - min(l2.values()) < 1e-9 * max(l2.values())
    l1 = [numbers["copies"][name]["l1"] for name in l2]
    assert max(l1) > 1.5 * min(l1)                 # equal L2 is not equal L1
    # The embeddings: EfficientNet-Lite0's pre-logit features, computed here through timm directly.
    body = lite0.net_.body
    x = torch.from_numpy(np.stack([arrays[n] for n in ("original", "boxed", "shifted", "tinted")])).float()
    with torch.no_grad():
        reference = body.forward_head(body.forward_features((x - 127) / 128), pre_logits=True).double().numpy()
    np.testing.assert_allclose(arrays["embeddings"], reference, rtol=1e-4, atol=1e-4)
    embedded = {n: np.linalg.norm(reference[i + 1] - reference[0]) for i, n in enumerate(("boxed", "shifted", "tinted"))}
    for name, value in embedded.items():
        assert numbers["copies"][name]["embedding_l2"] == pytest.approx(value, rel=1e-3)
    assert numbers["embedding_l2_spread"] > 0.05 and numbers["pixel_l2_spread"] < 1e-9


def test_distances_need_a_network(saved, photos, tmp_path, capsys):
    assert main(["show", "distances", str(photos / "cat.png"), "--model", str(saved["linear"]),
                 "--out", str(tmp_path)]) == 2
    assert "not a network" in one_line_error(capsys)
    assert main(["show", "distances", str(tmp_path / "missing.png"), "--model", str(saved["cnn"]),
                 "--out", str(tmp_path)]) == 2
    assert "no such image file" in one_line_error(capsys)
