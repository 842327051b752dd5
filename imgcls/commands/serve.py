"""imgcls serve: a model over HTTP, with a JSON API and a drag-and-drop web page."""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from pathlib import Path

from imgcls.commands.common import add_command, add_runtime_flag, runtime_choice
from imgcls.commands.completers import SAVED_MODEL, completes
from imgcls.errors import ImgclsError
from imgcls.serving import defaults

NAME = "serve"
ENV_VAR = "IMGCLS_API_KEY"           # the key, kept off the command line where `ps` shows it
HELP = "serve a model over HTTP: JSON API and a drag-and-drop web page"
EXAMPLES = """examples:
  imgcls serve                                  # the pretrained ImageNet model on http://127.0.0.1:8000
  imgcls serve runs/cnn --port 8080             # a saved model
  imgcls serve lite0.int8.onnx --max-batch 64   # an exported model
  curl -F file=@photo.jpg http://127.0.0.1:8000/v1/classify
  export IMGCLS_API_KEY=$(openssl rand -hex 24)  # beyond this machine: a key, over HTTPS
  imgcls serve --host 0.0.0.0 --ssl-certfile cert.pem --ssl-keyfile key.pem
  curl --cacert cert.pem -H "Authorization: Bearer $IMGCLS_API_KEY" -F file=@photo.jpg https://myhost:8000/v1/classify"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = add_command(subparsers, NAME, HELP, EXAMPLES)
    completes(parser.add_argument("model", metavar="MODEL", nargs="?", default=None,
                                  help="saved model, exported .onnx file or pretrained name "
                                       "(default: efficientnet_lite0)"), SAVED_MODEL)
    parser.add_argument("--host", default=defaults.HOST)
    parser.add_argument("--port", type=int, default=defaults.PORT)
    parser.add_argument("--max-batch", type=int, default=defaults.MAX_BATCH,
                        help="images per forward pass (1: no micro-batching)")
    parser.add_argument("--max-wait-ms", type=float, default=defaults.MAX_WAIT_MS,
                        help="how long a batch waits to fill up")
    parser.add_argument("--queue-size", type=int, default=defaults.QUEUE_SIZE,
                        help=f"requests waiting before 503 (default: {defaults.QUEUE_SIZE})")
    parser.add_argument("--max-upload-mb", type=float, default=defaults.MAX_UPLOAD_BYTES / 2**20,
                        help=f"request size limit (default: {defaults.MAX_UPLOAD_BYTES / 2**20:g})")
    parser.add_argument("--top-k", type=int, default=None,
                        help="labels ranked per image unless a request asks (default: 5; every label for a "
                             "multi-label model)")
    security = parser.add_argument_group("security")
    security.add_argument("--api-key", default=None, metavar="KEY",
                          help="require Authorization: Bearer KEY on every endpoint but the health checks, the "
                               "page and the docs (default: $IMGCLS_API_KEY; prefer it, since other users of "
                               "this machine can read a command line)")
    security.add_argument("--ssl-certfile", type=Path, default=None, metavar="PEM",
                          help="serve HTTPS with this certificate (chain); needs --ssl-keyfile")
    security.add_argument("--ssl-keyfile", type=Path, default=None, metavar="PEM", help="its private key")
    security.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                          help="let pages from ORIGIN (e.g. https://app.example.com, or *) call the API from a "
                               "browser; repeatable (default: none, CORS off)")
    add_runtime_flag(parser)
    parser.set_defaults(handler=handle)
    return parser


def handle(args) -> int:
    import uvicorn

    from imgcls.inference import resolve_model
    from imgcls.inference.fast import runtime_name
    from imgcls.serving.app import create_app
    from imgcls.serving.security import check_api_key, check_origins
    # Every flag is checked before the model loads, which can take a while.
    api_key = args.api_key if args.api_key is not None else os.environ.get(ENV_VAR)
    if api_key is not None:
        check_api_key(api_key)
    check_origins(args.cors_origin)
    tls = tls_files(args.ssl_certfile, args.ssl_keyfile)
    model = resolve_model(args.model, runtime_choice(args, args.model))
    app = create_app(model, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, queue_size=args.queue_size,
                     max_upload_bytes=int(args.max_upload_mb * 2**20), top_k=args.top_k, api_key=api_key,
                     cors_origins=args.cors_origin)
    warning = exposure_warning(args.host, api_key is not None, bool(tls))
    if warning:
        print(f"imgcls: warning: {warning}", file=sys.stderr)
    scheme = "https" if tls else "http"
    print(f"serving {model.model_name or args.model} ({runtime_name(model)}) "
          f"on {scheme}://{args.host}:{args.port}/  (API docs: /docs{'; API key required' if api_key is not None else ''})")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", **tls)
    return 0


def tls_files(certfile: Path | None, keyfile: Path | None) -> dict:
    """uvicorn's ssl_certfile/ssl_keyfile, checked first so that a wrong file is a one-line error
    rather than a traceback from inside uvicorn: both or neither, readable, and a matching pair."""
    if (certfile is None) != (keyfile is None):
        raise ImgclsError("give --ssl-certfile and --ssl-keyfile together (HTTPS needs the certificate and its key)")
    if certfile is None:
        return {}
    import ssl
    for flag, path in (("--ssl-certfile", certfile), ("--ssl-keyfile", keyfile)):
        if not path.is_file():
            raise ImgclsError(f"{flag} {path}: no such file")
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(certfile, keyfile)
    except (ssl.SSLError, OSError) as error:
        raise ImgclsError(f"cannot use {certfile} with {keyfile} for HTTPS: {error}") from None
    return {"ssl_certfile": str(certfile), "ssl_keyfile": str(keyfile)}


def exposure_warning(host: str, has_key: bool, has_tls: bool) -> str | None:
    """What to warn about when the server can be reached from other machines, or None on loopback."""
    if _loopback(host):
        return None
    if not has_key:
        return (f"serving on {host} without an API key: anyone who can reach this port can use the model "
                f"(set {ENV_VAR} or --api-key)")
    if not has_tls:
        return f"serving on {host} over plain HTTP: the API key crosses the network readable (add --ssl-certfile)"
    return None


def _loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False                   # a host name other than localhost may resolve to anything
