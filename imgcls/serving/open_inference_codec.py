"""KServe's Open Inference Protocol (v2) on the wire: requests in, tensors out; outputs in, replies out.

Tensors travel as JSON "data" (flattened row-major) or with the binary tensor extension:
binary_data_size per input, the JSON header's length in Inference-Header-Content-Length, and the
tensors' bytes after the header (little-endian, row-major; each BYTES element preceded by its
4-byte length). A gzip or deflate request body is inflated within the upload limit. What does
not decode is a BadInput (400, or 413/415), never a 500. The routes, and what each input and
output means, are in imgcls.serving.open_inference.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from dataclasses import dataclass

import numpy as np
from fastapi import Request
from fastapi.responses import JSONResponse, Response

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


# -- writing a reply -----------------------------------------------------------------------------

def reply(model_name: str, outputs: list[tuple[str, str, np.ndarray, bool]], request_id: str | None = None
          ) -> Response:
    """The inference reply for outputs (name, datatype, array, whether it goes as binary data): JSON,
    or with any binary output the JSON header followed by the binary outputs' bytes."""
    header, blobs = [], []
    for name, datatype, array, binary in outputs:
        entry = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if binary:
            raw = _serialized(datatype, array)
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = array.reshape(-1).tolist()
        header.append(entry)
    body = {"model_name": model_name, "model_version": "1", "outputs": header}
    if request_id is not None:
        body["id"] = request_id
    if not blobs:
        return JSONResponse(body)
    text = json.dumps(body).encode()
    return Response(text + b"".join(blobs), media_type="application/octet-stream",
                    headers={HEADER_LENGTH: str(len(text))})


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
