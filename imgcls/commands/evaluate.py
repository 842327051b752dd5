"""imgcls eval: evaluate a saved model on a dataset's split."""

from __future__ import annotations

import argparse

from imgcls.commands.common import (add_command, add_data_argument, add_data_flags, add_runtime_flag, data_options,
                                    runtime_choice)
from imgcls.commands.completers import SAVED_MODEL, completes

NAME = "eval"
HELP = "evaluate a saved model on a dataset's test split"
EXAMPLES = """examples:
  imgcls eval runs/knn fashion-mnist
  imgcls eval runs/knn/model.safetensors photos/ --out runs/knn/eval-photos"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = add_command(subparsers, NAME, HELP, EXAMPLES)
    completes(parser.add_argument("model", metavar="MODEL", help="run folder or .safetensors model file"), SAVED_MODEL)
    add_data_argument(parser)
    parser.add_argument("--split", default="test", choices=["test", "val", "train"])
    parser.add_argument("--out", default=None, help="folder for report.json/html (default: print only)")
    add_data_flags(parser)
    add_runtime_flag(parser)
    parser.set_defaults(handler=handle)
    return parser


def handle(args) -> int:
    from imgcls.saved_models import evaluate_saved
    result = evaluate_saved(args.model, args.data, data_options(args), args.out, split=args.split,
                           runtime=runtime_choice(args, args.model))
    if result.report_paths:
        print(f"report: {result.report_paths['html']}")
    return 0
