"""KServe's Open Inference Protocol (v2), as tritonclient.http and KServe's clients speak it.

    GET  /v2                          server metadata (name, version, extensions)
    GET  /v2/health/live, /ready      200 while the server runs / once it takes requests
    GET  /v2/models/{name}            model metadata: its inputs and outputs (datatype, shape)
    GET  /v2/models/{name}/ready      200 when the model takes requests
    POST /v2/models/{name}/infer      inference

{name} is the one GET /v1/model reports; any other is a 404. Its one version is "1", so each
model route also answers under /v2/models/{name}/versions/1/... A request sends exactly one input,
of one to 32 images:
    files   BYTES [N]           encoded image files (JPEG, PNG, ...): raw bytes in the binary
                                extension, base64 strings in JSON "data"; decoded as /v1/classify does
    pixels  UINT8 [N, C, H, W]  pixels at the model's input size and channels
    images  FP32  [N, C, H, W]  the same on the 0..255 scale (not 0..1), as the ONNX export's
                                input `images` takes them; values are rounded to whole pixels
and gets any of the outputs:
    scores     FP32  [N, classes]  each class's probability, columns in GET /v1/model's order
    labels     BYTES [N, k]        the k best labels, best first (k: the server's top_k)
    predicted  BOOL  [N, classes]  multi-label models only: the labels at or above their thresholds
An output requested with the classification parameter (tritonclient's class_count) comes as Triton's
classification extension: BYTES [N, count] strings "score:index:label", best first.

Tensors travel as JSON "data" (flattened row-major) or with the binary tensor extension
(imgcls.serving.open_inference_codec reads and writes both): binary_data (per output) or
binary_data_output (per request) asks for the answer in binary, which is what tritonclient.http
sends unless told otherwise. Wrong datatype, shape or range, a missing or unknown input or
output, and too many images are 400 JSON {"error": ...}; the size and pixel limits are
/v1/classify's. The requests and replies are pydantic models (imgcls.serving.schemas), so
/openapi.json describes them.
"""


from __future__ import annotations

import numpy as np
from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse, Response

from imgcls import __version__
from imgcls.serving.open_inference_codec import (HEADER_LENGTH, one_input, read_request, reply, tensor_files,
                                                 tensor_pixels)
from imgcls.serving.schemas import (EXAMPLE_PNG, InferenceRequest, InferenceResponse, Live, ModelMetadata, ModelReady,
                                    Ready, ServerMetadata, errors, request_body_schema)
from imgcls.serving.service import Service
from imgcls.serving.uploads import BadInput


def v2_routes(service: Service) -> APIRouter:
    router = APIRouter(prefix="/v2", tags=["KServe v2"])
    # The one name that is not a 404, as the example /docs and schemathesis send first
    name_parameter = Path(description="the model's name, as GET /v1/model reports it", examples=[service.name])

    def model(name: str, version: str) -> None:
        if name != service.name:
            raise BadInput(404, f"unknown model {name!r}; this server serves {service.name!r}")
        if version != "1":
            raise BadInput(404, f"model {name!r} has no version {version!r}; its one version is '1'")

    @router.get("", summary="Server metadata", response_model=ServerMetadata)
    async def server_metadata() -> dict:
        return {"name": "imgcls", "version": __version__, "extensions": ["binary_tensor_data", "classification"]}

    @router.get("/health/live", summary="Liveness", response_model=Live)
    async def live() -> dict:
        return {"live": True}

    @router.get("/health/ready", summary="Readiness", response_model=Ready, responses=_NOT_READY)
    async def ready() -> JSONResponse:
        return JSONResponse({"ready": service.batcher.running}, status_code=200 if service.batcher.running else 503)

    @router.get("/models/{name}", summary="Model metadata", response_model=ModelMetadata,
                responses=errors(404, 422))
    async def model_metadata(name: str = name_parameter) -> dict:
        model(name, "1")
        return metadata(service)

    @router.get("/models/{name}/ready", summary="Model readiness", response_model=ModelReady,
                responses={**errors(404, 422), **_MODEL_NOT_READY})
    async def model_ready(name: str = name_parameter) -> JSONResponse:
        model(name, "1")
        running = service.batcher.running
        return JSONResponse({"name": name, "ready": running}, status_code=200 if running else 503)

    @router.post("/models/{name}/infer", summary="Inference", response_model=None, openapi_extra=_INFER_BODY,
                 responses={200: _INFER_REPLY, **errors(400, 404, 413, 415, 422, 503)})
    async def infer(request: Request, name: str = name_parameter) -> Response:
        return await infer_version(name, "1", request)

    # The same under /versions/{version}, for tritonclient's model_version="1"; out of the docs.
    @router.get("/models/{name}/versions/{version}", include_in_schema=False)
    async def version_metadata(name: str, version: str) -> dict:
        model(name, version)
        return metadata(service)

    @router.get("/models/{name}/versions/{version}/ready", include_in_schema=False)
    async def version_ready(name: str, version: str) -> JSONResponse:
        model(name, version)
        return await model_ready(name)

    @router.post("/models/{name}/versions/{version}/infer", include_in_schema=False)
    async def infer_version(name: str, version: str, request: Request) -> Response:
        model(name, version)
        payload, binary = await read_request(request, service.limits.max_upload_bytes)
        tensor = one_input(payload, binary)
        images = service.decode(tensor_files(tensor, service.limits.max_upload_bytes)) if tensor.name == "files" \
            else tensor_pixels(tensor, input_shape(service))
        proba = await service.probabilities(images)
        return answer(service, payload, proba)

    return router


def input_shape(service: Service) -> tuple[int, int, int]:
    prep = service.model.preprocessing_
    return (prep.channels, *prep.size)


def metadata(service: Service) -> dict:
    """The model's inputs and outputs, as GET /v2/models/{name} reports them (-1: any batch size)."""
    chw, classes = list(input_shape(service)), len(service.classes)
    outputs = [{"name": "scores", "datatype": "FP32", "shape": [-1, classes]},
               {"name": "labels", "datatype": "BYTES", "shape": [-1, service.shown_k]}]
    if service.task.multi_label:
        outputs.append({"name": "predicted", "datatype": "BOOL", "shape": [-1, classes]})
    return {"name": service.name, "versions": ["1"], "platform": "imgcls",
            "inputs": [{"name": "files", "datatype": "BYTES", "shape": [-1]},
                       {"name": "pixels", "datatype": "UINT8", "shape": [-1, *chw]},
                       {"name": "images", "datatype": "FP32", "shape": [-1, *chw]}],
            "outputs": outputs}


# -- the answer ----------------------------------------------------------------------------------

def answer(service: Service, payload: dict, proba: np.ndarray) -> Response:
    """The requested outputs (all by default), in JSON or with the binary tensor extension."""
    available = outputs(service, proba)
    parameters = payload.get("parameters")
    default_binary = isinstance(parameters, dict) and parameters.get("binary_data_output") is True
    asked = payload.get("outputs")
    if asked is None or asked == []:            # none named: all of them, as the protocol says
        asked = [{"name": name} for name in available]
    if not isinstance(asked, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in asked):
        raise BadInput(400, "\"outputs\" must be a list of objects with a \"name\"")
    chosen = []
    for spec in asked:
        name, parameters = spec["name"], spec.get("parameters") or {}
        if name not in available:
            raise BadInput(400, f"unknown output {name!r}; outputs: {', '.join(available)}")
        if not isinstance(parameters, dict):
            raise BadInput(400, f"output {name!r}: \"parameters\" must be an object")
        count = parameters.get("classification")
        datatype, array = available[name] if count in (None, 0) else classified(service, proba, name, count)
        chosen.append((name, datatype, array, parameters.get("binary_data", default_binary) is True))
    return reply(service.name, chosen, payload["id"] if isinstance(payload.get("id"), str) else None)


def outputs(service: Service, proba: np.ndarray) -> dict[str, tuple[str, np.ndarray]]:
    """Every output this model gives, by name: (datatype, array)."""
    order = np.argsort(-proba, axis=1, kind="stable")[:, :service.shown_k]
    labels = np.array([[service.classes[j] for j in row] for row in order], dtype=object)
    found = {"scores": ("FP32", proba.astype(np.float32)), "labels": ("BYTES", labels)}
    if service.task.multi_label:
        found["predicted"] = ("BOOL", service.task.decide(proba).astype(bool))
    return found


def classified(service: Service, proba: np.ndarray, name: str, count) -> tuple[str, np.ndarray]:
    """Triton's classification extension: the count best classes as "score:index:label", best first."""
    if name != "scores":
        raise BadInput(400, f"output {name!r}: classification applies to 'scores' only")
    if type(count) is not int or count < 1:
        raise BadInput(400, f"output 'scores': classification must be a whole number of at least 1, not {count!r}")
    order = np.argsort(-proba, axis=1, kind="stable")[:, :count]
    rows = [[f"{p[j]:f}:{j}:{service.classes[j]}" for j in row] for row, p in zip(order, proba)]
    return "BYTES", np.array(rows, dtype=object)


_NOT_READY = {503: {"model": Ready, "description": "not ready"}}
_MODEL_NOT_READY = {503: {"model": ModelReady, "description": "not ready"}}
_INFER_BODY = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": request_body_schema(InferenceRequest),
    # one encoded image (the 8x8 PNG of /v1/classify's example): what /docs's "Try it out" sends first
    "example": {"inputs": [{"name": "files", "datatype": "BYTES", "shape": [1], "data": [EXAMPLE_PNG]}]}}}}}
_INFER_REPLY = {
    "model": InferenceResponse,
    "description": "the outputs as JSON; with binary outputs, the JSON header (its length in "
                   "Inference-Header-Content-Length) followed by their bytes",
    "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    "headers": {HEADER_LENGTH: {"description": "with binary outputs: the length of the JSON header",
                                "required": False, "schema": {"type": "integer", "minimum": 0}}},
}
