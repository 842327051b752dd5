"""Letting in only who belongs, over real HTTP(S) on loopback: the API key, a key in the URL, the
open paths, CORS preflights, TLS, and the CLI flags that set them up."""

from __future__ import annotations

import datetime
import io
import ipaddress
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn
from PIL import Image

from checks import one_line_error
from imgcls.cli import main
from imgcls.data import load_dataset
from imgcls.models import create_model
from imgcls.serving.app import create_app
from imgcls.serving.security import KEY_PARAMETERS, check_origins
from test_serving import digit_png

KEY = "k3y-0f-the-test_server~"
ORIGIN = "https://app.example"


class LiveServer:
    """uvicorn serving an app on 127.0.0.1 (HTTP, or HTTPS given a cert and key) in a thread."""

    def __init__(self, app, tls: dict | None = None, ca: Path | None = None, root_path: str = ""):
        self.port = _free_port()
        self.scheme = "https" if tls else "http"
        self.verify = ssl.create_default_context(cafile=str(ca)) if ca else True
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    root_path=root_path, **(tls or {})))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def client(self, key: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, verify=self.verify, timeout=30)

    def __enter__(self):
        self.thread.start()
        _wait_healthy(self.url, self.verify, alive=self.thread.is_alive)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=10)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, verify, alive) -> None:
    """Until /healthz answers 200 (60 s at most: the machine may be busy), or the server died."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and alive():
        try:
            if httpx.get(url + "/healthz", timeout=2, verify=verify).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"the server at {url} did not answer /healthz")


@pytest.fixture(scope="module")
def digits_model():
    return create_model("knn", k=3).fit(load_dataset("digits").train)


@pytest.fixture(scope="module")
def server(digits_model):
    with LiveServer(create_app(digits_model, api_key=KEY, cors_origins=[ORIGIN])) as live:
        yield live


def digit_png(i: int = 3) -> bytes:
    from sklearn.datasets import load_digits
    buffer = io.BytesIO()
    Image.fromarray(np.round(load_digits().images[i] * 255 / 16).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def expected_label(model, data: bytes) -> str:
    from imgcls.data.images import decode_image
    return model.class_names_[int(model.predict(decode_image(data, model.preprocessing_)[None])[0])]


def _refused(reply: httpx.Response, status: int = 401) -> str:
    """The error message of a JSON refusal with `status`, checking the challenge a 401 must carry."""
    assert reply.status_code == status, reply.text
    assert reply.headers["content-type"] == "application/json"
    if status == 401:
        assert reply.headers["www-authenticate"].startswith("Bearer ")
    return reply.json()["error"]


def test_no_key_a_wrong_key_and_the_right_key(server, digits_model):
    with server.client() as anonymous:
        assert "Authorization: Bearer" in _refused(anonymous.get("/v1/model"))
        # The body of a request without the key is refused before it is read, and never classified.
        assert _refused(anonymous.post("/v1/classify", files={"file": ("3.png", digit_png(), "image/png")}))
        for header in (f"Basic {KEY}", f"Bearer{KEY}", "Bearer", f"Token {KEY}"):
            _refused(anonymous.get("/v1/model", headers={"Authorization": header}))
        # An unknown path says nothing about what exists without the key either.
        _refused(anonymous.get("/v1/nothing-here"))
    for wrong in ("wrong", KEY[:-1], KEY + "x", KEY.upper()):
        with server.client(wrong) as client:
            reply = client.get("/v1/model")
            assert _refused(reply) == "wrong API key"
            assert 'error="invalid_token"' in reply.headers["www-authenticate"]
    with server.client(KEY) as client:
        assert client.get("/v1/model").json()["name"] == "knn"
        reply = client.post("/v1/classify", files={"file": ("3.png", digit_png(), "image/png")})
        assert reply.status_code == 200, reply.text
        assert reply.json()["results"][0]["predictions"][0]["label"] == expected_label(digits_model, digit_png())
        # The scheme is case-insensitive (RFC 7235).
        assert client.get("/v1/model", headers={"Authorization": f"bearer {KEY}"}).status_code == 200


@pytest.mark.parametrize("name", sorted(KEY_PARAMETERS))
def test_a_key_in_the_url_is_refused_even_when_right(server, name):
    with server.client(KEY) as client:                 # the header would let it in: the URL still may not
        for path in ("/v1/model", "/healthz"):
            message = _refused(client.get(path, params={name: KEY}), status=400)
            assert "Authorization: Bearer" in message and "URL" in message
        _refused(client.get("/v1/model", params={name.upper(): KEY}), status=400)


def test_health_checks_the_page_and_the_docs_stay_open(server):
    with server.client() as anonymous:
        assert anonymous.get("/healthz").json()["status"] == "ok"
        assert "text/html" in anonymous.get("/").headers["content-type"]
        assert anonymous.get("/docs").status_code == 200
        for probe in ("/v2/health/live", "/v2/health/ready"):  # open, whether or not the v2 routes exist yet
            assert anonymous.get(probe).status_code != 401
        spec = anonymous.get("/openapi.json").json()
    # The schema tells clients (and Swagger UI's Authorize button) which operations need the key.
    assert spec["components"]["securitySchemes"]["apiKey"] == {
        "type": "http", "scheme": "bearer", "description": "the server's API key (imgcls serve --api-key)"}
    classify = spec["paths"]["/v1/classify"]["post"]
    assert classify["security"] == [{"apiKey": []}] and "401" in classify["responses"]
    assert "security" not in spec["paths"]["/healthz"]["get"]


def test_behind_a_proxy_prefix_the_same_paths_are_open(digits_model):
    with LiveServer(create_app(digits_model, api_key=KEY), root_path="/imgcls") as live, \
            live.client() as anonymous, live.client(KEY) as client:
        assert anonymous.get("/healthz").status_code == 200         # probed at /healthz, routed under /imgcls
        _refused(anonymous.get("/v1/model"))
        assert client.get("/v1/model").status_code == 200


def test_a_route_added_later_is_protected_without_saying_so(digits_model):
    app = create_app(digits_model, api_key=KEY)

    @app.get("/added-later")
    async def metadata() -> dict:
        return {"name": "knn"}

    with LiveServer(app) as live, live.client() as anonymous, live.client(KEY) as client:
        _refused(anonymous.get("/added-later"))
        assert client.get("/added-later").json() == {"name": "knn"}


def test_the_page_is_open_but_hugging_faces_post_to_it_needs_the_key(digits_model):
    with LiveServer(create_app(digits_model, api_key=KEY)) as live, \
            live.client() as anonymous, live.client(KEY) as client:
        assert anonymous.get("/").status_code == 200
        _refused(anonymous.post("/", content=digit_png(3), headers={"content-type": "image/png"}))
        _refused(anonymous.get("/v2/models/knn"))
        answer = client.post("/", content=digit_png(3), headers={"content-type": "image/png"})
        assert answer.status_code == 200 and answer.json()[0].keys() == {"label", "score"}


def test_without_a_key_nothing_changes(digits_model):
    with LiveServer(create_app(digits_model)) as live, live.client() as anonymous:
        assert anonymous.get("/v1/model").status_code == 200
        assert anonymous.get("/v1/model", params={"token": "x"}).status_code == 200
        assert "securitySchemes" not in anonymous.get("/openapi.json").json().get("components", {})
        # No --cors-origin: no CORS at all, so a browser refuses every cross-origin call.
        reply = anonymous.options("/v1/classify", headers=_preflight(ORIGIN))
        assert "access-control-allow-origin" not in reply.headers
        assert "access-control-allow-origin" not in anonymous.get("/v1/model", headers={"Origin": ORIGIN}).headers


def _preflight(origin: str) -> dict:
    return {"Origin": origin, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type"}


def test_cors_lets_in_only_the_named_origins(server):
    with server.client() as anonymous:
        for stranger in ("https://evil.example", "http://app.example", "https://app.example:8443", "null"):
            reply = anonymous.options("/v1/classify", headers=_preflight(stranger))
            assert "access-control-allow-origin" not in reply.headers, stranger
        # The named origin's preflight passes without the key (browsers never send it on a preflight) ...
        reply = anonymous.options("/v1/classify", headers=_preflight(ORIGIN))
        assert reply.status_code == 200
        assert reply.headers["access-control-allow-origin"] == ORIGIN
        assert "authorization" in reply.headers["access-control-allow-headers"].lower()
        assert "access-control-allow-credentials" not in reply.headers        # no cookies involved
        # ... and its page can read a 401, to know it must ask for the key.
        refused = anonymous.get("/v1/model", headers={"Origin": ORIGIN})
        assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == ORIGIN
    with server.client(KEY) as client:
        reply = client.get("/v1/model", headers={"Origin": ORIGIN})
        assert reply.status_code == 200 and reply.headers["access-control-allow-origin"] == ORIGIN
        assert "access-control-allow-origin" not in client.get("/v1/model", headers={"Origin": "https://evil.example"}
                                                               ).headers


def test_origins_that_would_never_match_are_refused():
    assert check_origins(["https://a.example", "http://127.0.0.1:3000", "*"]) == [
        "https://a.example", "http://127.0.0.1:3000", "*"]
    for bad in ("https://a.example/", "a.example", "https://a.example/page", "ftp://a.example"):
        one_line_error(lambda: check_origins([bad]), repr(bad), "scheme://host[:port]")


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost, and its key, as PEM files."""
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "imgcls test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    folder = tmp_path_factory.mktemp("tls")
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                       serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    return folder / "cert.pem", folder / "key.pem"


@pytest.fixture(scope="module")
def saved_model(digits_model, tmp_path_factory) -> Path:
    return digits_model.save(tmp_path_factory.mktemp("model") / "knn")


@pytest.fixture
def served(monkeypatch):
    """Run `imgcls serve ARGS` in this process up to uvicorn.run, and return what it was given."""
    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: calls.append((app, options)))

    def serve(*args: str) -> tuple[object, dict]:
        calls.clear()
        assert main(["serve", *map(str, args)]) == 0
        (app, options), = calls
        return app, options
    return serve


def test_the_api_key_comes_from_the_flag_or_the_environment(served, saved_model, monkeypatch, capsys):
    monkeypatch.delenv("IMGCLS_API_KEY", raising=False)
    for args, env, needed in [((), None, None), (("--api-key", KEY), None, KEY), ((), KEY, KEY),
                              (("--api-key", KEY), "the-other-one", KEY)]:     # the flag wins over the env
        if env is not None:
            monkeypatch.setenv("IMGCLS_API_KEY", env)
        app, _ = served(saved_model, *args)
        with LiveServer(app) as live, live.client() as anonymous, live.client(KEY) as client:
            assert anonymous.get("/v1/model").status_code == (401 if needed else 200), (args, env)
            assert client.get("/v1/model").status_code == 200
        monkeypatch.delenv("IMGCLS_API_KEY", raising=False)
    assert "API key required" in capsys.readouterr().out
    for key in ("", "two words", "caf\u00e9"):
        monkeypatch.setenv("IMGCLS_API_KEY", key)
        assert main(["serve", str(saved_model)]) == 2
        assert capsys.readouterr().err.count("\n") == 1


def test_serving_beyond_loopback_without_a_key_warns(served, saved_model, monkeypatch, capsys):
    monkeypatch.delenv("IMGCLS_API_KEY", raising=False)
    for host in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        served(saved_model, "--host", host)
        assert capsys.readouterr().err == "", host
    for host in ("0.0.0.0", "::", "192.168.1.20", "myserver.example"):
        _, options = served(saved_model, "--host", host)
        err = capsys.readouterr().err
        assert options["host"] == host
        assert err.startswith(f"imgcls: warning: serving on {host} without an API key") and err.count("\n") == 1
    served(saved_model, "--host", "0.0.0.0", "--api-key", KEY)            # a key, but in clear text
    assert "plain HTTP" in capsys.readouterr().err


def test_tls_flags_reach_uvicorn_checked(served, saved_model, certificate, tmp_path, capsys):
    cert, key = certificate
    _, options = served(saved_model, "--ssl-certfile", cert, "--ssl-keyfile", key, "--host", "0.0.0.0",
                        "--api-key", KEY)
    assert options["ssl_certfile"] == str(cert) and options["ssl_keyfile"] == str(key)
    out, err = capsys.readouterr()
    assert "https://0.0.0.0:8000/" in out and err == ""                   # a key over HTTPS: nothing to warn of
    _, options = served(saved_model)
    assert "ssl_certfile" not in options
    for args, fragment in [(("--ssl-certfile", cert), "together"), (("--ssl-keyfile", key), "together"),
                           (("--ssl-certfile", tmp_path / "no.pem", "--ssl-keyfile", key), "no such file"),
                           (("--ssl-certfile", cert, "--ssl-keyfile", cert), "cannot use")]:
        assert main(["serve", str(saved_model), *map(str, args)]) == 2, args
        err = capsys.readouterr().err
        assert fragment in err and err.count("\n") == 1, err


def test_cors_origins_reach_the_app(served, saved_model):
    app, _ = served(saved_model, "--cors-origin", ORIGIN, "--cors-origin", "http://localhost:3000")
    with LiveServer(app) as live, live.client() as client:
        for origin in (ORIGIN, "http://localhost:3000"):
            reply = client.options("/v1/classify", headers=_preflight(origin))
            assert reply.headers["access-control-allow-origin"] == origin
        assert "access-control-allow-origin" not in client.options("/v1/classify",
                                                                  headers=_preflight("https://x.example")).headers


def test_https_with_the_key_from_the_environment_in_a_real_process(saved_model, certificate):
    """`imgcls serve` as a user starts it: HTTPS with a self-signed certificate, the key from the
    environment; a client that trusts the certificate gets in with the key and only with it."""
    cert, key = certificate
    port = _free_port()
    env = {**os.environ, "IMGCLS_API_KEY": KEY, "IMGCLS_PROGRESS": "0"}
    process = subprocess.Popen([sys.executable, "-m", "imgcls.cli", "serve", str(saved_model), "--port", str(port),
                                "--ssl-certfile", str(cert), "--ssl-keyfile", str(key)],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url, trust = f"https://127.0.0.1:{port}", ssl.create_default_context(cafile=str(cert))
    try:
        _wait_healthy(url, trust, alive=lambda: process.poll() is None)
        assert _refused(httpx.get(url + "/v1/model", verify=trust, timeout=30))
        reply = httpx.get(url + "/v1/model", verify=trust, timeout=30, headers={"Authorization": f"Bearer {KEY}"})
        assert reply.status_code == 200 and reply.json()["name"] == "knn"
        with pytest.raises(httpx.ConnectError):                       # not trusted without the certificate
            httpx.get(url + "/healthz", timeout=30)
        with pytest.raises(httpx.TransportError):                     # and no plain HTTP on that port
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=30)
    finally:
        process.terminate()
        out, err = process.communicate(timeout=30)
    assert f"on https://127.0.0.1:{port}/" in out and "API key required" in out
    assert "warning" not in err
