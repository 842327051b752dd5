"""Hugging Face's inference protocol, as huggingface_hub.InferenceClient.image_classification speaks it.

The client posts to the URL it is given, unchanged: InferenceClient(model="http://host:8000")
posts to /, model="http://host:8000/v1/classify" to /v1/classify, and both answer it. Without
parameters the body is the raw image (no Content-Type at all, or image/*, or
application/octet-stream); with parameters it is JSON {"inputs": base64, "parameters": {"top_k": k,
"function_to_apply": ...}}. The answer is HF's list [{"label", "score"}, ...], best first; a
top_k in the query string (for curl) counts too, unless the parameters say otherwise.

The scores are the model's probabilities, so function_to_apply may name what they already are
(softmax for a single-label model, sigmoid for a multi-label one); "none" asks for logits, which
not every model has, and is refused.
"""

from __future__ import annotations

import json

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from imgcls.inference.predict import predictions
from imgcls.serving.service import Service
from imgcls.serving.uploads import BadInput, base64_image, whole_number, within

PARAMETERS = ("function_to_apply", "top_k")


class LabelScore(BaseModel):
    label: str
    score: float


async def hf_request(request: Request, limit: int) -> tuple[bytes, dict] | None:
    """The image and parameters of a request in HF's format, or None for one in another format
    (multipart, imgcls's own JSON {"images": [...]}), which the caller reads its own way."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    asked = {"top_k": request.query_params["top_k"]} if "top_k" in request.query_params else {}  # for curl
    if not kind or kind.startswith("image/") or kind == "application/octet-stream":
        data = await request.body()     # bounded by the BodyLimit middleware
        if not data:
            raise BadInput(400, "no image: the request body is empty")
        return within(data, limit, "the request body"), asked
    if kind != "application/json":
        return None
    body = await request.body()
    if b'"inputs"' not in body:         # imgcls's JSON: parsed once, by read_uploads, not twice
        return None
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(payload, dict) or "inputs" not in payload:
        return None
    if not isinstance(payload["inputs"], str):
        raise BadInput(400, "\"inputs\" must be one image as a base64 string")
    parameters = payload.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise BadInput(400, "\"parameters\" must be an object")
    return base64_image(payload["inputs"], limit, "inputs"), {**asked, **parameters}


async def hf_answer(service: Service, data: bytes, parameters: dict) -> list[dict]:
    """HF's [{"label", "score"}, ...] for one image, best first (top_k labels if asked)."""
    unknown = sorted(set(parameters) - set(PARAMETERS))
    if unknown:
        raise BadInput(400, f"unknown parameter(s) {', '.join(unknown)}; valid: {', '.join(PARAMETERS)}")
    scores_are = "sigmoid" if service.task.multi_label else "softmax"
    wanted = parameters.get("function_to_apply")
    if wanted is not None and wanted != scores_are:
        raise BadInput(400, f"function_to_apply {wanted!r}: this model's scores are probabilities by "
                            f"{scores_are}; ask for {scores_are!r} or leave it out")
    k = whole_number(parameters.get("top_k"), service.top_k)
    proba = await service.probabilities(service.decode([("image", data)]))
    found = predictions(proba, service.classes, service.task, k)[0]
    return [{"label": label, "score": score} for label, score in zip(found.labels, found.scores)]


def hf_routes(service: Service) -> APIRouter:
    router = APIRouter()

    @router.post("/", response_model=list[LabelScore], openapi_extra=_HF_BODY,
                 summary="Classify one image in Hugging Face's format (InferenceClient(model=server URL))")
    async def classify_hf(request: Request):
        found = await hf_request(request, service.limits.max_upload_bytes)
        if found is None:
            raise BadInput(415, "POST / takes Hugging Face's format: one image as the raw body (image/* or "
                                "application/octet-stream) or JSON {\"inputs\": base64, \"parameters\": {...}}; "
                                "imgcls's own formats go to /v1/classify")
        return await hf_answer(service, *found)

    return router


async def hf_response(service: Service, found: tuple[bytes, dict]) -> JSONResponse:
    """hf_answer as a response, for a route (/v1/classify) whose own answers have another shape."""
    return JSONResponse(await hf_answer(service, *found))


_HF_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "image/*": {"schema": {"type": "string", "format": "binary"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "application/json": {"schema": {"type": "object", "required": ["inputs"], "properties": {
                "inputs": {"type": "string", "format": "byte", "description": "the image, base64"},
                "parameters": {"type": "object", "additionalProperties": False, "properties": {
                    "top_k": {"type": "integer", "minimum": 1},
                    "function_to_apply": {"type": "string", "enum": ["softmax", "sigmoid"]}}}}}},
        },
    },
    "responses": {"400": {"description": "bad input"}, "413": {"description": "too large"},
                  "415": {"description": "not an image"}, "503": {"description": "busy; see Retry-After"}},
}
