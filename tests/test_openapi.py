"""The OpenAPI document says what the server does: schemathesis generates requests from it against
the real server over HTTP and checks every answer against it (no 5xx, status, content type,
headers and body as documented); and the spec lists what a client must know."""

from __future__ import annotations

import json

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import positive_data_acceptance
from test_serving import LiveServer

from imgcls.data import load_dataset
from imgcls.models import create_model
from imgcls.serving.app import create_app


@pytest.fixture(scope="module")
def server():
    model = create_model("knn", k=3).fit(load_dataset("digits").train)
    with LiveServer(create_app(model, max_upload_bytes=200_000, max_pixels=4_000_000)) as live:
        yield live


@pytest.fixture(scope="module")
def api(server):
    return schemathesis.openapi.from_url(server.url + "/openapi.json")


def fuzz(operation, mode: GenerationMode, base_url: str, sent: dict[str, list[int]]) -> str | None:
    """Run schemathesis's checks on 30 requests generated for operation; the first failure, or None.
    derandomize: the same requests every run, so a pass or a failure always repeats.

    Every check runs but positive_data_acceptance, which expects any schema-valid request to be
    accepted: no schema can say that a binary string must decode as an image, so random bytes in
    the file field get the 415 (or 400) the spec lists for them."""
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=30, derandomize=True, deadline=None, database=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    def check(case):
        response = case.call(base_url=base_url, timeout=30)
        sent.setdefault(operation.label, []).append(response.status_code)
        case.validate_response(response, excluded_checks=[positive_data_acceptance])
    try:
        check()
    except Unsatisfiable:
        if mode is GenerationMode.NEGATIVE:   # only a string path parameter: any string is valid for it
            return None
        raise
    except Exception as failure:     # schemathesis's FailureGroup, or what the server broke
        return f"{type(failure).__name__}: {failure}"
    return None


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_every_answer_matches_the_spec(api, server, mode):
    operations = [result.ok() for result in api.get_all_operations()]
    assert {op.label for op in operations} >= {"GET /healthz", "GET /v1/model", "POST /v1/classify", "GET /metrics"}
    if mode is GenerationMode.NEGATIVE:   # a request with no inputs cannot be made invalid
        operations = [op for op in operations if op.body or any(True for _ in op.iter_parameters())]
    sent: dict[str, list[int]] = {}      # the statuses each operation answered
    failures = {op.label: found for op in operations if (found := fuzz(op, mode, server.url, sent))}
    assert len(sent["POST /v1/classify"]) >= 20    # hypothesis stops early only when it runs out of cases
    if mode is GenerationMode.POSITIVE:               # the spec's example is a real image: its reply is checked too
        assert 200 in sent["POST /v1/classify"]
        assert 200 in sent["POST /v2/models/{name}/infer"] and 200 in sent["GET /v2/models/{name}"]
    assert not failures, "\n\n".join(f"{label}\n{found}" for label, found in failures.items())


def test_a_wrong_method_is_405_json_with_allow(server):
    """Every path of the spec, asked with a method it does not document, says which it does."""
    spec = httpx.get(server.url + "/openapi.json").json()
    for path, operations in spec["paths"].items():
        documented = {method.upper() for method in operations}
        hidden = {"GET"} if path == "/" else set()     # GET / is the page, left out of the spec
        for method in {"GET", "POST", "PUT", "DELETE", "PATCH"} - documented - hidden:
            reply = httpx.request(method, server.url + path)
            assert reply.status_code == 405, (method, path)
            assert reply.headers["content-type"] == "application/json" and reply.json()["error"]
            allowed = {m.strip() for m in reply.headers["allow"].split(",")}
            assert allowed - {"HEAD"} == documented | hidden, (method, path, allowed)


def test_the_spec_lists_refusals_limits_and_reply_shapes(server):
    spec = httpx.get(server.url + "/openapi.json").json()
    classify = spec["paths"]["/v1/classify"]["post"]
    for status in ("400", "413", "415", "422", "503"):
        answer = classify["responses"][status]["content"]["application/json"]["schema"]
        assert answer == {"$ref": "#/components/schemas/Error"}, status
    assert classify["responses"]["503"]["headers"]["Retry-After"]["required"]
    assert spec["components"]["schemas"]["Error"]["required"] == ["error"]
    body = classify["requestBody"]["content"]
    assert body["multipart/form-data"]["schema"]["properties"]["file"]["minItems"] == 1
    assert body["application/json"]["schema"]["properties"]["images"]["minItems"] == 1
    replies = {path: ops["get" if "get" in ops else "post"]["responses"]["200"]["content"]["application/json"]
               for path, ops in spec["paths"].items() if path in ("/healthz", "/v1/model", "/v1/classify")}
    assert {path: reply["schema"]["$ref"].rsplit("/", 1)[1] for path, reply in replies.items()} == {
        "/healthz": "Health", "/v1/model": "ModelInfo", "/v1/classify": "ClassifyReply"}
    result = spec["components"]["schemas"]["Result"]
    assert set(result["properties"]) == {"filename", "predictions", "labels", "explanations",
                                         "label", "rejection_score"}     # the last two: models that abstain
    assert spec["components"]["schemas"]["Prediction"]["required"] == ["label", "score"]


def test_the_spec_describes_kserve_v2_with_its_reply_and_request_models(server):
    spec = httpx.get(server.url + "/openapi.json").json()
    schemas = spec["components"]["schemas"]
    replies = {path: ops["get" if "get" in ops else "post"]["responses"]["200"]["content"]["application/json"]
               for path, ops in spec["paths"].items() if path.startswith("/v2")}
    assert {path: reply["schema"]["$ref"].rsplit("/", 1)[1] for path, reply in replies.items()} == {
        "/v2": "ServerMetadata", "/v2/health/live": "Live", "/v2/health/ready": "Ready",
        "/v2/models/{name}": "ModelMetadata", "/v2/models/{name}/ready": "ModelReady",
        "/v2/models/{name}/infer": "InferenceResponse"}
    assert schemas["InferenceResponse"]["required"] == ["model_name", "model_version", "outputs"]
    assert schemas["ResponseOutput"]["properties"]["datatype"]["enum"] == ["FP32", "BYTES", "BOOL"]
    infer = spec["paths"]["/v2/models/{name}/infer"]["post"]
    assert "application/octet-stream" in infer["responses"]["200"]["content"]       # the binary tensor extension
    for status in ("400", "404", "413", "415", "503"):
        assert infer["responses"][status]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/Error"}, status
    body = infer["requestBody"]["content"]["application/json"]["schema"]
    assert body["required"] == ["inputs"] and (body["properties"]["inputs"]["minItems"],
                                               body["properties"]["inputs"]["maxItems"]) == (1, 1)
    tensor = body["properties"]["inputs"]["items"]
    assert tensor["required"] == ["name", "datatype", "shape"]
    assert tensor["properties"]["name"]["enum"] == ["files", "pixels", "images"]
    assert tensor["properties"]["datatype"]["enum"] == ["BYTES", "UINT8", "FP32"]
    assert tensor["properties"]["shape"]["items"] == {"type": "integer", "minimum": 0}
    assert "$ref" not in json.dumps(body)          # written in place: the components do not hold it


def test_a_typed_parameter_refused_is_422_json():
    """The handler every route shares: FastAPI's validation error list becomes one line under "error"."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from imgcls.serving.limits import add_error_handlers
    app = FastAPI()
    add_error_handlers(app)

    @app.get("/models/{version}")
    async def model(version: int) -> dict:
        return {"version": version}
    reply = TestClient(app).get("/models/latest")
    assert reply.status_code == 422 and reply.headers["content-type"] == "application/json"
    assert set(reply.json()) == {"error"} and reply.json()["error"].startswith("path.version: ")
