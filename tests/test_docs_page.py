"""/docs (Swagger UI) in a real headless Chromium that may reach nothing but the server:
the page must render the API's operations from files the server itself serves."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
from test_serving import LiveServer
from test_web import CHROMIUM, CHROMIUM_ARGS

from imgcls.data import load_dataset
from imgcls.models import create_model
from imgcls.serving.app import create_app

sync_api = pytest.importorskip("playwright.sync_api", reason="the Python package playwright is not installed")
pytestmark = pytest.mark.skipif(not CHROMIUM.is_file(), reason=f"no Chromium at {CHROMIUM}")


@pytest.fixture(scope="module")
def server():
    with LiveServer(create_app(create_model("knn", k=3).fit(load_dataset("digits").train))) as live:
        yield live


@pytest.fixture
def offline_page(server):
    """A Chromium page whose every request to a host other than the server is aborted and noted,
    as if the machine had no internet; yields (page, the URLs it tried to reach elsewhere)."""
    server_host = urlsplit(server.url).netloc
    elsewhere: list[str] = []

    def only_the_server(route):
        if urlsplit(route.request.url).netloc == server_host:
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort("internetdisconnected")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context()
            context.route("**/*", only_the_server)
            page = context.new_page()
            page.set_default_timeout(30_000)
            yield page, elsewhere
        finally:
            browser.close()


def test_swagger_ui_renders_every_operation_offline(server, offline_page):
    page, elsewhere = offline_page
    page.goto(server.url + "/docs")
    operations = page.locator(".opblock .opblock-summary-path")
    sync_api.expect(operations.first).to_be_visible()
    shown = {text.strip().replace("\u200b", "") for text in operations.all_inner_texts()}
    assert {"/healthz", "/v1/model", "/v1/classify", "/metrics"} <= shown
    # an operation opens, with its documented refusals and the reply model
    page.locator(".opblock-post .opblock-summary").first.click()
    body = page.locator(".opblock-post .opblock-body")
    for status in ("200", "413", "415", "503"):
        sync_api.expect(body.locator(f"tr.response[data-code='{status}']")).to_have_count(1)
    sync_api.expect(page.locator(".models")).to_contain_text("ClassifyReply")
    assert elsewhere == []


def test_fastapis_cdn_pages_are_not_routed(server):
    import httpx
    assert httpx.get(server.url + "/redoc").status_code == 404
