"""imgcls abstain: teach a saved model to answer "unknown" for images unlike its training data."""

from __future__ import annotations

import argparse

from imgcls.commands.common import (abstention_request, add_abstention_flags, add_command, add_data_argument,
                                    add_data_flags, data_options)
from imgcls.commands.completers import SAVED_MODEL, completes

NAME = "abstain"
HELP = "let a saved model answer 'unknown': a rejection threshold chosen on validation"
EXAMPLES = """examples:
  imgcls abstain runs/cnn fashion-mnist                          # msp, 95% of val accepted, in place
  imgcls abstain runs/cnn fashion-mnist --accept 0.9 --reject-score knn --out runs/cnn/abstaining.safetensors

Use the data flags the model was trained with (--seed, --val-fraction), so the validation split
is the same held-out part. Images scoring above the threshold are answered "unknown" by predict,
serve and exported files; the top-k is still given."""


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = add_command(subparsers, NAME, HELP, EXAMPLES)
    completes(parser.add_argument("model", metavar="MODEL", help="run folder or .safetensors model file"), SAVED_MODEL)
    add_data_argument(parser, help="the dataset it was trained on (name, folder or CSV manifest)")
    parser.add_argument("--out", default=None, help="where to save the model (default: in place)")
    add_abstention_flags(parser, accept_default=0.95)
    add_data_flags(parser)
    parser.set_defaults(handler=handle)
    return parser


def handle(args) -> int:
    from imgcls.saved_models import abstain_saved
    path, abstention = abstain_saved(args.model, args.data, data_options(args), abstention_request(args), args.out)
    print(f"abstention: {abstention.describe()}\nmodel: {path}")
    return 0
