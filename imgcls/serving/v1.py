"""imgcls's own protocol: the page, health, the model's description and /v1/classify."""

from __future__ import annotations

import asyncio
import time
from importlib import resources

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from imgcls.explain import METHODS
from imgcls.inference.predict import predictions
from imgcls.serving.hf import hf_request, hf_response
from imgcls.serving.schemas import EXAMPLE_PNG, ClassifyReply, Health, ModelInfo, errors
from imgcls.serving.service import Service
from imgcls.serving.uploads import MAX_FILES, flag, photo_size, read_uploads


def v1_routes(service: Service) -> APIRouter:
    router = APIRouter()
    page = resources.files("imgcls.serving").joinpath("static/index.html").read_text(encoding="utf-8")

    @router.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> str:
        return page

    @router.get("/healthz", response_model=Health)
    async def healthz() -> dict:
        return {"status": "ok", "queued": service.batcher.queue.qsize(), "batches": service.batcher.batches}

    @router.get("/v1/model", response_model=ModelInfo)
    async def describe() -> dict:
        return service.describe()

    # exclude_unset: a single-label result has no "labels", one without explain=true no "explanations"
    @router.post("/v1/classify", response_model=ClassifyReply, response_model_exclude_unset=True,
                 responses=errors(400, 413, 415, 422, 503), openapi_extra=_CLASSIFY_BODY)
    async def classify(request: Request) -> dict:
        start = time.perf_counter()
        if (hf := await hf_request(request, service.limits.max_upload_bytes)) is not None:
            return await hf_response(service, hf)      # Hugging Face's client: its format in and out
        uploads, k, options = await read_uploads(request, service.limits.max_upload_bytes, service.top_k)
        images = service.decode(uploads)
        proba, rejection = await service.answers(images)
        found = predictions(proba, service.classes, service.task, k, None, rejection, service.abstention)
        results = [{"filename": filename, **p.body()} for (filename, _), p in zip(uploads, found)]
        if flag(options.get("explain"), "explain"):
            sizes = [photo_size(data) for _, data in uploads]
            heatmaps = await asyncio.to_thread(service.explainer.heatmaps, images, sizes,
                                               options.get("explain_method"))
            for result, found in zip(results, heatmaps):
                result["explanations"] = found
        return {"model": service.name, "time_ms": (time.perf_counter() - start) * 1000, "results": results}

    return router


_EXPLAIN_FIELDS = {
    "explain": {"type": "boolean", "description": "add a heatmap per image (base64 PNG) under explanations"},
    "explain_method": {"type": "string", "enum": list(METHODS),
                       "description": "default: gradcam for networks, the model's own for kNN and linear"},
}
_CLASSIFY_BODY = {
    # the query may carry the options too (a form field or JSON key of the same name wins)
    "parameters": [{"name": "top_k", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 1}},
                   *({"name": name, "in": "query", "required": False, "schema": schema}
                     for name, schema in _EXPLAIN_FIELDS.items())],
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": {"type": "object", "properties": {
                "file": {"type": "array", "items": {"type": "string", "format": "binary"},
                         "minItems": 1, "maxItems": MAX_FILES},
                "top_k": {"type": "integer", "minimum": 1}, **_EXPLAIN_FIELDS}, "required": ["file"]}},
            "application/json": {"schema": {"type": "object", "properties": {
                "images": {"type": "array", "items": {"type": "string", "format": "byte"},
                           "minItems": 1, "maxItems": MAX_FILES},
                "top_k": {"type": "integer", "minimum": 1}, **_EXPLAIN_FIELDS}, "required": ["images"]},
                "example": {"images": [EXAMPLE_PNG], "top_k": 3}},
        },
    },
}
