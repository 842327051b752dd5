"""imgcls serve: a model over HTTP, with a JSON API and a drag-and-drop web page."""

from __future__ import annotations

import argparse

from imgcls.commands.common import add_command, add_runtime_flag, runtime_choice

NAME = "serve"
HELP = "serve a model over HTTP: JSON API and a drag-and-drop web page"
EXAMPLES = """examples:
  imgcls serve                                  # the pretrained ImageNet model on http://127.0.0.1:8000
  imgcls serve runs/cnn --port 8080             # a saved model
  imgcls serve lite0.int8.onnx --max-batch 64   # an exported model
  curl -F file=@photo.jpg http://127.0.0.1:8000/v1/classify"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = add_command(subparsers, NAME, HELP, EXAMPLES)
    parser.add_argument("model", metavar="MODEL", nargs="?", default=None,
                        help="saved model, exported .onnx file or pretrained name (default: efficientnet_lite0)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-batch", type=int, default=32, help="images per forward pass (1: no micro-batching)")
    parser.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a batch waits to fill up")
    parser.add_argument("--queue-size", type=int, default=256, help="requests waiting before 503 (default: 256)")
    parser.add_argument("--max-upload-mb", type=float, default=20.0, help="request size limit (default: 20)")
    parser.add_argument("--top-k", type=int, default=None,
                        help="labels ranked per image unless a request asks (default: 5; every label for a "
                             "multi-label model)")
    add_runtime_flag(parser)
    parser.set_defaults(handler=handle)
    return parser


def handle(args) -> int:
    import uvicorn

    from imgcls.inference import resolve_model
    from imgcls.inference.fast import runtime_name
    from imgcls.serving.app import create_app
    model = resolve_model(args.model, runtime_choice(args, args.model))
    app = create_app(model, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, queue_size=args.queue_size,
                     max_upload_bytes=int(args.max_upload_mb * 2**20), top_k=args.top_k)
    print(f"serving {getattr(model, 'model_name', args.model)} ({runtime_name(model)}) on http://{args.host}:{args.port}/  (API docs: /docs)")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
