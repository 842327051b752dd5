"""imgcls lr-find: the learning-rate range test."""

from __future__ import annotations

import argparse
from pathlib import Path

from imgcls.commands.common import (add_command, add_data_argument, add_data_flags, add_model_flags, data_options,
                                    model_params)
from imgcls.commands.completers import MODEL_NAME, completes
from imgcls.errors import ImgclsError

NAME = "lr-find"
HELP = "learning-rate range test: plot loss against learning rate, suggest one"
EXAMPLES = """examples:
  imgcls lr-find fashion-mnist --model resnet20 --augment crop,flip --out runs/lr"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = add_command(subparsers, NAME, HELP, EXAMPLES)
    add_data_argument(parser)
    completes(parser.add_argument("--model", default="cnn", help="network from `imgcls models` (default: cnn)"),
              MODEL_NAME)
    parser.add_argument("--out", default=None, help="folder for lr_find.png/json (default: runs/lr-find-<model>)")
    parser.add_argument("--steps", type=int, default=100, help="number of learning rates tried (default: 100)")
    parser.add_argument("--min-lr", type=float, default=1e-6)
    parser.add_argument("--max-lr", type=float, default=10.0)
    add_data_flags(parser)
    add_model_flags(parser)
    parser.set_defaults(handler=handle)
    return parser


def handle(args) -> int:
    from imgcls.data.load import load_dataset
    from imgcls.models.registry import create_model
    from imgcls.run_folder import RunFolder, default_folder
    from imgcls.training.lr_find import lr_find
    model = create_model(args.model, **model_params(args))
    if not model.capabilities.network:
        raise ImgclsError(f"lr-find needs a neural network; {args.model!r} is not trained by gradient descent")
    splits = load_dataset(args.data, data_options(args).decoding_as(model.input_preprocessing()))
    model.check_can_learn(splits.train.task)
    default = default_folder("lr-find", args.model)
    out = Path(args.out or default)
    result = lr_find(model, splits.train, out, steps=args.steps, min_lr=args.min_lr, max_lr=args.max_lr,
                     about={"model": args.model, "dataset": splits.name})
    print(f"suggested learning rate: {result['suggested_lr']:.3g}  (plot: {RunFolder(out).lr_find_plot})")
    where = f"in {out.parent}/" if out.name == default.name else f"with --out {out}"
    print(f"runs of {args.model} on {splits.name} {where} warn when their learning rate is over 10x from it")
    return 0
