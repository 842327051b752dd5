"""Letting in only who belongs: the API key, CORS, and what the OpenAPI schema says of them.

With an API key every request must carry `Authorization: Bearer KEY`, except those to the paths in
OPEN_PATHS and under OPEN_PREFIXES. The check is ASGI middleware in front of every route, so a
route added later is protected without saying so; opening one means adding it here.

Open, and why:
- the health checks (/healthz, /v2/health/live, /v2/health/ready): load balancers and
  orchestrators probe them without credentials, and they tell nothing about the model;
- the page `/` (self-contained, so it has no assets of its own): it must load to ask for the key,
  and it holds no data; everything it shows comes from protected endpoints;
- /docs, /redoc, /openapi.json and the docs' own files (/docs-assets/): the API's shape is no
  secret (it is the same for every imgcls server), and Swagger UI's "Authorize" button needs the
  schema to send the key. The model's name, classes and metrics are under /v1/model, protected.

A key in the URL (?api_key=, ?key=, ?token=, ?access_token=) is refused with 400 even when it is
right: URLs end up in access logs, proxies and browser history, so the client must learn to send
the header instead.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Iterable
from urllib.parse import parse_qsl

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from imgcls.errors import ImgclsError

OPEN_PATHS = frozenset({"/healthz", "/v2/health/live", "/v2/health/ready",
                        "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
OPEN_PREFIXES = ("/docs/", "/docs-assets/")
KEY_PARAMETERS = frozenset({"api_key", "apikey", "key", "token", "access_token"})

_KEY_CHARS = re.compile(r"[\x21-\x7e]+")              # visible ASCII: what an HTTP header carries as is
_ORIGIN = re.compile(r"https?://[^/\s?#]+")


def is_open(path: str, method: str = "GET") -> bool:
    """Whether `path` is answered without a key. The page (GET /) is open so that it can ask for
    the key; POST / is Hugging Face's classify endpoint and needs it."""
    if path == "/":
        return method in ("GET", "HEAD")
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


def check_api_key(key: str) -> str:
    """`key` if it can be sent in a header; a one-line error otherwise. An empty key is refused,
    not read as "no key": a server that was meant to be locked must not start open."""
    if not key:
        raise ImgclsError("the API key is empty: give a key, or none at all for an open server")
    if not _KEY_CHARS.fullmatch(key):
        raise ImgclsError("the API key must be printable ASCII without spaces, as HTTP headers carry it")
    return key


def check_origins(origins: Iterable[str]) -> list[str]:
    """CORS origins as browsers send them (scheme://host[:port], or *), refusing near misses such as
    a trailing slash or a path, which would never match and leave the origin silently refused."""
    origins = list(origins)
    for origin in origins:
        if origin != "*" and not _ORIGIN.fullmatch(origin):
            raise ImgclsError(f"--cors-origin {origin!r} is not an origin: give scheme://host[:port] with no path "
                              f"or trailing slash, e.g. https://example.com, or *")
    return origins


class BearerAuth:
    """ASGI middleware: every request outside the open paths must carry `Authorization: Bearer KEY`.

    The key is compared in constant time, over SHA-256 digests so that not even its length leaks
    through timing. Missing or wrong: 401 JSON with WWW-Authenticate (RFC 6750). The body is never
    read before the key is checked."""

    def __init__(self, app, api_key: str):
        self.app = app
        self.digest = hashlib.sha256(check_api_key(api_key).encode()).digest()

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        if _key_in_query(scope.get("query_string", b"")):
            return await _refuse(scope, send, 400, "do not put the API key in the URL (it ends up in logs): "
                                                   "send it as the header Authorization: Bearer KEY", None)
        if is_open(_route_path(scope), scope.get("method", "GET")):
            return await self.app(scope, receive, send)
        token = _bearer_token(scope)
        if token is None:
            return await _refuse(scope, send, 401, "this server needs an API key: send Authorization: Bearer KEY",
                                 b'Bearer realm="imgcls"')
        if not hmac.compare_digest(hashlib.sha256(token).digest(), self.digest):
            return await _refuse(scope, send, 401, "wrong API key",
                                 b'Bearer realm="imgcls", error="invalid_token"')
        return await self.app(scope, receive, send)


def _route_path(scope) -> str:
    """The path the router matches: without the prefix a proxy mounts the app under (uvicorn
    --root-path), as Starlette's own get_route_path strips it, so that /healthz stays open there."""
    path, root = scope["path"], scope.get("root_path", "")
    if root and path.startswith(root + "/"):
        return path[len(root):]
    return path


def _bearer_token(scope) -> bytes | None:
    """The token of an `Authorization: Bearer TOKEN` header (the scheme is case-insensitive), or None."""
    for name, value in scope.get("headers") or []:
        if name == b"authorization":
            scheme, _, token = value.strip().partition(b" ")
            token = token.strip()
            return token if scheme.lower() == b"bearer" and token else None
    return None


def _key_in_query(query: bytes) -> bool:
    return any(name.lower() in KEY_PARAMETERS
               for name, _ in parse_qsl(query.decode("latin-1"), keep_blank_values=True))


async def _refuse(scope, send, status: int, message: str, challenge: bytes | None) -> None:
    if scope["type"] == "websocket":
        # Closing before accepting makes the server answer the handshake with 403.
        return await send({"type": "websocket.close", "code": 1008})
    headers = [(b"content-type", b"application/json")]
    if challenge is not None:
        headers.append((b"www-authenticate", challenge))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": json.dumps({"error": message}).encode()})


def secure(app: FastAPI, api_key: str | None, cors_origins: Iterable[str]) -> None:
    """Add the key check and CORS to `app`, outermost: add this after every other middleware, so a
    request without the key is refused before anything reads its body, and CORS headers reach the
    401s too. Without a key and without origins the app is left as it is."""
    origins = check_origins(cors_origins)
    if api_key is not None:
        app.add_middleware(BearerAuth, api_key=api_key)
        _document_bearer(app)
    if origins:
        # No cookies are involved (the key travels in a header), so credentials stay off.
        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"], expose_headers=["Retry-After"])


def _document_bearer(app: FastAPI) -> None:
    """Say in the OpenAPI schema that protected operations need the bearer key, so Swagger UI
    offers "Authorize" and clients generated from the schema send it."""
    generate = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()
        schema.setdefault("components", {}).setdefault("securitySchemes", {})["apiKey"] = {
            "type": "http", "scheme": "bearer", "description": "the server's API key (imgcls serve --api-key)"}
        for path, operations in schema.get("paths", {}).items():
            if is_open(path):
                continue
            for operation in operations.values():
                if isinstance(operation, dict) and "responses" in operation:
                    operation["security"] = [{"apiKey": []}]
                    operation["responses"].setdefault("401", {"description": "missing or wrong API key"})
        return schema

    app.openapi = openapi
