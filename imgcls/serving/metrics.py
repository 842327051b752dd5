"""GET /metrics: the server's counters in the Prometheus text format (prometheus-client).

    imgcls_requests_total{method, path, status}          requests answered, by route template
    imgcls_request_duration_seconds{method, path}        latency, from the request's first byte to its last
    imgcls_batch_size                                    images per forward pass of the micro-batcher
    imgcls_queue_depth                                   requests waiting for the micro-batcher now

Each app has its own CollectorRegistry, so several apps in one process (tests, or a server
embedding two models) never count into each other. The path label is the route's template
(/v2/models/{name}/infer), never the raw path, so a client cannot grow the label set without bound;
path="<unmatched>" counts what was answered before any route was chosen: unknown paths (404), and
bodies refused from their Content-Length alone (413), which the body limit answers before routing.
"""

from __future__ import annotations

import time

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder
from starlette.routing import Match, Route

from imgcls.serving.service import Service

UNMATCHED = "<unmatched>"


class Metrics:
    """The app's collectors; the batcher's on_batch hook feeds batch_size."""

    def __init__(self, max_batch: int):
        self.registry = CollectorRegistry()
        self.requests = Counter("imgcls_requests", "HTTP requests answered, by route template and status",
                                ["method", "path", "status"], registry=self.registry)
        self.latency = Histogram("imgcls_request_duration_seconds", "Time to answer a request",
                                 ["method", "path"], registry=self.registry)
        self.batch_size = Histogram("imgcls_batch_size", "Images per forward pass of the micro-batcher",
                                    buckets=_powers_of_two(max_batch), registry=self.registry)
        self.queue_depth = Gauge("imgcls_queue_depth", "Requests waiting for the micro-batcher",
                                 registry=self.registry)

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """The registry's samples as the client asked (OpenMetrics or Prometheus text) and its content type."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


def _powers_of_two(top: int) -> list[float]:
    """1, 2, 4, ... up to the largest batch the batcher forms (a request with more images than
    max_batch still runs whole, so the +Inf bucket catches those)."""
    buckets, size = [], 1
    while size < top:
        buckets.append(float(size))
        size *= 2
    return buckets + [float(top), float("inf")]


class MetricsMiddleware:
    """ASGI middleware counting every answer, refusals by the middlewares inside it included."""

    def __init__(self, app, metrics: Metrics, routes: list):
        self.app, self.metrics, self.routes = app, metrics, routes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status, counted = time.perf_counter(), 500, False   # an exception that escapes is a 500
        root = scope.get("root_path", "")

        def count() -> None:
            nonlocal counted
            counted, path = True, self._template(scope, root)
            self.metrics.requests.labels(scope["method"], path, str(status)).inc()
            self.metrics.latency.labels(scope["method"], path).observe(time.perf_counter() - start)

        async def send_and_note(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                count()     # before the last byte goes out, so a client that has its answer sees it counted
            await send(message)
        try:
            await self.app(scope, receive, send_and_note)
        finally:
            if not counted:
                count()

    def _template(self, scope, root: str) -> str:
        """The template of the route that answered. APIRoutes leave themselves in scope["route"]; an
        app mounted under a prefix (the docs' files) adds that prefix to root_path; the app's own
        plain routes (/openapi.json, /docs) are found by matching them again."""
        path = getattr(scope.get("route"), "path", None)
        if path:
            return path
        mounted = scope.get("root_path", "")[len(root):]
        if mounted:
            return mounted + "/{path}"
        for route in self.routes:
            if isinstance(route, Route) and route.matches(scope)[0] is not Match.NONE:
                return route.path
        return UNMATCHED


def add_metrics(app: FastAPI, service: Service) -> Metrics:
    """Count app's requests and service's batches, and serve them at GET /metrics."""
    metrics = Metrics(service.batcher.max_batch)
    service.batcher.on_batch.append(metrics.batch_size.observe)
    metrics.queue_depth.set_function(service.batcher.queue.qsize)
    app.add_middleware(MetricsMiddleware, metrics=metrics, routes=app.router.routes)
    app.include_router(metrics_routes(metrics))
    return metrics


def metrics_routes(metrics: Metrics) -> APIRouter:
    router = APIRouter()

    @router.get("/metrics", response_class=Response, summary="Prometheus metrics",
                responses={200: {"description": "the Prometheus text format, or OpenMetrics when the Accept "
                                                "header asks for it",
                                 "content": {"text/plain": {"schema": {"type": "string"}},
                                             "application/openmetrics-text": {"schema": {"type": "string"}}}}})
    async def scrape(request: Request) -> Response:
        body, content_type = metrics.exposition(request.headers.get("accept"))
        return Response(body, media_type=content_type)

    return router
