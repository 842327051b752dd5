"""GET /docs: Swagger UI over /openapi.json, working offline.

FastAPI's own page loads its script from a CDN, so on a machine without internet it is blank.
This serves the same page with Swagger UI's files from the fastapi-offline package (MIT; it ships
swagger-ui-dist 5, which reads OpenAPI 3.1), so nothing outside the server is fetched. ReDoc is
left out: its bundle still loads its logo from its own CDN.
"""

from __future__ import annotations

from importlib import resources

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS = "/docs-assets"


def add_docs(app: FastAPI, docs_url: str = "/docs") -> None:
    """Serve Swagger UI at docs_url from local files (create the app with docs_url=None,
    redoc_url=None so that FastAPI's CDN pages are not routed at all)."""
    folder = resources.files("fastapi_offline") / "static"
    app.mount(ASSETS, StaticFiles(directory=str(folder)), name="docs-assets")
    oauth2_redirect = docs_url + "/oauth2-redirect"

    @app.get(docs_url, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = _root(request)
        # validatorUrl None: Swagger UI would otherwise send the spec to validator.swagger.io
        return get_swagger_ui_html(openapi_url=root + app.openapi_url, title=f"{app.title}: API",
                                   swagger_js_url=f"{root}{ASSETS}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{root}{ASSETS}/swagger-ui.css",
                                   swagger_favicon_url=f"{root}{ASSETS}/favicon.png",
                                   oauth2_redirect_url=root + oauth2_redirect,
                                   swagger_ui_parameters={"validatorUrl": None})

    @app.get(oauth2_redirect, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()


def _root(request: Request) -> str:
    """The prefix a reverse proxy mounts the app under (uvicorn --root-path), as FastAPI's own page uses it."""
    return request.scope.get("root_path", "").rstrip("/")
