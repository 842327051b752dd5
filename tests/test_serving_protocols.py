"""Other projects' clients against the server over real HTTP: huggingface_hub's InferenceClient
(Hugging Face's format) and tritonclient.http (KServe's Open Inference Protocol v2)."""

import base64
import gzip
import io
import json
import struct
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from huggingface_hub import InferenceClient
from huggingface_hub.errors import HfHubHTTPError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from test_serving import LiveServer, digit_png, png_bytes
from tritonclient.utils import InferenceServerException

from imgcls.data import load_dataset
from imgcls.data.images import decode_image
from imgcls.models import create_model
from imgcls.serving.app import create_app

LIMIT = 200_000


@pytest.fixture(scope="module")
def model():
    """kNN over 7 neighbours: probabilities in sevenths, so scores are more than 0 and 1."""
    return create_model("knn", k=7).fit(load_dataset("digits").train)


@pytest.fixture(scope="module")
def server(model):
    with LiveServer(create_app(model, max_upload_bytes=LIMIT, max_pixels=4_000_000)) as live:
        yield live


@pytest.fixture(scope="module")
def client(server):
    return triton.InferenceServerClient(server.url.removeprefix("http://"), connection_timeout=60,
                                        network_timeout=60)


def blend_png(i: int, j: int) -> bytes:
    """Two digits laid over each other: neighbours of both kinds, so scores between 0 and 1."""
    a, b = (np.asarray(Image.open(io.BytesIO(digit_png(n))), dtype=np.float64) for n in (i, j))
    return png_bytes(np.round((a + b) / 2))


def digit_jpeg(i: int, j: int) -> bytes:
    buffer = io.BytesIO()
    Image.open(io.BytesIO(blend_png(i, j))).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def pairs(found) -> tuple[list[str], list[float]]:
    """Labels and scores of HF's answer (objects or dicts), to compare with a reference."""
    found = [(e["label"], e["score"]) if isinstance(e, dict) else (e.label, e.score) for e in found]
    return [label for label, _ in found], [score for _, score in found]


def ranked(scores: dict[str, float], k: int) -> tuple[list[str], list[float]]:
    """The k best of a {label: score} reference, in the order the server ranks them (stable on ties)."""
    best = sorted(scores, key=lambda label: -scores[label])[:k]
    return best, [scores[label] for label in best]


def v1_scores(server, data: bytes) -> dict[str, float]:
    """Every label's score as /v1/classify (multipart) gives it for these bytes: the reference."""
    reply = httpx.post(server.url + "/v1/classify", files={"file": ("x", data)}, params={"top_k": 10}, timeout=60)
    assert reply.status_code == 200, reply.text
    return {p["label"]: p["score"] for p in reply.json()["results"][0]["predictions"]}


def pixels(model, data: bytes) -> np.ndarray:
    return decode_image(data, model.preprocessing_)


def bomb() -> bytes:
    buffer = io.BytesIO()
    Image.new("1", (5000, 5000)).save(buffer, format="PNG")    # 25 Mpx in a few kB
    return buffer.getvalue()


# -- Hugging Face ------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["", "/v1/classify"])
def test_huggingface_client_gets_the_scores_v1_gives(server, path):
    hf = InferenceClient(model=server.url + path, timeout=60)
    for i, j in ((1, 7), (3, 8)):
        data = blend_png(i, j)
        expected = v1_scores(server, data)
        assert 0 < max(expected.values()) < 1
        labels, scores = pairs(hf.image_classification(data))                  # raw body, no Content-Type
        assert (labels, scores) == (ranked(expected, 5)[0], pytest.approx(ranked(expected, 5)[1]))
        assert scores == sorted(scores, reverse=True)
        labels, scores = pairs(hf.image_classification(data, top_k=2))         # JSON {"inputs", "parameters"}
        assert (labels, scores) == (ranked(expected, 2)[0], pytest.approx(ranked(expected, 2)[1]))
        labels, scores = pairs(hf.image_classification(data, function_to_apply="softmax", top_k=10))
        assert (labels, scores) == (ranked(expected, 10)[0], pytest.approx(ranked(expected, 10)[1]))


def test_huggingface_client_sees_the_servers_error(server):
    hf = InferenceClient(model=server.url, timeout=60)
    with pytest.raises(HfHubHTTPError) as caught:
        hf.image_classification(b"hello, I am text")
    assert caught.value.response.status_code == 415 and "not an image file" in str(caught.value)


@pytest.mark.parametrize("content_type", ["image/png", "image/jpeg", "application/octet-stream"])
def test_raw_image_bodies_of_each_content_type(server, content_type):
    data = blend_png(4, 9)
    reply = httpx.post(server.url + "/v1/classify", content=data, headers={"content-type": content_type},
                       params={"top_k": 3})
    assert reply.status_code == 200, reply.text
    labels, scores = ranked(v1_scores(server, data), 3)
    assert pairs(reply.json()) == (labels, pytest.approx(scores))


def test_huggingface_format_for_a_multi_label_model(quadrant_model, quadrants):
    x, _ = quadrants(4, seed=3)
    with LiveServer(create_app(quadrant_model)) as live:
        for image in x:
            data = png_bytes(image)
            proba = quadrant_model.predict_proba(decode_image(data, quadrant_model.preprocessing_)[None])[0]
            found = InferenceClient(model=live.url, timeout=60).image_classification(data)
            order = np.argsort(-proba, kind="stable")
            assert [e.label for e in found] == [quadrant_model.class_names_[j] for j in order]
            assert [e.score for e in found] == pytest.approx(proba[order].tolist(), abs=1e-6)
            reply = httpx.post(live.url + "/", json={"inputs": base64.b64encode(data).decode(),
                                                     "parameters": {"function_to_apply": "softmax"}})
            assert reply.status_code == 400 and "sigmoid" in reply.json()["error"]


@pytest.mark.parametrize("path", ["/", "/v1/classify"])
@pytest.mark.parametrize("kwargs,status,needle", [
    ({"content": b"hello, I am text", "headers": {"content-type": "image/png"}}, 415, "not an image file"),
    ({"content": b""}, 400, "empty"),
    ({"content": digit_png(1)[:60], "headers": {"content-type": "image/png"}}, 400, "truncated or corrupt"),
    ({"content": bomb(), "headers": {"content-type": "image/png"}}, 413, "over the limit"),
    ({"content": b"\x00" * (LIMIT + 1), "headers": {"content-type": "application/octet-stream"}}, 413, "limit"),
    ({"content": b"\x00" * (LIMIT + 100_000)}, 413, "limit"),                  # refused by the middleware
    ({"json": {"inputs": "not base64!"}}, 400, "not valid base64"),
    ({"json": {"inputs": ["a", "b"]}}, 400, "one image"),
    ({"json": {"inputs": base64.b64encode(digit_png(1)).decode(), "parameters": {"top_k": 0}}}, 400, "top_k"),
    ({"json": {"inputs": base64.b64encode(digit_png(1)).decode(), "parameters": {"k": 3}}}, 400, "unknown parameter"),
    ({"json": {"inputs": base64.b64encode(digit_png(1)).decode(), "parameters": {"function_to_apply": "none"}}},
     400, "softmax"),
])
def test_bad_huggingface_requests_get_4xx_json(server, path, kwargs, status, needle):
    reply = httpx.post(server.url + path, timeout=60, **kwargs)
    assert reply.status_code == status and needle in reply.json()["error"], reply.text


def test_root_takes_only_huggingface_format_and_v1_keeps_its_own(server):
    reply = httpx.post(server.url + "/", files={"file": ("a.png", digit_png(2))})
    assert reply.status_code == 415 and "/v1/classify" in reply.json()["error"]
    encoded = base64.b64encode(digit_png(2)).decode()
    reply = httpx.post(server.url + "/v1/classify", json={"images": [encoded], "top_k": 2})
    assert set(reply.json()) == {"model", "time_ms", "results"}
    spec = httpx.get(server.url + "/openapi.json").json()["paths"]
    content = spec["/"]["post"]["requestBody"]["content"]
    assert {"image/*", "application/octet-stream", "application/json"} <= set(content)
    assert "/v2/models/{name}/infer" in spec


# -- KServe v2 with tritonclient ---------------------------------------------------------------

def test_health_and_metadata(server, client):
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("knn")
    about = client.get_server_metadata()
    assert about["name"] == "imgcls" and "binary_tensor_data" in about["extensions"]
    meta = client.get_model_metadata("knn")
    assert meta["name"] == "knn"
    assert {i["name"]: (i["datatype"], i["shape"]) for i in meta["inputs"]} == {
        "files": ("BYTES", [-1]), "pixels": ("UINT8", [-1, 1, 8, 8]), "images": ("FP32", [-1, 1, 8, 8])}
    assert {o["name"]: (o["datatype"], o["shape"]) for o in meta["outputs"]} == {
        "scores": ("FP32", [-1, 10]), "labels": ("BYTES", [-1, 5])}
    assert httpx.get(server.url + "/v2/health/live").json() == {"live": True}
    assert httpx.get(server.url + "/v2/models/knn/ready").json() == {"name": "knn", "ready": True}


def _input(model, kind: str, images: list[bytes], binary: bool) -> triton.InferInput:
    if kind == "files":
        array = np.array([base64.b64encode(d) if not binary else d for d in images], dtype=object)
        tensor = triton.InferInput("files", [len(images)], "BYTES")
    else:
        array = np.stack([pixels(model, d) for d in images]).astype(np.uint8 if kind == "pixels" else np.float32)
        tensor = triton.InferInput(kind, list(array.shape), "UINT8" if kind == "pixels" else "FP32")
    return tensor.set_data_from_numpy(array, binary_data=binary)


@pytest.mark.parametrize("kind", ["files", "pixels", "images"])
@pytest.mark.parametrize("binary_in,binary_out", [(True, True), (False, False), (True, False)])
def test_infer_gives_the_scores_v1_gives(server, client, model, kind, binary_in, binary_out):
    images = [digit_jpeg(i, j) for i, j in ((0, 6), (3, 8), (1, 7))]   # JPEG: both paths see its decoded pixels
    outputs = [triton.InferRequestedOutput(name, binary_data=binary_out) for name in ("scores", "labels")]
    result = client.infer("knn", [_input(model, kind, images, binary_in)], outputs=outputs)
    scores, labels = result.as_numpy("scores"), result.as_numpy("labels")
    assert scores.dtype == np.float32 and scores.shape == (3, 10) and labels.shape == (3, 5)
    for row, top, data in zip(scores, labels, images):
        expected = v1_scores(server, data)
        assert dict(zip(model.class_names_, row.tolist())) == pytest.approx(expected, abs=1e-6)
        # tritonclient gives BYTES as bytes from binary data, as str from JSON
        assert [label.decode() if binary_out else label for label in top] == ranked(expected, 5)[0]
    reply = result.get_response()
    assert reply["model_name"] == "knn" and [o["name"] for o in reply["outputs"]] == ["scores", "labels"]
    assert all(("data" not in o) == binary_out == ("binary_data_size" in o.get("parameters", {}))
               for o in reply["outputs"])


def test_default_outputs_are_all_binary_and_classification_is_tritons(server, client, model):
    data = blend_png(6, 5)
    result = client.infer("knn", [_input(model, "pixels", [data], True)])      # no outputs: binary_data_output
    assert {o["name"] for o in result.get_response()["outputs"]} == {"scores", "labels"}
    assert all("binary_data_size" in o["parameters"] for o in result.get_response()["outputs"])
    expected = v1_scores(server, data)
    best = ranked(expected, 3)[0]
    result = client.infer("knn", [_input(model, "pixels", [data], True)],
                          outputs=[triton.InferRequestedOutput("scores", class_count=3)])
    found = [text.decode().split(":") for text in result.as_numpy("scores")[0]]
    assert [label for _, _, label in found] == best
    assert [int(index) for _, index, _ in found] == [model.class_names_.index(b) for b in best]
    assert [float(score) for score, _, _ in found] == pytest.approx([expected[b] for b in best], abs=1e-5)


def test_gzip_request_and_request_id(server, client, model):
    data = blend_png(2, 3)
    result = client.infer("knn", [_input(model, "files", [data], True)], request_id="r-7",
                          request_compression_algorithm="gzip", response_compression_algorithm="gzip")
    assert result.get_response()["id"] == "r-7"
    assert dict(zip(model.class_names_, result.as_numpy("scores")[0].tolist())) == pytest.approx(
        v1_scores(server, data), abs=1e-6)


def test_multi_label_model_answers_which_labels_it_predicts(quadrant_model, quadrants):
    x, _ = quadrants(6, seed=4)
    images = x[:, None].astype(np.uint8)
    with LiveServer(create_app(quadrant_model)) as live:
        client = triton.InferenceServerClient(live.url.removeprefix("http://"), network_timeout=60)
        assert "predicted" in {o["name"] for o in client.get_model_metadata("linear")["outputs"]}
        tensor = triton.InferInput("pixels", list(images.shape), "UINT8").set_data_from_numpy(images)
        result = client.infer("linear", [tensor])
    assert result.as_numpy("predicted").tolist() == quadrant_model.predict(images).astype(bool).tolist()
    assert result.as_numpy("scores") == pytest.approx(quadrant_model.predict_proba(images), abs=1e-6)


def _status(call) -> tuple[str, str]:
    with pytest.raises(InferenceServerException) as caught:
        call()
    return caught.value.status(), caught.value.message()


def test_client_errors_are_4xx_with_the_reason(client, model):
    good = pixels(model, digit_png(1))[None]
    assert _status(lambda: client.infer("resnet", [_input(model, "pixels", [digit_png(1)], True)])) == (
        "404", "unknown model 'resnet'; this server serves 'knn'")
    assert _status(lambda: client.get_model_metadata("resnet"))[0] == "404"
    assert not client.is_model_ready("resnet")
    wrong_dtype = triton.InferInput("pixels", list(good.shape), "INT64").set_data_from_numpy(good.astype(np.int64))
    assert _status(lambda: client.infer("knn", [wrong_dtype])) == ("400", "input 'pixels' is UINT8, not INT64")
    rgb = np.repeat(good, 3, axis=1)
    status, message = _status(lambda: client.infer("knn", [triton.InferInput("pixels", list(rgb.shape), "UINT8")
                                                         .set_data_from_numpy(rgb)]))
    assert status == "400" and "[N, 1, 8, 8]" in message
    many = np.repeat(good, 33, axis=0)
    status, message = _status(lambda: client.infer("knn", [triton.InferInput("pixels", list(many.shape), "UINT8")
                                                          .set_data_from_numpy(many)]))
    assert status == "400" and "1 to 32" in message
    assert _status(lambda: client.infer("knn", []))[0] == "400"
    status, message = _status(lambda: client.infer("knn", [_input(model, "pixels", [digit_png(1)], True)],
                                                  outputs=[triton.InferRequestedOutput("logits")]))
    assert status == "400" and "unknown output 'logits'" in message


def _infer(server, body, headers=None, name="knn"):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(f"{server.url}/v2/models/{name}/infer", content=content, headers=headers or {}, timeout=60)


def _pixels_json(values, shape=(1, 1, 8, 8), datatype="UINT8", name="pixels"):
    return {"inputs": [{"name": name, "datatype": datatype, "shape": list(shape), "data": values}]}


def _files_binary(*images: bytes) -> tuple[bytes, dict]:
    raw = b"".join(struct.pack("<I", len(d)) + d for d in images)
    header = json.dumps({"inputs": [{"name": "files", "datatype": "BYTES", "shape": [len(images)],
                                     "parameters": {"binary_data_size": len(raw)}}]}).encode()
    return header + raw, {"Inference-Header-Content-Length": str(len(header))}


@pytest.mark.parametrize("case,status,needle", [
    ("not json", 400, "not valid JSON"),
    ("json list", 400, "JSON object"),
    ("no inputs", 400, "no \"inputs\""),
    ("unknown input", 400, "unknown input 'x'"),
    ("two inputs", 400, "one input"),
    ("shape of strings", 400, "whole numbers"),
    ("data too short", 400, "64 numbers"),
    ("strings as pixels", 400, "64 numbers"),
    ("fp32 over 255", 400, "0..255"),
    ("fp32 nan binary", 400, "0..255"),
    ("uint8 fraction", 400, "whole numbers"),
    ("binary size past the body", 400, "binary_data_size"),
    ("header length past the body", 400, "Inference-Header-Content-Length"),
    ("bytes not base64", 400, "not valid base64"),
    ("bytes count", 400, "elements"),
    ("bytes cut", 400, "cut inside"),
    ("bytes not an image", 415, "not an image file"),
    ("bytes pixel bomb", 413, "over the limit"),
    ("body too large", 413, "limit"),
    ("gzip bomb", 413, "inflated"),
    ("bad gzip", 400, "gzip"),
    ("brotli", 415, "Content-Encoding"),
    ("unknown model", 404, "unknown model"),
    ("classification of labels", 400, "classification"),
])
def test_bad_v2_requests_get_4xx_json(server, case, status, needle):
    zeros = [0] * 64
    headers, name = {}, "knn"
    body = {
        "not json": b"{nope", "json list": [1, 2],
        "no inputs": {"inputs": []},
        "unknown input": _pixels_json(zeros, name="x"),
        "two inputs": {"inputs": _pixels_json(zeros)["inputs"] * 2},
        "shape of strings": _pixels_json(zeros, shape=("1", 1, 8, 8)),
        "data too short": _pixels_json(zeros[:10]),
        "strings as pixels": _pixels_json(["0"] * 64),
        "fp32 over 255": _pixels_json([300.0] * 64, datatype="FP32", name="images"),
        "uint8 fraction": _pixels_json([0.5] * 64),
        "bytes not base64": {"inputs": [{"name": "files", "datatype": "BYTES", "shape": [1], "data": ["@@@"]}]},
        "bytes count": {"inputs": [{"name": "files", "datatype": "BYTES", "shape": [2],
                                    "data": [base64.b64encode(digit_png(1)).decode()]}]},
        "unknown model": _pixels_json(zeros),
        "classification of labels": {**_pixels_json(zeros),
                                     "outputs": [{"name": "labels", "parameters": {"classification": 2}}]},
    }.get(case)
    if case == "unknown model":
        name = "knn2"
    elif case == "fp32 nan binary":
        raw = np.full(64, np.nan, dtype=np.float32).tobytes()
        header = json.dumps({"inputs": [{"name": "images", "datatype": "FP32", "shape": [1, 1, 8, 8],
                                         "parameters": {"binary_data_size": len(raw)}}]}).encode()
        body, headers = header + raw, {"Inference-Header-Content-Length": str(len(header))}
    elif case == "binary size past the body":
        body, headers = _files_binary(digit_png(1))
        body = body[:-10]
    elif case == "header length past the body":
        body, headers = json.dumps(_pixels_json(zeros)).encode(), {"Inference-Header-Content-Length": "99999"}
    elif case == "bytes cut":
        body, headers = _files_binary(digit_png(1))
        header_length = int(headers["Inference-Header-Content-Length"])
        head = json.loads(body[:header_length])
        head["inputs"][0]["parameters"]["binary_data_size"] = 2
        text = json.dumps(head).encode()
        body = text + body[header_length:header_length + 2]
        headers = {"Inference-Header-Content-Length": str(len(text))}
    elif case in ("bytes not an image", "bytes pixel bomb", "body too large"):
        body, headers = _files_binary({"bytes not an image": b"hello, I am text", "bytes pixel bomb": bomb(),
                                       "body too large": b"\x00" * (LIMIT + 100_000)}[case])
    elif case == "gzip bomb":
        body, headers = gzip.compress(b" " * 5_000_000), {"content-encoding": "gzip"}
    elif case == "bad gzip":
        body, headers = b"not gzip at all", {"content-encoding": "gzip"}
    elif case == "brotli":
        body, headers = b"\x00", {"content-encoding": "br"}
    reply = _infer(server, body, headers, name)
    assert reply.status_code == status and needle in reply.json()["error"], reply.text


@pytest.mark.parametrize("path", ["/v2/models/knn2", "/v2/models/knn2/ready", "/v2/models/knn/versions/2/ready",
                                  "/v2/models/knn/versions/2", "/v2/models/knn/ready/now", "/v2/health/dead"])
def test_unknown_paths_models_and_versions_are_404_json(server, path):
    reply = httpx.get(server.url + path)
    assert reply.status_code == 404 and "error" in reply.json()


def test_version_1_is_the_model(client, model):
    assert client.is_model_ready("knn", "1") and not client.is_model_ready("knn", "2")
    assert client.get_model_metadata("knn", "1") == client.get_model_metadata("knn")
    tensor = _input(model, "pixels", [blend_png(1, 7)], True)
    assert client.infer("knn", [tensor], model_version="1").as_numpy("scores") == pytest.approx(
        client.infer("knn", [tensor]).as_numpy("scores"))
    assert _status(lambda: client.infer("knn", [tensor], model_version="2"))[0] == "404"


def test_get_on_infer_is_405_json(server):
    reply = httpx.get(server.url + "/v2/models/knn/infer")
    assert reply.status_code == 405 and "error" in reply.json()


_json_values = st.recursive(st.none() | st.booleans() | st.integers(-300, 300) | st.floats(allow_nan=False)
                            | st.text(max_size=8), lambda inner: st.lists(inner, max_size=5)
                            | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=20)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(["files", "pixels", "images", "x"]),
       datatype=st.sampled_from(["BYTES", "UINT8", "FP32", "INT64", "BOOL", 3]),
       shape=st.one_of(st.lists(st.integers(-2, 40), max_size=5), _json_values),
       data=_json_values, outputs=st.one_of(st.none(), _json_values), parameters=_json_values)
def test_fuzzed_v2_requests_never_get_a_500(server, name, datatype, shape, data, outputs, parameters):
    body = {"inputs": [{"name": name, "datatype": datatype, "shape": shape, "data": data}],
            "parameters": parameters}
    if outputs is not None:
        body["outputs"] = outputs
    reply = _infer(server, body)
    assert reply.status_code in (200, 400, 413, 415), reply.text
    assert "error" in reply.json() or "outputs" in reply.json()


@pytest.mark.parametrize("path", ["/", "/v2/models/knn/infer"])
def test_oversized_streamed_body_is_cut_off(server, path):
    sent = 0

    def chunks():
        nonlocal sent
        for _ in range(400):                 # 400 x 64 kB = 25 MB, if it were all read
            sent += 65536
            yield b"\x00" * 65536
    try:
        reply = httpx.post(server.url + path, content=chunks(), timeout=60,
                           headers={"content-type": "application/octet-stream"})
        assert reply.status_code == 413 and "limit" in reply.json()["error"]
    except httpx.TransportError:
        pass                                  # the server may close the connection while we still send
    assert sent < 25 * 2**20


def test_concurrent_clients_of_every_protocol_share_batches(model):
    images = [blend_png(i % 10, (i + 3) % 10) for i in range(24)]
    with LiveServer(create_app(model, max_wait_ms=20)) as live:
        expected = [v1_scores(live, data) for data in images]
        before = httpx.get(live.url + "/healthz").json()["batches"]

        def ask(i: int) -> dict[str, float]:
            data = images[i]
            if i % 3 == 0:
                return v1_scores(live, data)
            if i % 3 == 1:
                hf = InferenceClient(model=live.url, timeout=60)
                return dict(zip(*pairs(hf.image_classification(data, top_k=10))))
            client = triton.InferenceServerClient(live.url.removeprefix("http://"), network_timeout=60)
            return dict(zip(model.class_names_, client.infer("knn", [_input(model, "pixels", [data], True)])
                            .as_numpy("scores")[0].tolist()))
        with ThreadPoolExecutor(24) as pool:
            found = list(pool.map(ask, range(len(images))))
        batches = httpx.get(live.url + "/healthz").json()["batches"] - before
    assert all(f == pytest.approx(e, abs=1e-6) for f, e in zip(found, expected))
    assert batches < len(images)              # requests of different protocols shared forward passes
