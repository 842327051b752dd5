"""The HTTP API (FastAPI on uvicorn) and the web page.

    GET  /            the drag-and-drop page (self-contained: no CDN, no web fonts)
    GET  /healthz     liveness
    GET  /v1/model    model name, classes, task and thresholds, input size, metrics, limits
    POST /v1/classify images as multipart field `file` (repeatable) or JSON {"images": [base64, ...]};
                      explain=true (query, form field or JSON key) adds heatmaps, explain_method picks the method

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
a non-image 415, a truncated or corrupt image 400, a full queue 503 with Retry-After. The server
never fetches URLs on a client's behalf.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import copy
import io
import json
import threading
import time
from contextlib import asynccontextmanager
from importlib import resources

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from PIL import Image, UnidentifiedImageError
from starlette.exceptions import HTTPException as StarletteHTTPException

from imgcls.data.images import UnreadableImage, decode_image, probe_image
from imgcls.errors import ImgclsError
from imgcls.explain import METHODS
from imgcls.inference.predict import predictions, ranked_k
from imgcls.serving.batcher import MicroBatcher, Overloaded

MAX_FILES = 32


class BadInput(Exception):
    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def create_app(model, *, max_batch: int = 32, max_wait_ms: float = 5.0, queue_size: int = 256,
               max_upload_bytes: int = 20 * 1024 * 1024, max_pixels: int = 40_000_000,
               top_k: int | None = None) -> FastAPI:
    """An ASGI app serving `model` (any imgcls classifier, saved, pretrained or exported).

    top_k: labels ranked per result unless a request asks; None for 5 (single-label) or every
    label (multi-label)."""
    # A model that abstains answers (probabilities, rejection scores) per batch; see imgcls.models.abstention.
    abstention = getattr(model, "abstention_", None)
    batcher = MicroBatcher(model.predict_proba if abstention is None else model.predict_with_rejection,
                           max_batch=max_batch, max_wait_ms=max_wait_ms, queue_size=queue_size)
    name = getattr(model, "model_name", "model")
    task, classes = model.task_, model.class_names_
    shown_k = ranked_k(task, len(classes), top_k)
    explainer = Explainer(model)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="imgcls", version="1", lifespan=lifespan,
                  description=f"Image classification with {name}: POST images to /v1/classify.")
    app.state.batcher = batcher
    app.add_middleware(BodyLimit, max_bytes=max_upload_bytes + 64 * 1024)   # + multipart framing
    _add_error_handlers(app)
    page = resources.files("imgcls.serving").joinpath("static/index.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> str:
        return page

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok", "queued": batcher.queue.qsize(), "batches": batcher.batches}

    @app.get("/v1/model")
    async def describe() -> dict:
        prep = model.preprocessing_
        thresholds = task.threshold_vector(len(classes)).tolist() if task.multi_label else None
        return {"name": name, "classes": classes, "num_classes": len(classes), "task": task.kind,
                "thresholds": thresholds, "input_size": list(prep.size), "channels": prep.channels,
                "metrics": getattr(model, "metrics_", {}), "max_upload_bytes": max_upload_bytes,
                "top_k": shown_k, "explains": explainer.kind,
                "abstention": None if abstention is None else
                {key: abstention.to_dict()[key] for key in ("score", "threshold", "accept")}}

    @app.post("/v1/classify", openapi_extra=_CLASSIFY_BODY)
    async def classify(request: Request) -> dict:
        start = time.perf_counter()
        uploads, k, options = await _read_uploads(request, max_upload_bytes, top_k)
        images = np.stack([_decode(data, filename, model.preprocessing_, max_pixels) for filename, data in uploads])
        try:
            answer = await batcher.submit(images)
        except Overloaded:
            raise BadInput(503, "server busy: too many images waiting; try again shortly", {"Retry-After": "1"})
        proba, rejection = answer if abstention is not None else (answer, None)
        results = [{"filename": filename, **p.body()}
                   for (filename, _), p in zip(uploads, predictions(proba, classes, task, k, None, rejection, abstention))]
        if _flag(options.get("explain"), "explain"):
            sizes = [_photo_size(data) for _, data in uploads]
            heatmaps = await asyncio.to_thread(explainer.heatmaps, images, sizes, options.get("explain_method"))
            for result, found in zip(results, heatmaps):
                result["explanations"] = found
        return {"model": name, "time_ms": (time.perf_counter() - start) * 1000, "results": results}

    return app


class Explainer:
    """Heatmaps for /v1/classify?explain=true, one request at a time (Grad-CAM hooks into the
    network). A network is explained through its own copy, so the hooks never meet the batcher's
    forward passes on the served one."""

    def __init__(self, model):
        self.model, self.kind = model, getattr(model, "explained_by", None)
        self._own, self._lock = None, threading.Lock()

    def heatmaps(self, images: np.ndarray, sizes: list[tuple[int, int]], method: str | None) -> list[list[dict]]:
        """Per image its explanations, each with a base64 PNG heatmap in the frame of the photo
        (width, height as uploaded)."""
        from imgcls.explain import explain
        from imgcls.explain.render import heatmap_over_photo, png_bytes
        if self.kind is None:
            raise BadInput(400, "this model cannot explain its predictions (an exported model has no gradients); "
                                "serve the saved model to use explain=true")
        with self._lock:
            if self._own is None:
                self._own = copy.deepcopy(self.model) if self.kind == "network" else self.model
            try:
                found = explain(self._own, images, method=method or None)
            except ImgclsError as exc:
                raise BadInput(400, str(exc)) from None
        out: list[list[dict]] = [[] for _ in images]
        for e in found:
            png = png_bytes(heatmap_over_photo(e.map, sizes[e.image], self.model.preprocessing_))
            out[e.image].append({"label": e.target, "score": e.score, "method": e.method, "layer": e.layer,
                                 "above_threshold": e.above_threshold, "heatmap": base64.b64encode(png).decode()})
        return out


def _photo_size(data: bytes) -> tuple[int, int]:
    """(width, height) of an uploaded photo as shown upright (after its EXIF rotation)."""
    height, width, _ = probe_image(io.BytesIO(data))
    return width, height


def _flag(value, name: str) -> bool:
    if value is None or value == "" or value is False:
        return False
    text = str(value).lower()
    if text not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
        raise BadInput(400, f"{name} must be true or false, not {value!r}")
    return text in ("true", "1", "yes", "on")


OPTIONS = ("explain", "explain_method")


async def _read_uploads(request: Request, limit: int, default_k: int | None
                        ) -> tuple[list[tuple[str, bytes]], int | None, dict]:
    """The uploads, top_k, and the options (explain, explain_method) from the query, the form or the JSON body."""
    kind = request.headers.get("content-type", "")
    k = _int(request.query_params.get("top_k"), default_k)
    options = {key: request.query_params[key] for key in OPTIONS if key in request.query_params}
    if kind.startswith("multipart/form-data"):
        form = await request.form(max_files=MAX_FILES, max_part_size=limit + 1)
        files = form.getlist("file")
        k = _int(form.get("top_k"), k)
        options.update({key: form[key] for key in OPTIONS if isinstance(form.get(key), str)})
        uploads = []
        for item in files:
            if isinstance(item, str):
                raise BadInput(400, "the form field 'file' must hold a file upload")
            data = await item.read(limit + 1)
            uploads.append((item.filename or "upload", _within(data, limit, item.filename)))
    elif kind.startswith("application/json"):
        uploads, k, given = _json_images(await request.body(), limit, k)
        options.update(given)
    else:
        raise BadInput(415, "send images as multipart/form-data (field 'file') or JSON {\"images\": [base64, ...]}")
    if not uploads:
        raise BadInput(400, "no image: send at least one file in the form field 'file'")
    if len(uploads) > MAX_FILES:
        raise BadInput(413, f"too many images in one request ({len(uploads)}); the limit is {MAX_FILES}")
    return uploads, k, options


def _json_images(body: bytes, limit: int, k: int | None) -> tuple[list[tuple[str, bytes]], int | None, dict]:
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BadInput(400, "the body is not valid JSON") from None
    images = payload.get("images") if isinstance(payload, dict) else None
    if not isinstance(images, list) or not all(isinstance(i, str) for i in images):
        raise BadInput(400, "JSON body must be {\"images\": [base64 strings], \"top_k\": k}")
    uploads = []
    for i, text in enumerate(images):
        text = text.split(",", 1)[1] if text.startswith("data:") else text   # data URLs are fine too
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise BadInput(400, f"images[{i}] is not valid base64") from None
        uploads.append((f"images[{i}]", _within(data, limit, f"images[{i}]")))
    options = {key: payload[key] for key in OPTIONS if key in payload}
    return uploads, _int(payload.get("top_k"), k), options


def _within(data: bytes, limit: int, filename) -> bytes:
    if len(data) > limit:
        raise BadInput(413, f"{filename}: larger than the {limit / 2**20:.0f} MB limit")
    return data


def _decode(data: bytes, filename: str, prep, max_pixels: int) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > max_pixels:
                raise BadInput(413, f"{filename}: {img.width}x{img.height} pixels is over the limit of {max_pixels:,}")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        pass   # decode_image below gives the precise reason
    try:
        return decode_image(data, prep)
    except UnreadableImage as exc:
        reason = str(exc)
        status = 415 if reason == "not an image file" else 413 if reason.startswith("too many pixels") else 400
        raise BadInput(status, f"{filename}: {reason}") from None


def _int(value, default: int | None) -> int | None:
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number < 1:
        raise BadInput(400, f"top_k must be a whole number of at least 1, not {value!r}")
    return number


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(BadInput)
    async def bad_input(request: Request, exc: BadInput) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)


class BodyLimit:
    """ASGI middleware: refuse request bodies over max_bytes with 413, from Content-Length when
    given, else as soon as the streamed body passes the limit, so no upload is read whole first."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(send)
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _TooLarge
            return message
        try:
            await self.app(scope, limited_receive, send)
        except _TooLarge:
            await self._refuse(send)

    async def _refuse(self, send) -> None:
        body = json.dumps({"error": f"request body over the limit of {self.max_bytes / 2**20:.0f} MB"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass


_EXPLAIN_FIELDS = {
    "explain": {"type": "boolean", "description": "add a heatmap per image (base64 PNG) under explanations"},
    "explain_method": {"type": "string", "enum": list(METHODS),
                       "description": "default: gradcam for networks, the model's own for kNN and linear"},
}
_CLASSIFY_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": {"type": "object", "properties": {
                "file": {"type": "array", "items": {"type": "string", "format": "binary"}},
                "top_k": {"type": "integer", "minimum": 1}, **_EXPLAIN_FIELDS}, "required": ["file"]}},
            "application/json": {"schema": {"type": "object", "properties": {
                "images": {"type": "array", "items": {"type": "string", "format": "byte"}},
                "top_k": {"type": "integer", "minimum": 1}, **_EXPLAIN_FIELDS}, "required": ["images"]}},
        },
    },
    "responses": {"400": {"description": "bad input"}, "413": {"description": "too large"},
                  "415": {"description": "not an image"}, "503": {"description": "busy; see Retry-After"}},
}
