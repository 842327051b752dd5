"""GET /metrics over real HTTP, read back with prometheus-client's own parsers: the counts move by
exactly what the requests sent did."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families
from test_serving import LiveServer, digit_png

from imgcls.data import load_dataset
from imgcls.models import create_model
from imgcls.serving.app import create_app


@pytest.fixture(scope="module")
def digits_model():
    return create_model("knn", k=3).fit(load_dataset("digits").train)


@pytest.fixture(scope="module")
def server(digits_model):
    with LiveServer(create_app(digits_model, max_upload_bytes=200_000)) as live:
        yield live


def scrape(url: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of GET /metrics as {(sample name, labels): value}, as Prometheus would read it."""
    reply = httpx.get(url + "/metrics")
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/plain")
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(reply.text) for s in family.samples}


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def classify(url: str, images: list[bytes]):
    return httpx.post(url + "/v1/classify", files=[("file", (f"{i}.png", data, "image/png"))
                                                   for i, data in enumerate(images)], timeout=60)


def test_counts_rise_by_what_was_sent(server):
    before = scrape(server.url)
    sizes = [1, 2, 3]
    for n in sizes:     # one after the other, so each request is its own forward pass
        assert classify(server.url, [digit_png(i) for i in range(n)]).status_code == 200
    assert classify(server.url, [b"hello, I am text"]).status_code == 415
    assert httpx.post(server.url + "/v1/classify", files=[("other", ("x", b"1"))]).status_code == 400
    assert httpx.post(server.url + "/v1/classify", content=b"\0" * 400_000,       # refused from Content-Length
                      headers={"content-type": "application/octet-stream"}).status_code == 413
    assert httpx.get(server.url + "/no/such/page").status_code == 404
    after = scrape(server.url)

    def rise(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)
    classify_route = {"method": "POST", "path": "/v1/classify"}
    assert rise("imgcls_requests_total", **classify_route, status="200") == 3
    assert rise("imgcls_requests_total", **classify_route, status="415") == 1
    assert rise("imgcls_requests_total", **classify_route, status="400") == 1
    assert rise("imgcls_requests_total", method="POST", path="<unmatched>", status="413") == 1
    assert rise("imgcls_requests_total", method="GET", path="<unmatched>", status="404") == 1
    assert rise("imgcls_requests_total", method="GET", path="/metrics", status="200") == 1   # the first scrape
    assert rise("imgcls_request_duration_seconds_count", **classify_route) == 5
    assert rise("imgcls_request_duration_seconds_sum", **classify_route) > 0
    # the micro-batcher saw each accepted request as one forward pass of its images
    assert rise("imgcls_batch_size_count") == len(sizes)
    assert rise("imgcls_batch_size_sum") == sum(sizes)
    assert rise("imgcls_batch_size_bucket", le="1.0") == 1 and rise("imgcls_batch_size_bucket", le="2.0") == 2
    assert rise("imgcls_batch_size_bucket", le="+Inf") == len(sizes)
    assert value(after, "imgcls_queue_depth") == 0
    # the label is the route's template, never the raw path a client sent
    assert not any(dict(labels).get("path") == "/no/such/page" for _, labels in after)


def test_openmetrics_when_the_scraper_asks_for_it(server):
    reply = httpx.get(server.url + "/metrics", headers={"accept": "application/openmetrics-text; version=1.0.0"})
    assert reply.headers["content-type"].startswith("application/openmetrics-text")
    names = {family.name for family in openmetrics_families(reply.text)}
    assert {"imgcls_requests", "imgcls_request_duration_seconds", "imgcls_batch_size", "imgcls_queue_depth"} <= names


def test_two_apps_in_one_process_count_apart(digits_model):
    """Each app has its own registry: building a second does not clash, nor share counts."""
    with LiveServer(create_app(digits_model)) as one, LiveServer(create_app(digits_model)) as two:
        for _ in range(3):
            assert classify(one.url, [digit_png(0)]).status_code == 200
        ok = {"method": "POST", "path": "/v1/classify", "status": "200"}
        assert value(scrape(one.url), "imgcls_requests_total", **ok) == 3
        assert value(scrape(two.url), "imgcls_requests_total", **ok) == 0
        assert value(scrape(two.url), "imgcls_batch_size_count") == 0
