"""The HTTP server over real HTTP on loopback: API, limits, bad input, micro-batching, load, fuzzing."""

import base64
import io
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import uvicorn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from imgcls.data import load_dataset
from imgcls.models import Classifier, create_model
from imgcls.serving.app import create_app


class LiveServer:
    """uvicorn serving an app on 127.0.0.1 in a background thread."""

    def __init__(self, app):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.05)
        raise RuntimeError("server did not start")

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def digits_model():
    return create_model("knn", k=3).fit(load_dataset("digits").train)


@pytest.fixture(scope="module")
def server(digits_model):
    with LiveServer(create_app(digits_model, max_upload_bytes=200_000, max_pixels=4_000_000)) as live:
        yield live


def png_bytes(array) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def digit_png(i: int) -> bytes:
    from sklearn.datasets import load_digits
    image = np.round(load_digits().images[i] * 255 / 16)
    return png_bytes(np.kron(image, np.ones((4, 4))))     # 32x32, as a user would upload it


def expected_label(model, data: bytes) -> str:
    """What the library itself predicts for these bytes: the server must agree."""
    from imgcls.data.images import decode_image
    return model.class_names_[int(model.predict(decode_image(data, model.preprocessing_)[None])[0])]


def test_health_model_and_openapi(server):
    assert httpx.get(server.url + "/healthz").json()["status"] == "ok"
    info = httpx.get(server.url + "/v1/model").json()
    assert info["name"] == "knn" and info["num_classes"] == 10 and info["input_size"] == [8, 8]
    assert info["max_upload_bytes"] == 200_000 and info["top_k"] == 5
    assert info["task"] == "single-label" and info["thresholds"] is None
    spec = httpx.get(server.url + "/openapi.json").json()
    body = spec["paths"]["/v1/classify"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json"} <= set(body)
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]


def test_classify_multipart_several_files(server, digits_model):
    files = [("file", (f"{i}.png", digit_png(i), "image/png")) for i in range(4)]
    reply = httpx.post(server.url + "/v1/classify", files=files, params={"top_k": 3})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["model"] == "knn" and body["time_ms"] > 0
    assert [r["filename"] for r in body["results"]] == ["0.png", "1.png", "2.png", "3.png"]
    for i, result in enumerate(body["results"]):
        assert set(result) == {"filename", "predictions"}           # single-label: no "labels"
        scores = [p["score"] for p in result["predictions"]]
        assert len(scores) == 3 and scores == sorted(scores, reverse=True)
        assert result["predictions"][0]["label"] == expected_label(digits_model, digit_png(i))


def test_classify_json_base64_and_data_url(server, digits_model):
    encoded = base64.b64encode(digit_png(5)).decode()
    reply = httpx.post(server.url + "/v1/classify", json={"images": [encoded, "data:image/png;base64," + encoded],
                                                          "top_k": 1})
    assert reply.status_code == 200, reply.text
    assert [r["predictions"][0]["label"] for r in reply.json()["results"]] == [expected_label(digits_model,
                                                                                              digit_png(5))] * 2


@pytest.fixture(scope="module")
def multi_label_server(quadrant_model):
    with LiveServer(create_app(quadrant_model)) as live:
        yield live


def quadrant_pngs(quadrants) -> list[bytes]:
    x, _ = quadrants(12, seed=5, noise=90)
    x[0] = 20                                               # no quadrant lit: no label
    return [png_bytes(image) for image in x]


def library_answer(model, data: bytes) -> tuple[dict[str, float], list[str]]:
    """What the library itself makes of these bytes: every label's probability, and the labels
    model.predict gives, in score order."""
    from imgcls.data.images import decode_image
    image = decode_image(data, model.preprocessing_)[None]
    proba, chosen = model.predict_proba(image)[0], model.predict(image)[0]
    order = np.argsort(-proba, kind="stable")
    return dict(zip(model.class_names_, proba.tolist())), [model.class_names_[j] for j in order if chosen[j]]


def test_a_multi_label_model_describes_its_task_and_thresholds(multi_label_server, quadrant_model):
    info = httpx.get(multi_label_server.url + "/v1/model").json()
    assert info["task"] == "multi-label" and info["classes"] == ["a", "b", "c"]
    assert info["thresholds"] == pytest.approx(list(quadrant_model.task_.thresholds))
    assert info["top_k"] == 3                               # every label, unless a request asks for fewer


def test_multi_label_results_rank_every_label_and_list_those_above_threshold(multi_label_server, quadrant_model,
                                                                              quadrants):
    pngs = quadrant_pngs(quadrants)
    files = [("file", (f"q{i}.png", data, "image/png")) for i, data in enumerate(pngs)]
    reply = httpx.post(multi_label_server.url + "/v1/classify", files=files)
    assert reply.status_code == 200, reply.text
    results = reply.json()["results"]
    assert [r["filename"] for r in results] == [f"q{i}.png" for i in range(len(pngs))]
    for result, data in zip(results, pngs):
        scores, chosen = library_answer(quadrant_model, data)
        assert set(result) == {"filename", "predictions", "labels"}
        assert [p["label"] for p in result["predictions"]] == sorted(scores, key=lambda label: -scores[label])
        assert {p["label"]: p["score"] for p in result["predictions"]} == pytest.approx(scores, abs=1e-6)
        assert result["labels"] == chosen
    assert results[0]["labels"] == [] and {len(r["labels"]) for r in results} >= {0, 1, 2}

    # top_k asked for ranks fewer labels; the labels above threshold are all still there
    encoded = [base64.b64encode(data).decode() for data in pngs]
    reply = httpx.post(multi_label_server.url + "/v1/classify", json={"images": encoded, "top_k": 1})
    assert reply.status_code == 200, reply.text
    for result, data in zip(reply.json()["results"], pngs):
        scores, chosen = library_answer(quadrant_model, data)
        assert [p["label"] for p in result["predictions"]] == [max(scores, key=scores.get)]
        assert result["labels"] == chosen


def _bomb() -> bytes:
    buffer = io.BytesIO()
    Image.new("1", (5000, 5000)).save(buffer, format="PNG")    # 25 Mpx in a few kB
    return buffer.getvalue()


@pytest.mark.parametrize("case,status,needle", [
    ("not an image", 415, "not an image file"),
    ("truncated", 400, "truncated or corrupt"),
    ("bomb", 413, "over the limit"),
    ("too large", 413, "limit"),
    ("empty form", 400, "no image"),
])
def test_bad_uploads_get_4xx_json(server, case, status, needle):
    payload = {"not an image": b"hello, I am text", "truncated": digit_png(1)[:60], "bomb": _bomb(),
               "too large": b"\x00" * 300_000}.get(case)
    files = [("file", ("x.png", payload, "image/png"))] if payload is not None else [("other", ("x", b"1"))]
    reply = httpx.post(server.url + "/v1/classify", files=files)
    assert reply.status_code == status and needle in reply.json()["error"]


def test_oversized_streamed_body_is_cut_off(server):
    sent = 0

    def chunks():
        nonlocal sent
        yield (b'--x\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n'
               b"Content-Type: image/png\r\n\r\n")
        for _ in range(400):                 # 400 x 64 kB = 25 MB, if it were all read
            sent += 65536
            yield b"\x00" * 65536
    try:
        reply = httpx.post(server.url + "/v1/classify", content=chunks(),
                           headers={"content-type": "multipart/form-data; boundary=x"}, timeout=30)
        assert reply.status_code == 413
    except httpx.TransportError:
        pass                                  # the server may close the connection while we still send
    assert sent < 25 * 2**20


@pytest.mark.parametrize("request_kwargs,status", [
    ({"content": b"raw bytes", "headers": {"content-type": "application/octet-stream"}}, 415),
    ({"json": {"images": ["not base64!"]}}, 400),
    ({"json": {"pictures": []}}, 400),
    ({"json": {"images": [base64.b64encode(digit_png(1)).decode()], "top_k": 0}}, 400),
    ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 400),
])
def test_bad_requests_get_4xx_json(server, request_kwargs, status):
    reply = httpx.post(server.url + "/v1/classify", **request_kwargs)
    assert reply.status_code == status and "error" in reply.json()


def test_64_concurrent_clients_are_all_served_in_batches(digits_model):
    app = create_app(digits_model)
    with LiveServer(app) as live:
        before = httpx.get(live.url + "/healthz").json()["batches"]
        with ThreadPoolExecutor(64) as pool:
            replies = list(pool.map(lambda i: httpx.post(live.url + "/v1/classify", timeout=60,
                                                         files={"file": ("d.png", digit_png(i % 10))}), range(64)))
        assert all(r.status_code == 200 for r in replies)
        expected = [expected_label(digits_model, digit_png(i % 10)) for i in range(64)]
        assert [r.json()["results"][0]["predictions"][0]["label"] for r in replies] == expected
        batches = httpx.get(live.url + "/healthz").json()["batches"] - before
        assert batches < 64            # requests shared forward passes


def test_full_queue_answers_503_with_retry_after(digits_model):
    class Slow(Classifier):
        model_name, class_names_, preprocessing_ = "slow", digits_model.class_names_, digits_model.preprocessing_
        task_ = digits_model.task_

        def predict_proba(self, images):
            time.sleep(0.3)
            return digits_model.predict_proba(images)

    with LiveServer(create_app(Slow(), max_batch=1, queue_size=1)) as live:
        with ThreadPoolExecutor(8) as pool:
            replies = list(pool.map(lambda i: httpx.post(live.url + "/v1/classify", timeout=60,
                                                         files={"file": ("d.png", digit_png(i))}), range(8)))
    codes = [r.status_code for r in replies]
    assert 200 in codes and 503 in codes and set(codes) <= {200, 503}
    busy = next(r for r in replies if r.status_code == 503)
    assert busy.headers["retry-after"] == "1" and "busy" in busy.json()["error"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=st.one_of(st.binary(max_size=2048),
                         st.builds(lambda cut: digit_png(3)[:cut], st.integers(0, 400))),
       filename=st.text(max_size=40), top_k=st.one_of(st.none(), st.integers(-5, 50), st.text(max_size=5)))
def test_fuzzed_uploads_never_get_a_500(server, payload, filename, top_k):
    params = {} if top_k is None else {"top_k": str(top_k)}
    reply = httpx.post(server.url + "/v1/classify", files={"file": (filename or "f", payload)}, params=params)
    assert reply.status_code in (200, 400, 413, 415), reply.text
    assert "error" in reply.json() or "results" in reply.json()
