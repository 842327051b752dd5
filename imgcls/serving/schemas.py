"""The shapes of what the server answers, as pydantic models: FastAPI validates every reply against
them and publishes them in /openapi.json, so a client generated from the spec (or schemathesis,
which checks each reply against it) sees exactly what is sent. KServe's v2 inference request is
described here too (request_body_schema puts it in the spec), though its route reads the body
itself: the binary tensor extension and gzip bodies are not JSON that FastAPI could parse."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

# an 8x8 grey gradient as PNG: what /docs's "Try it out" sends first, and schemathesis too, so a
# request that succeeds is among those checked against the reply's schema
EXAMPLE_PNG = "iVBORw0KGgoAAAANSUhEUgAAAAgAAAAICAAAAADhZOFXAAAAEElEQVR42mNkEIAAJgGKGACOGAQAwSeVywAAAABJRU5ErkJggg=="


class Error(BaseModel):
    """Every refusal: a 4xx (or 503) with one line saying what was wrong."""
    error: str = Field(description="what was wrong with the request, in one line")


class Health(BaseModel):
    status: Literal["ok"]
    queued: int = Field(ge=0, description="requests waiting for the micro-batcher")
    batches: int = Field(ge=0, description="forward passes run since the server started")


class Abstention(BaseModel):
    score: Literal["msp", "energy", "knn"] = Field(description="the rejection score: higher is less like training")
    threshold: float = Field(description="images scoring above it are answered unknown")
    accept: float | None = Field(description="the share of validation images the threshold accepts")


class ModelInfo(BaseModel):
    name: str
    classes: list[str]
    num_classes: int = Field(ge=1)
    task: Literal["single-label", "multi-label"]
    thresholds: list[float] | None = Field(description="per label, for a multi-label model; null otherwise")
    input_size: list[int] = Field(description="(height, width) the model sees")
    channels: int
    metrics: dict[str, Any] = Field(description="the model's recorded evaluation figures")
    max_upload_bytes: int = Field(description="all of one request's images together")
    top_k: int = Field(ge=1, description="labels ranked per result unless a request asks for top_k")
    explains: Literal["network", "neighbours", "template"] | None = Field(
        description="how explain=true explains this model; null when it cannot")
    abstention: Abstention | None = Field(None, description="how the model says unknown; null when it never does")


class Prediction(BaseModel):
    label: str
    score: float = Field(ge=0, le=1)


class Explanation(BaseModel):
    label: str
    score: float
    method: str
    layer: str | None = Field(description="the network layer a Grad-CAM map was read from")
    above_threshold: bool = Field(description="multi-label: whether the label is one the model predicts")
    heatmap: str = Field(description="base64 PNG in the photo's own frame, transparent outside what the model saw")


class Result(BaseModel):
    filename: str
    label: str | None = Field(None, description="models that abstain only: the best class, or unknown")
    rejection_score: float | None = Field(None, description="models that abstain only: the image's rejection score")
    predictions: list[Prediction] = Field(description="labels ranked by score, best first")
    labels: list[str] | None = Field(None, description="multi-label models only: the labels at or above "
                                                       "their thresholds, best first")
    explanations: list[Explanation] | None = Field(None, description="with explain=true only")


class ClassifyReply(BaseModel):
    model: str
    time_ms: float = Field(ge=0)
    results: list[Result] = Field(description="one per image, in the order sent")


# -- KServe's Open Inference Protocol (v2) -------------------------------------------------------

class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str] = Field(description="the protocol extensions the server speaks")


class Live(BaseModel):
    live: bool


class Ready(BaseModel):
    ready: bool = Field(description="whether the server takes requests (false with a 503)")


class ModelReady(BaseModel):
    name: str
    ready: bool = Field(description="whether the model takes requests (false with a 503)")


class TensorMetadata(BaseModel):
    name: str
    datatype: Literal["BYTES", "UINT8", "FP32", "BOOL"]
    shape: list[int] = Field(description="-1: any size (the number of images)")


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata] = Field(description="send exactly one of them")
    outputs: list[TensorMetadata]


class RequestInput(BaseModel):
    name: Literal["files", "pixels", "images"]
    datatype: Literal["BYTES", "UINT8", "FP32"] = Field(description="files: BYTES, pixels: UINT8, images: FP32")
    shape: list[Annotated[int, Field(ge=0)]] = Field(description="[N] for files, [N, C, H, W] for pixels and images")
    parameters: dict[str, Any] | None = Field(None, description="binary_data_size: its bytes after the JSON header")
    data: list | None = Field(None, description="the tensor flattened row-major (files: base64 strings), unless "
                                                "it comes as binary data")


class RequestOutput(BaseModel):
    name: str = Field(description="scores, labels, or predicted (multi-label models)")
    parameters: dict[str, Any] | None = Field(None, description="binary_data (true: as binary data), "
                                                                "classification (the count best, for scores)")


class InferenceRequest(BaseModel):
    id: str | None = Field(None, description="echoed in the reply")
    inputs: list[RequestInput] = Field(min_length=1, max_length=1)
    outputs: list[RequestOutput] | None = Field(None, description="default: every output")
    parameters: dict[str, Any] | None = Field(None, description="binary_data_output: every output as binary data")


class ResponseOutput(BaseModel):
    name: str
    datatype: Literal["FP32", "BYTES", "BOOL"]
    shape: list[int]
    data: list | None = Field(None, description="the tensor flattened row-major, unless sent as binary data")
    parameters: dict[str, Any] | None = Field(None, description="binary_data_size: its bytes after the JSON header")


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str
    outputs: list[ResponseOutput]
    id: str | None = Field(None, description="the request's id, when it sent one")


def request_body_schema(model: type[BaseModel]) -> dict:
    """model's JSON schema with its definitions written in place, for a route's openapi_extra
    requestBody: no route declares model as its body, so the spec's components do not hold it."""
    schema = model.model_json_schema()
    definitions = schema.pop("$defs", {})

    def resolved(node):
        if isinstance(node, dict):
            if "$ref" in node:
                return resolved(definitions[node["$ref"].rsplit("/", 1)[1]])
            return {key: resolved(value) for key, value in node.items()}
        return [resolved(value) for value in node] if isinstance(node, list) else node
    return resolved(schema)


def errors(*statuses: int) -> dict[int, dict]:
    """The `responses` entry of a route refusing with these statuses, each answered as an Error
    (with the header a 405 or 503 always carries)."""
    return {status: {"model": Error, "description": REFUSALS[status],
                     **({"headers": HEADERS[status]} if status in HEADERS else {})} for status in statuses}


REFUSALS = {
    400: "bad input: a corrupt or truncated image, invalid base64 or JSON, a bad option",
    401: "a missing or wrong API key",
    404: "no such resource",
    405: "method not allowed; the Allow header lists those that are",
    413: "too large: the body over the upload limit, too many images, or an image with too many pixels",
    415: "not an image, or a content type the route does not read",
    422: "the request does not match the schema",
    503: "server busy: the queue is full; retry after Retry-After seconds",
}
HEADERS = {
    405: {"Allow": {"description": "the methods the path answers", "required": True, "schema": {"type": "string"}}},
    503: {"Retry-After": {"description": "seconds to wait", "required": True, "schema": {"type": "integer"}}},
}
