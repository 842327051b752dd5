"""Explanations, tested for faithfulness rather than for existing.

- pointing game: 8x8 digits pasted at random places on 32x32 noise, a small CNN trained on them;
  its maps must peak inside the digit's box, where a random map hits at the box's share;
- deletion: removing the pixels a map ranks highest must lower the class score faster than
  removing as many random pixels;
- exactness: kNN's neighbours are model.kneighbors, its map sums to minus the distance; linear's
  template is W's row, its map plus the bias is Wx + b;
- every kind of network (imgcls's, timm's, pretrained, transfer), multi-label models, the CLI's
  files, and one-line errors for a bad layer, method, label or model.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from imgcls.errors import ImgclsError
from imgcls.explain import explain, network_layers
from imgcls.explain.faithfulness import deletion_curves, pasted_canvases, pointing_game
from imgcls.models import create_model

SIDE = 32
DIGITS = [str(d) for d in range(10)]
BOX_SHARE = 64 / SIDE ** 2      # a random map's expected pointing-game score: 6%

# Measured on the fixture's model: pointing game gradcam 0.94, gradcam++ 0.99, saliency 0.96,
# integrated-gradients 1.00 (of 150 images), occlusion 0.88 (of 40); the bars leave room for other
# seeds and machines, and a random map scores 0.07.
POINTING_BARS = {"gradcam": 0.85, "gradcam++": 0.85, "saliency": 0.85, "integrated-gradients": 0.85,
                 "occlusion": 0.7}
OCCLUDED = 30        # occlusion runs 196 forward passes per image: fewer images


def digit_canvases(n: int, seed: int):
    digits = load_digits()
    objects = np.round(digits.images * 255 / 16).astype(np.uint8)
    return pasted_canvases(objects, digits.target, n, SIDE, seed=seed)


@pytest.fixture(scope="module")
def canvas_model(fast_path_cache):
    """A two-stage VGG trained for a few seconds on 2,000 digit canvases (about 80% accurate)."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("IMGCLS_PROGRESS", "0")
        env.setenv("IMGCLS_CACHE", str(fast_path_cache))
        x, y, _ = digit_canvases(2000, seed=0)
        model = create_model("vgg", widths="16,32", epochs=6, opt="adam", lr=3e-3, batch_size=64, seed=0,
                             device="cpu")
        return model.fit(x, y, class_names=DIGITS)


@pytest.fixture(scope="module")
def canvas_test():
    return digit_canvases(150, seed=1)


def test_the_measures_themselves():
    maps = np.zeros((2, 4, 4))
    maps[0, 1, 1] = maps[1, 3, 3] = 1
    assert pointing_game(maps, [(0, 0, 2, 2), (0, 0, 2, 2)]) == 0.5

    class Brightness:                      # "probability" = mean brightness of the image's top-left pixel
        def predict_proba(self, images):
            return images[:, 0, :1, :1].reshape(-1, 1).double().numpy() / 255
    images = np.full((1, 1, 4, 4), 255, np.uint8)
    order = np.zeros((1, 4, 4))
    order[0, 0, 0] = 1                     # the map ranks the one pixel that matters first
    curve = deletion_curves(Brightness(), images, [0], order, fill=[0], steps=(0, 0.0625))
    assert curve.tolist() == [[1.0, 0.0]]


def test_gradcam_points_at_the_digit(canvas_model, canvas_test):
    x, _, boxes = canvas_test
    assert canvas_model.score(x, canvas_test[1]) > 0.6
    scores = {}
    for method, bar in POINTING_BARS.items():
        count = OCCLUDED if method == "occlusion" else len(x)
        explanations = explain(canvas_model, x[:count], method=method)
        assert [e.image for e in explanations] == list(range(count))
        maps = np.stack([e.map for e in explanations])
        assert maps.shape == (count, SIDE, SIDE) and maps.dtype == np.float32
        scores[method] = pointing_game(maps, boxes[:count])
    random_maps = np.random.default_rng(0).random((len(x), SIDE, SIDE))
    random_score = pointing_game(random_maps, boxes)
    print(f"pointing game: {scores}, random {random_score:.3f} (box share {BOX_SHARE:.3f})")
    assert all(scores[m] >= bar for m, bar in POINTING_BARS.items()), scores
    assert random_score < 0.15 and scores["gradcam"] > random_score + 0.6


def test_deletion_lowers_the_score_faster_than_random_pixels(canvas_model, canvas_test):
    x = canvas_test[0][:80]
    targets = canvas_model.predict(x)
    random_auc = deletion_curves(canvas_model, x, targets).mean(1)
    # Measured: deletion AUC gradcam 0.104, saliency 0.106, integrated gradients 0.089, random 0.175.
    for method in ("gradcam", "saliency", "integrated-gradients"):
        maps = np.stack([e.map for e in explain(canvas_model, x, method=method)])
        auc = deletion_curves(canvas_model, x, targets, maps).mean(1)
        print(f"deletion AUC {method}: {auc.mean():.3f}, random {random_auc.mean():.3f}")
        assert auc.mean() < 0.7 * random_auc.mean(), method
        assert (auc < random_auc).mean() > 0.8, method


def test_the_default_layer_is_the_last_convolutional_stage(canvas_model, canvas_test):
    layers = network_layers(canvas_model)
    assert layers.stages == ("features.5", "features.12", "features.13") and layers.default == "features.13"
    early = explain(canvas_model, canvas_test[0][:4], layer="features.5")
    assert {e.layer for e in early} == {"features.5"}
    late = explain(canvas_model, canvas_test[0][:4])
    assert {e.layer for e in late} == {"features.13"}
    assert not np.allclose(early[0].map, late[0].map)


def test_target_explains_the_label_asked_for(canvas_model, canvas_test):
    x = canvas_test[0][:3]
    proba = canvas_model.predict_proba(x)
    explanations = explain(canvas_model, x, target="7", method="saliency")
    assert [e.target for e in explanations] == ["7"] * 3
    assert [e.score for e in explanations] == pytest.approx(proba[:, 7].tolist())
    predicted = explain(canvas_model, x, method="saliency")
    assert [e.target_index for e in predicted] == proba.argmax(1).tolist()


@pytest.mark.parametrize("metric", ["l2", "l1"])
def test_knn_explains_itself_by_its_kneighbors(metric):
    digits = load_digits()
    x, y = np.round(digits.images * 255 / 16).astype(np.uint8), digits.target
    model = create_model("knn", k=4, metric=metric).fit(x[:1500], y[:1500], class_names=DIGITS)
    queries = x[1500:1520]
    distances, indices = model.kneighbors(queries)
    explanations = explain(model, queries)
    assert [e.target_index for e in explanations] == model.predict(queries).tolist()
    for e in explanations:
        assert e.method == "neighbours" and len(e.neighbours) == 4
        assert [n.index for n in e.neighbours] == indices[e.image].tolist()
        assert [n.distance for n in e.neighbours] == distances[e.image].tolist()
        assert [n.label for n in e.neighbours] == [DIGITS[y[j]] for j in indices[e.image]]
        # The map splits the distance to the nearest neighbour of the target class.
        nearest = next(j for j in indices[e.image] if y[j] == e.target_index)
        d = np.abs(queries[e.image].astype(float) - x[nearest]).sum() if metric == "l1" else \
            np.linalg.norm(queries[e.image].astype(float) - x[nearest]) ** 2
        assert e.map.shape == (8, 8) and -e.map.sum() == pytest.approx(d, rel=1e-6)
    # A label none of the neighbours carries: the nearest training image of that label overall.
    wrong = explain(model, queries[:1], target=DIGITS[(y[1500] + 1) % 10])[0]
    rows = np.flatnonzero(y[:1500] == (y[1500] + 1) % 10)
    gaps = queries[0].astype(float).ravel() - x[rows].reshape(len(rows), -1)
    best = (np.abs(gaps).sum(1) if metric == "l1" else (gaps ** 2).sum(1)).min()
    assert -wrong.map.sum() == pytest.approx(best, rel=1e-6)


def test_linear_explains_itself_by_its_template():
    digits = load_digits()
    x, y = np.round(digits.images * 255 / 16).astype(np.uint8), digits.target
    model = create_model("linear", epochs=5).fit(x[:1500], y[:1500], class_names=DIGITS)
    queries = x[1500:1510]
    scores = model.decision_function(queries)
    for e in explain(model, queries):
        assert e.method == "template" and e.template.shape == (1, 8, 8)
        assert np.array_equal(e.template.ravel(), model.weight_[e.target_index].numpy())
        assert e.map.sum() + float(model.bias_[e.target_index]) == pytest.approx(scores[e.image, e.target_index],
                                                                                 abs=1e-5)


def test_a_multi_label_model_explains_each_label_above_its_threshold(quadrant_model, quadrants):
    x, _ = quadrants(30, seed=5)
    chosen = quadrant_model.predict(x)
    explanations = explain(quadrant_model, x)
    expected = [(i, j) for i in range(len(x)) for j in np.flatnonzero(chosen[i])]
    explained = [(e.image, e.target_index) for e in explanations if e.above_threshold]
    assert sorted(explained) == sorted(expected)
    # An image with no label above threshold still gets its best label, marked as below.
    lonely = [e for e in explanations if not e.above_threshold]
    assert {e.image for e in lonely} == {i for i in range(len(x)) if not chosen[i].any()}
    # The template x image map of label a (the top-left quadrant) is largest in that quadrant.
    a = [e for e in explanations if e.target == "a" and e.above_threshold]
    assert a and all(e.map[:4, :4].sum() > e.map[4:, :].sum() for e in a)


@pytest.fixture(scope="module")
def converted_models(tmp_path_factory):
    return tmp_path_factory.mktemp("models")


@pytest.fixture
def shared_models(monkeypatch, converted_models):
    """The pretrained weights converted once for this module's tests, not once per test."""
    monkeypatch.setenv("IMGCLS_MODELS", str(converted_models))


def test_every_kind_of_network_explains(shared_models):
    torch.manual_seed(0)
    x = torch.randint(0, 256, (24, 3, 32, 32), dtype=torch.uint8)
    y = torch.arange(24) % 3
    names = ["a", "b", "c"]
    big = torch.nn.functional.interpolate(x.float(), size=64).to(torch.uint8)   # layer4 keeps a 2x2 map
    resnet = create_model("timm:resnet18", epochs=1, batch_size=8, device="cpu").fit(big, y, class_names=names)
    assert network_layers(resnet).stages == ("bn1", "layer1", "layer2", "layer3", "layer4")
    for method in ("gradcam", "gradcam++", "saliency"):       # the other two are the network's forward passes
        e = explain(resnet, big[:2], method=method)
        assert len(e) == 2 and e[0].map.shape == (64, 64) and np.isfinite(e[0].map).all(), method

    mlp = create_model("mlp", hidden="16", epochs=1, device="cpu").fit(x, y, class_names=names)
    with pytest.raises(ImgclsError, match="no convolutional layer.*saliency, integrated-gradients or occlusion"):
        explain(mlp, x[:1])
    assert explain(mlp, x[:1], method="integrated-gradients")[0].map.shape == (32, 32)

    # transfer:* in knn mode scores classes by its neighbours' similarity, which must rank like its vote.
    transfer = create_model("transfer:efficientnet_lite0", mode="knn", k=3, input_size=64, device="cpu",
                             bf16="off")      # fp32: a bf16 backbone (when measured faster) may zero the map
    transfer.fit(x, y, class_names=names)
    assert network_layers(transfer).default == "bn2"
    scores, _ = transfer.attribution_network()
    with torch.no_grad():
        assert (scores(x[:6].float()).argmax(1).numpy() == transfer.predict(x[:6])).all()
    # images whose neighbours agree (2 of 3): on a tied vote the similarity margins are so thin
    # that Grad-CAM's map can be all below zero, so zero after its ReLU
    e = explain(transfer, x[1:3])
    assert e[0].layer == "bn2" and e[0].map.shape == (32, 32) and e[0].map.max() > 0


def test_the_pretrained_model_points_at_the_cat(tmp_path, shared_models):
    """EfficientNet-Lite0 on a grey canvas with a photo of a cat in one corner: Grad-CAM's peak
    falls on the cat."""
    import skimage.data
    from PIL import Image

    from imgcls.data.images import decode_image, input_box
    from imgcls.models import pretrained_model
    model = pretrained_model("efficientnet_lite0")
    canvas = Image.new("RGB", (448, 448), (128, 128, 128))
    canvas.paste(Image.fromarray(skimage.data.chelsea()).resize((180, 135)), (260, 290))
    canvas.save(tmp_path / "corner.png")
    image = decode_image(tmp_path / "corner.png", model.preprocessing_)[None]
    e = explain(model, image)[0]
    assert e.layer == "bn2" and e.target in {"tabby", "tiger cat", "Egyptian cat"}
    # The cat's box in the model's input: the canvas's centre crop, scaled to 224 px.
    left, top, right, _ = input_box(448, 448, model.preprocessing_)
    scale = 224 / (right - left)
    row, col = np.unravel_index(e.map.argmax(), e.map.shape)
    assert (290 - top) * scale <= row < (425 - top) * scale and (260 - left) * scale <= col < (440 - left) * scale


def test_one_line_errors(canvas_model, canvas_test, tmp_path):
    x = canvas_test[0][:1]
    with pytest.raises(ImgclsError) as bad_layer:
        explain(canvas_model, x, layer="features.99")
    message = str(bad_layer.value)
    assert "\n" not in message and "no layer 'features.99'" in message
    assert "features.5" in message and "default: features.13" in message
    with pytest.raises(ImgclsError, match="unknown label 'eleven' for this model; its labels: 0, 1, 2"):
        explain(canvas_model, x, target="eleven")
    with pytest.raises(ImgclsError, match="unknown method 'lime'; valid: gradcam, gradcam\\+\\+"):
        explain(canvas_model, x, method="lime")
    with pytest.raises(ImgclsError, match="method neighbours does not apply to a vgg model"):
        explain(canvas_model, x, method="neighbours")
    with pytest.raises(ImgclsError, match="a layer applies to Grad-CAM"):
        explain(canvas_model, x, method="saliency", layer="features.5")
    knn = create_model("knn").fit(x.repeat(2, 1, 1, 1), [0, 1], class_names=["a", "b"])
    with pytest.raises(ImgclsError, match="method gradcam does not apply to a knn model: it explains itself by "
                                          "its nearest training images"):
        explain(knn, x, method="gradcam")
    with pytest.raises(ImgclsError, match="images of shape \\(1, 8, 8\\)"):
        explain(canvas_model, torch.zeros(1, 1, 8, 8, dtype=torch.uint8))

    from imgcls.inference import OnnxClassifier, export_model
    exported = OnnxClassifier.load(export_model(canvas_model, tmp_path / "m.onnx"))
    with pytest.raises(ImgclsError, match="exported model.*explain the saved model"):
        explain(exported, x)


def test_the_command_writes_maps_overlays_json_and_a_gallery(canvas_model, canvas_test, tmp_path, capsys):
    from PIL import Image

    from imgcls.cli import main
    from imgcls.data.images import decode_image
    run = canvas_model.save(tmp_path / "run")
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        Image.fromarray(canvas_test[0][i, 0].numpy()).save(images / f"canvas{i}.png")
    out = tmp_path / "why"
    assert main(["explain", str(run), str(images), "--method", "gradcam++", "--out", str(out)]) == 0
    records = json.loads((out / "explanations.json").read_text())
    assert [r["image"] for r in records] == [str(images / f"canvas{i}.png") for i in range(3)]
    for i, record in enumerate(records):
        assert record["method"] == "gradcam++" and record["layer"] == "features.13"
        assert (record["overlay"], record["map"]) == (f"canvas{i}.png", f"canvas{i}.npy")
        decoded = decode_image(images / f"canvas{i}.png", canvas_model.preprocessing_)[None]
        expected = explain(canvas_model, decoded, method="gradcam++")[0]
        saved = np.load(out / record["map"])
        assert saved.dtype == np.float32 and saved.shape == (SIDE, SIDE)
        np.testing.assert_allclose(saved, expected.map, atol=1e-5)
        assert (record["target"], record["score"]) == (expected.target, pytest.approx(expected.score))
        with Image.open(out / record["overlay"]) as png:
            assert png.size == (224, 224) and png.mode == "RGB"
    html = (out / "explain.html").read_text()
    assert html.count("data:image/png;base64,") == 3 and "http://" not in html and "https://" not in html
    assert "canvas2.png" in html and "gradcam++" in html

    assert main(["explain", str(run), str(images / "canvas0.png"), "--layer", "nope", "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("imgcls: error: no layer 'nope'") and error.count("\n") == 1


# -- the server -------------------------------------------------------------------------------------
def _png(array) -> bytes:
    import io

    from PIL import Image
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _wide_photo(canvas: np.ndarray, seed: int) -> bytes:
    """The 32x32 canvas enlarged to 48x48 in the middle of a 64x48 photo with noise at both sides:
    the model's centre crop sees the canvas, and the heatmap must leave the sides transparent."""
    from PIL import Image
    photo = np.random.default_rng(seed).integers(0, 100, (48, 64)).astype(np.uint8)
    photo[:, 8:56] = np.asarray(Image.fromarray(canvas).resize((48, 48), Image.Resampling.BILINEAR))
    return _png(photo)


def test_the_server_returns_heatmaps_laid_over_the_photo(canvas_model, canvas_test):
    import base64
    import io

    import httpx
    from PIL import Image
    from test_serving import LiveServer

    from imgcls.data.images import decode_image
    from imgcls.explain.render import heatmap_over_photo
    from imgcls.serving.app import create_app
    x, _, boxes = canvas_test
    photos = [_wide_photo(x[i, 0].numpy(), i) for i in range(6)]
    hits = 0
    with LiveServer(create_app(canvas_model)) as live:
        assert httpx.get(live.url + "/v1/model").json()["explains"] == "network"
        files = [("file", (f"p{i}.png", data, "image/png")) for i, data in enumerate(photos)]
        answer = httpx.post(live.url + "/v1/classify?explain=true", files=files, timeout=120)
        assert answer.status_code == 200, answer.text
        for i, (data, result) in enumerate(zip(photos, answer.json()["results"])):
            (e,) = result["explanations"]
            assert e["label"] == result["predictions"][0]["label"] and e["method"] == "gradcam"
            assert e["layer"] == "features.13"
            with Image.open(io.BytesIO(base64.b64decode(e["heatmap"]))) as png:
                assert png.format == "PNG" and png.mode == "RGBA" and png.size == (64, 48)
                served = np.asarray(png)
            # Exactly the library's explanation of the decoded upload, laid into the photo's frame.
            decoded = decode_image(data, canvas_model.preprocessing_)[None]
            expected = heatmap_over_photo(explain(canvas_model, decoded)[0].map, (64, 48),
                                          canvas_model.preprocessing_)
            np.testing.assert_array_equal(served, np.asarray(expected))
            alpha = served[..., 3]
            assert alpha[:, :8].max() == 0 and alpha[:, 56:].max() == 0 and alpha[:, 8:56].max() > 0
            # The hottest point, back in canvas pixels, falls in the digit's box.
            row, col = np.unravel_index(alpha[:, 8:56].argmax(), (48, 48))
            top, left, h, w = boxes[i]
            hits += top <= row / 1.5 < top + h and left <= col / 1.5 < left + w
        assert hits >= 4

        as_json = httpx.post(live.url + "/v1/classify", json={
            "images": [base64.b64encode(photos[0]).decode()], "explain": True, "explain_method": "saliency"})
        assert as_json.json()["results"][0]["explanations"][0]["method"] == "saliency"
        plain = httpx.post(live.url + "/v1/classify", files=files[:1]).json()["results"][0]
        assert "explanations" not in plain
        for query, needle in (("explain=true&explain_method=lime", "unknown method 'lime'"),
                              ("explain=maybe", "explain must be true or false"),
                              ("explain=true&explain_method=neighbours", "method neighbours does not apply")):
            bad = httpx.post(f"{live.url}/v1/classify?{query}", files=files[:1])
            assert bad.status_code == 400 and needle in bad.json()["error"], (query, bad.text)


def test_an_exported_model_is_served_but_cannot_explain(canvas_model, tmp_path):
    import httpx
    from test_serving import LiveServer

    from imgcls.inference import OnnxClassifier, export_model
    from imgcls.serving.app import create_app
    exported = OnnxClassifier.load(export_model(canvas_model, tmp_path / "m.onnx"))
    with LiveServer(create_app(exported)) as live:
        assert httpx.get(live.url + "/v1/model").json()["explains"] is None
        files = [("file", ("z.png", _png(np.zeros((32, 32))), "image/png"))]
        assert httpx.post(live.url + "/v1/classify", files=files).status_code == 200
        bad = httpx.post(live.url + "/v1/classify?explain=true", files=files)
        assert bad.status_code == 400 and "cannot explain" in bad.json()["error"]


# -- the evaluation report --------------------------------------------------------------------------
def test_the_report_lays_gradcam_over_its_most_confident_mistakes(canvas_model, canvas_test, tmp_path):
    from PIL import Image

    from imgcls.evaluation import RunInfo, evaluate, write_report
    from imgcls.evaluation.report import MISTAKES, confident_mistakes
    from imgcls.fit_and_evaluate import mistake_heatmaps
    x, y, _ = canvas_test
    ev = evaluate(y.numpy(), canvas_model.predict_proba(x), DIGITS)
    heatmaps = mistake_heatmaps(canvas_model, ev, x)
    chosen = confident_mistakes(ev)
    assert list(heatmaps) == chosen.tolist() and len(chosen) == min(24, int((ev.y_pred != ev.y_true).sum()))
    # Each is Grad-CAM's map of the class the model wrongly predicted.
    for i in chosen[:3]:
        e = explain(canvas_model, x[[int(i)]])[0]
        assert e.target_index == ev.y_pred[i] and e.target_index != y[i]
        np.testing.assert_allclose(heatmaps[int(i)], e.map, atol=1e-5)

    def colourful(path) -> float:
        """Share of clearly coloured pixels: the photos are grey, the titles black."""
        with Image.open(path) as png:
            rgb = np.asarray(png.convert("RGB")).astype(int)
        return float((rgb.max(2) - rgb.min(2) > 40).mean())
    info = RunInfo(title="vgg on canvases", model="vgg", params={}, dataset="canvases")
    plain = write_report(ev, info, tmp_path / "plain", images=x)
    explained = write_report(ev, info, tmp_path / "explained", images=x, heatmaps=heatmaps)
    assert colourful(plain["mistakes"]) == 0 and colourful(explained["mistakes"]) > 0.1
    assert MISTAKES in plain["html"].read_text()
    assert "heatmap of the evidence it saw for the predicted class (Grad-CAM)" in explained["html"].read_text()

    knn = create_model("knn").fit(x, y, class_names=DIGITS)
    assert mistake_heatmaps(knn, ev, x) is None          # kNN explains itself otherwise: no heatmaps


def test_a_multi_label_model_writes_one_map_per_label(quadrant_model, tmp_path):
    from PIL import Image

    from imgcls.cli import main
    lit = np.full((8, 8), 20, np.uint8)
    lit[:4, :4] = lit[:4, 4:] = 200                     # quadrants a and c
    Image.fromarray(lit).save(tmp_path / "ac.png")
    run = quadrant_model.save(tmp_path / "run")
    assert main(["explain", str(run), str(tmp_path / "ac.png"), "--out", str(tmp_path / "why")]) == 0
    records = json.loads((tmp_path / "why" / "explanations.json").read_text())
    assert sorted(r["target"] for r in records) == ["a", "c"]
    assert sorted(r["map"] for r in records) == ["ac.a.npy", "ac.c.npy"]
    for r in records:
        assert r["method"] == "template" and (tmp_path / "why" / r["map"]).is_file()
