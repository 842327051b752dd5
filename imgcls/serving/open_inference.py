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

Tensors travel as JSON "data" (flattened row-major) or with the binary tensor extension:
binary_data_size per input, the JSON header's length in Inference-Header-Content-Length, and
binary_data (per output) or binary_data_output (per request) for the answer, which is what
tritonclient.http sends unless told otherwise. A gzip or deflate request body is inflated within
the upload limit. Wrong datatype, shape or range, a missing or unknown input or output, and
too many images are 400 JSON {"error": ...}; the size and pixel limits are /v1/classify's.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from dataclasses import dataclass

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from imgcls import __version__
from imgcls.serving.service import Service
from imgcls.serving.uploads import MAX_FILES, BadInput, base64_image, within

HEADER_LENGTH = "Inference-Header-Content-Length"
_NUMPY = {"UINT8": np.dtype("<u1"), "FP32": np.dtype("<f4"), "BOOL": np.dtype("?")}


@dataclass
class Tensor:
    """One input as received: its name, datatype, shape and either raw bytes or JSON data."""
    name: str
    datatype: str
    shape: list[int]
    raw: bytes | None = None
    data: object = None


def v2_routes(service: Service) -> APIRouter:
    router = APIRouter(prefix="/v2", tags=["KServe v2"])

    def model(name: str, version: str) -> None:
        if name != service.name:
            raise BadInput(404, f"unknown model {name!r}; this server serves {service.name!r}")
        if version != "1":
            raise BadInput(404, f"model {name!r} has no version {version!r}; its one version is '1'")

    @router.get("", summary="Server metadata")
    async def server_metadata() -> dict:
        return {"name": "imgcls", "version": __version__, "extensions": ["binary_tensor_data", "classification"]}

    @router.get("/health/live", summary="Liveness")
    async def live() -> dict:
        return {"live": True}

    @router.get("/health/ready", summary="Readiness", responses=_NOT_READY)
    async def ready() -> JSONResponse:
        return JSONResponse({"ready": service.batcher.running}, status_code=200 if service.batcher.running else 503)

    @router.get("/models/{name}", summary="Model metadata", responses=_UNKNOWN)
    async def model_metadata(name: str) -> dict:
        model(name, "1")
        return metadata(service)

    @router.get("/models/{name}/ready", summary="Model readiness", responses={**_UNKNOWN, **_NOT_READY})
    async def model_ready(name: str) -> JSONResponse:
        model(name, "1")
        running = service.batcher.running
        return JSONResponse({"name": name, "ready": running}, status_code=200 if running else 503)

    @router.post("/models/{name}/infer", summary="Inference", openapi_extra=_INFER_BODY)
    async def infer(name: str, request: Request) -> Response:
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


# -- reading a request ---------------------------------------------------------------------------

async def read_request(request: Request, limit: int) -> tuple[dict, bytes]:
    """The JSON header and the binary tensor data after it (empty without the binary extension)."""
    body = inflated(await request.body(), request.headers.get("content-encoding", ""), limit + 64 * 1024)
    declared = request.headers.get(HEADER_LENGTH)
    if declared is None:
        size = len(body)
    elif declared.isdigit() and int(declared) <= len(body):
        size = int(declared)
    else:
        raise BadInput(400, f"{HEADER_LENGTH} {declared!r} is not a length within the body ({len(body)} bytes)")
    try:
        payload = json.loads(body[:size])
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BadInput(400, "the inference request is not valid JSON" +
                       ("" if declared else f" (binary tensor data needs the {HEADER_LENGTH} header)")) from None
    if not isinstance(payload, dict):
        raise BadInput(400, "the inference request must be a JSON object with \"inputs\"")
    return payload, body[size:]


def inflated(body: bytes, encoding: str, limit: int) -> bytes:
    """A gzip or deflate body, inflated no further than limit (a small body can inflate to gigabytes)."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "deflate"):
        raise BadInput(415, f"Content-Encoding {encoding!r} is not supported; use gzip, deflate or none")
    inflater = zlib.decompressobj(31 if encoding == "gzip" else 15)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error:
        raise BadInput(400, f"the body is not valid {encoding} data") from None
    if len(data) > limit:
        raise BadInput(413, f"the inflated request body is over the limit of {limit / 2**20:.0f} MB")
    return data


def one_input(payload: dict, binary: bytes) -> Tensor:
    """The request's one input tensor, its binary data cut from the body (checked, not yet read)."""
    inputs = payload.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise BadInput(400, "the request has no \"inputs\": send one input, files (BYTES), pixels (UINT8) "
                            "or images (FP32)")
    tensors, offset = [], 0
    for spec in inputs:
        tensor, offset = _tensor(spec, binary, offset)
        tensors.append(tensor)
    if offset != len(binary):
        raise BadInput(400, f"{len(binary) - offset} bytes of binary data after the inputs' binary_data_size")
    if len(tensors) > 1:
        raise BadInput(400, f"send one input, not {len(tensors)} ({', '.join(t.name for t in tensors)})")
    tensor = tensors[0]
    expected = {"files": "BYTES", "pixels": "UINT8", "images": "FP32"}
    if tensor.name not in expected:
        raise BadInput(400, f"unknown input {tensor.name!r}; inputs: files (BYTES), pixels (UINT8), images (FP32)")
    if tensor.datatype != expected[tensor.name]:
        raise BadInput(400, f"input {tensor.name!r} is {expected[tensor.name]}, not {tensor.datatype}")
    if not tensor.shape or not 1 <= tensor.shape[0] <= MAX_FILES:
        raise BadInput(400, f"input {tensor.name!r}: shape {tensor.shape} must start with the number of "
                            f"images, 1 to {MAX_FILES}")
    return tensor


def _tensor(spec, binary: bytes, offset: int) -> tuple[Tensor, int]:
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or \
            not isinstance(spec.get("datatype"), str):
        raise BadInput(400, "each input must be an object with \"name\", \"datatype\", \"shape\" and \"data\"")
    name, shape, parameters = spec["name"], spec.get("shape"), spec.get("parameters") or {}
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise BadInput(400, f"input {name!r}: \"shape\" must be a list of whole numbers, not {shape!r}")
    if not isinstance(parameters, dict):
        raise BadInput(400, f"input {name!r}: \"parameters\" must be an object")
    tensor = Tensor(name, spec["datatype"], shape)
    size = parameters.get("binary_data_size")
    if size is None:
        if "data" not in spec:
            raise BadInput(400, f"input {name!r} has neither \"data\" nor a binary_data_size")
        tensor.data = spec["data"]
        return tensor, offset
    if type(size) is not int or size < 0 or offset + size > len(binary):
        raise BadInput(400, f"input {name!r}: binary_data_size {size!r} is more than the "
                            f"{len(binary) - offset} bytes of binary data left")
    tensor.raw = binary[offset:offset + size]
    return tensor, offset + size


def tensor_files(tensor: Tensor, limit: int) -> list[tuple[str, bytes]]:
    """The encoded images of a BYTES input, (name, bytes) each, for service.decode."""
    if len(tensor.shape) != 1:
        raise BadInput(400, f"input 'files' has shape [N], one encoded image per element; not {tensor.shape}")
    names = [f"files[{i}]" for i in range(tensor.shape[0])]
    if tensor.raw is not None:
        found = _byte_elements(tensor.raw)
    elif isinstance(tensor.data, list) and all(isinstance(text, str) for text in tensor.data):
        found = tensor.data
    else:
        raise BadInput(400, "input 'files': JSON \"data\" must be a list of base64 strings, one per image")
    if len(found) != len(names):
        raise BadInput(400, f"input 'files': shape {tensor.shape} but {len(found)} elements")
    if tensor.raw is None:
        return [(name, base64_image(text, limit, name)) for name, text in zip(names, found)]
    return [(name, within(data, limit, name)) for name, data in zip(names, found)]


def _byte_elements(raw: bytes) -> list[bytes]:
    """BYTES binary data: each element a 4-byte little-endian length, then that many bytes."""
    out, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise BadInput(400, "input 'files': binary BYTES data cut inside an element's length")
        (size,) = struct.unpack_from("<I", raw, offset)
        if offset + 4 + size > len(raw):
            raise BadInput(400, "input 'files': binary BYTES data cut inside an element")
        out.append(raw[offset + 4:offset + 4 + size])
        offset += 4 + size
        if len(out) > MAX_FILES:
            break                                   # too many: said by the caller's count check
    return out


def tensor_pixels(tensor: Tensor, chw: tuple[int, int, int]) -> np.ndarray:
    """A UINT8 or FP32 input as uint8 images (N, C, H, W), after its shape and range are checked."""
    shape = [tensor.shape[0], *chw]
    if tensor.shape != shape:
        raise BadInput(400, f"input {tensor.name!r} has shape {tensor.shape}; this model takes [N, {chw[0]}, "
                            f"{chw[1]}, {chw[2]}] ({chw[0]} channels of {chw[1]}x{chw[2]})")
    count, dtype = math.prod(shape), _NUMPY[tensor.datatype]
    if tensor.raw is not None:
        if len(tensor.raw) != count * dtype.itemsize:
            raise BadInput(400, f"input {tensor.name!r}: {len(tensor.raw)} bytes of binary data for shape {shape} "
                                f"of {tensor.datatype} ({count * dtype.itemsize} bytes)")
        values = np.frombuffer(tensor.raw, dtype=dtype)
    else:
        values = _json_numbers(tensor, count)
    if not np.isfinite(values).all() or values.min() < 0 or values.max() > 255:
        raise BadInput(400, f"input {tensor.name!r}: values must be pixels 0..255 (FP32 too, not 0..1)")
    if tensor.datatype == "UINT8" and values.dtype.kind == "f" and not (values == np.round(values)).all():
        raise BadInput(400, "input 'pixels': UINT8 values must be whole numbers")
    return np.rint(values).astype(np.uint8).reshape(shape)


def _json_numbers(tensor: Tensor, count: int) -> np.ndarray:
    try:
        values = np.asarray(tensor.data)
    except ValueError:                              # ragged nesting
        values = np.asarray([], dtype=object)
    if values.dtype.kind not in "iuf" or values.size != count:
        raise BadInput(400, f"input {tensor.name!r}: JSON \"data\" must hold {count} numbers for shape "
                            f"{tensor.shape}, flattened row-major")
    return values.reshape(-1)


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
    header, blobs = [], []
    for spec in asked:
        name, parameters = spec["name"], spec.get("parameters") or {}
        if name not in available:
            raise BadInput(400, f"unknown output {name!r}; outputs: {', '.join(available)}")
        if not isinstance(parameters, dict):
            raise BadInput(400, f"output {name!r}: \"parameters\" must be an object")
        count = parameters.get("classification")
        datatype, array = available[name] if count in (None, 0) else classified(service, proba, name, count)
        entry = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if parameters.get("binary_data", default_binary) is True:
            raw = _serialized(datatype, array)
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = array.reshape(-1).tolist()
        header.append(entry)
    body = {"model_name": service.name, "model_version": "1", "outputs": header}
    if isinstance(payload.get("id"), str):
        body["id"] = payload["id"]
    if not blobs:
        return JSONResponse(body)
    text = json.dumps(body).encode()
    return Response(text + b"".join(blobs), media_type="application/octet-stream",
                    headers={HEADER_LENGTH: str(len(text))})


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


def _serialized(datatype: str, array: np.ndarray) -> bytes:
    """An output's bytes in the binary tensor extension: little-endian, row-major; BYTES elements
    each preceded by their 4-byte length."""
    if datatype != "BYTES":
        return np.ascontiguousarray(array, dtype=_NUMPY[datatype]).tobytes()
    parts = []
    for text in array.reshape(-1):
        data = str(text).encode()
        parts += [struct.pack("<I", len(data)), data]
    return b"".join(parts)


_UNKNOWN = {404: {"description": "unknown model"}}
_NOT_READY = {503: {"description": "not ready"}}
_INFER_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"type": "object", "required": ["inputs"], "properties": {
            "id": {"type": "string"},
            "inputs": {"type": "array", "minItems": 1, "maxItems": 1, "items": {
                "type": "object", "required": ["name", "datatype", "shape"], "properties": {
                    "name": {"type": "string", "enum": ["files", "pixels", "images"]},
                    "datatype": {"type": "string", "enum": ["BYTES", "UINT8", "FP32"]},
                    "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                    "parameters": {"type": "object"},
                    "data": {"type": "array"}}}},
            "outputs": {"type": "array", "items": {"type": "object", "required": ["name"], "properties": {
                "name": {"type": "string"}, "parameters": {"type": "object"}}}},
            "parameters": {"type": "object"}}}}},
    },
    "responses": {"400": {"description": "bad input (datatype, shape, range, names)"},
                  "404": {"description": "unknown model"}, "413": {"description": "too large"},
                  "415": {"description": "not an image"}, "503": {"description": "busy; see Retry-After"}},
}
