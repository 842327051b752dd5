"""The HTTP API (FastAPI on uvicorn) and the web page.

    GET  /            the drag-and-drop page (self-contained: no CDN, no web fonts)
    GET  /healthz     liveness
    GET  /v1/model    model name, classes, task and thresholds, input size, metrics, limits
    GET  /metrics     Prometheus text format (OpenMetrics if the Accept header asks): requests by
                      route template and status, latency, micro-batch sizes, queue depth
    GET  /docs        Swagger UI over /openapi.json; its files ship with the server
                      (fastapi-offline), so it works with no internet
    POST /v1/classify images as multipart field `file` (repeatable) or JSON {"images": [base64, ...]};
                      explain=true (query, form field or JSON key) adds heatmaps, explain_method picks the method;
                      one raw image body, or {"inputs": base64, "parameters": {...}}, is Hugging Face's format
    POST /            Hugging Face's format only: what InferenceClient(model="http://host:port") posts;
                      answers [{"label", "score"}, ...], best first (imgcls.serving.hf)
    GET  /v2, /v2/health/live, /v2/health/ready, /v2/models/{name}, /v2/models/{name}/ready
    POST /v2/models/{name}/infer
                      KServe's Open Inference Protocol v2, JSON or binary tensors: input files (BYTES,
                      encoded images), pixels (UINT8 [N, C, H, W]) or images (FP32 [N, C, H, W], 0..255);
                      outputs scores (FP32 [N, classes]), labels (BYTES [N, k]) and, multi-label,
                      predicted (BOOL); {name} is GET /v1/model's name (imgcls.serving.open_inference)

The app is assembled here from its parts: uploads (reading and limits), limits (refusals as
JSON), service (model, batcher and limits shared by every protocol) and one module of routes
per protocol (v1, hf, v2); metrics and docs add /metrics and /docs. Every reply has a pydantic model in
schemas, so /openapi.json says exactly what is sent.

A result ranks labels by score under "predictions": the top_k best (default 5) for a single-label
model; for a multi-label model every label (or the top_k a request asks for), and "labels" lists
the ones at or above their thresholds, best first, which is what the model predicts. A model
that abstains adds "label": "unknown" for an image too unlike its training data (else its best
class) and the image's "rejection_score"; /v1/model gives its score, threshold and acceptance.

With explain=true each result also has "explanations" (imgcls.explain: the predicted class, or
each label above its threshold), each {"label", "score", "method", "layer", "heatmap"}: the
heatmap a base64 PNG with the photo's own aspect ratio, transparent outside the part of the photo
the model saw, so that laid over the photo it covers what the model looked at.

Bad input is a 4xx with a JSON {"error": ...}, never a 500: a request over the upload limit
(default 20 MB for all its images together) is 413, refused from its Content-Length or while
streaming, before it is all read; too many pixels 413,
a non-image 415, a truncated or corrupt image 400, a full queue 503 with Retry-After. The same
limits hold for every protocol; a v2 request with a wrong datatype, shape or range, an unknown
input or output, or over 32 images is a 400, an unknown model name a 404. A wrong method is
405 with Allow, parameters that a route's declared types refuse 422. The server never fetches
URLs on a client's behalf.

With an API key, every endpoint but the health checks, the page and the docs answers 401 without
`Authorization: Bearer KEY`; CORS is off unless origins are named (imgcls.serving.security).
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import asynccontextmanager

from fastapi import FastAPI

from imgcls.serving import defaults
from imgcls.serving.docs import add_docs
from imgcls.serving.hf import hf_routes
from imgcls.serving.limits import BodyLimit, add_error_handlers
from imgcls.serving.metrics import add_metrics
from imgcls.serving.security import secure
from imgcls.serving.service import Limits, Service
from imgcls.serving.v1 import v1_routes
from imgcls.serving.open_inference import v2_routes


def create_app(model, *, max_batch: int = defaults.MAX_BATCH, max_wait_ms: float = defaults.MAX_WAIT_MS,
               queue_size: int = defaults.QUEUE_SIZE, max_upload_bytes: int = defaults.MAX_UPLOAD_BYTES,
               max_pixels: int = defaults.MAX_PIXELS, top_k: int | None = None, api_key: str | None = None,
               cors_origins: Iterable[str] = ()) -> FastAPI:
    """An ASGI app serving `model` (any imgcls classifier, saved, pretrained or exported).

    top_k: labels ranked per result unless a request asks; None for 5 (single-label) or every
    label (multi-label). api_key: required as `Authorization: Bearer KEY` by every endpoint but
    the health checks, the page and the docs (imgcls.serving.security). cors_origins: the origins
    whose pages may call the API from a browser; none by default."""
    service = Service.create(model, max_batch=max_batch, max_wait_ms=max_wait_ms, queue_size=queue_size,
                             limits=Limits(max_upload_bytes, max_pixels), top_k=top_k)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.batcher.start()
        yield
        await service.batcher.stop()

    app = FastAPI(title="imgcls", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,   # add_docs: offline
                  description=f"Image classification with {service.name}: POST images to /v1/classify.")
    app.state.service, app.state.batcher = service, service.batcher
    app.add_middleware(BodyLimit, max_bytes=max_upload_bytes + 64 * 1024)   # + multipart framing
    add_metrics(app, service)        # outside BodyLimit, so that its refusals are counted too
    add_error_handlers(app)
    add_docs(app)
    app.include_router(v1_routes(service))
    app.include_router(hf_routes(service))
    app.include_router(v2_routes(service))
    secure(app, api_key, cors_origins)              # last: outermost, before anything reads a body
    return app
