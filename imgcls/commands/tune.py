"""imgcls tune: choose hyperparameters on validation data, then evaluate the best once on the test split."""

from __future__ import annotations

import argparse
from pathlib import Path

from imgcls.commands.common import add_command, add_data_argument, add_data_flags, data_options
from imgcls.commands.completers import MODEL_NAME, completes
from imgcls.errors import ImgclsError

NAME = "tune"
HELP = ("choose hyperparameters on validation data (kNN: cross-validation; "
        "networks: random or grid search), then evaluate the best once on the test split")
EXAMPLES = """examples:
  imgcls tune fashion-mnist --model knn --grid k=1,3,5,7,9,11,15 --grid metric=l1,l2 --cv 5 --out runs/knn-tuned
  imgcls tune digits --grid k=1,3,5 --grid weights=uniform,distance --cv 10 --seed 1 --out runs/digits-tuned"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = add_command(subparsers, NAME, HELP, EXAMPLES)
    add_data_argument(parser)
    completes(parser.add_argument("--model", default="knn", help="model to tune (default: knn)"), MODEL_NAME)
    parser.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                        help="values to try, repeatable; kNN keys k, metric, weights "
                             "(default: k=1,3,5,7,9,11,15 metric=l1,l2 weights=uniform); for networks any of "
                             "their options, e.g. lr=0.01,0.1 weight_decay=0,5e-4 dropout=0,0.3 epochs=5")
    parser.add_argument("--cv", type=int, default=5, metavar="FOLDS", help="kNN: stratified folds (default: 5)")
    parser.add_argument("--search", choices=["random", "grid"], default="random",
                        help="networks: random sample of the grid or all of it (default: random)")
    parser.add_argument("--trials", type=int, default=20, help="networks, random search: trials (default: 20)")
    parser.add_argument("--out", default=None,
                        help="folder for cv results, model and report (default: runs/tune-<model>)")
    add_data_flags(parser)
    parser.set_defaults(handler=handle)
    return parser


def handle(args) -> int:
    from imgcls.data.load import load_dataset
    from imgcls.run_folder import default_folder
    from imgcls.tuning import parse_grid, tune_knn
    if args.model != "knn":
        return _tune_network(args)
    grid = parse_grid(args.grid)   # bad keys fail before data loads
    splits = load_dataset(args.data, data_options(args))
    out = Path(args.out or default_folder("tune", args.model))
    result = tune_knn(splits, grid, folds=args.cv, seed=args.seed, out=out,
                      command=" ".join(["imgcls", *args.argv]))
    print(f"chosen: {result['best']}\nmodel:  {result['model_path']}\nreport: {result['report_paths']['html']}")
    return 0


def _tune_network(args) -> int:
    from imgcls.data.load import load_dataset
    from imgcls.models.registry import create_model
    from imgcls.run_folder import default_folder
    from imgcls.tuning.search import parse_model_grid, search
    model = create_model(args.model)
    if not model.capabilities.network:
        raise ImgclsError(f"tune supports knn and neural networks; {args.model!r} is neither")
    grid = parse_model_grid(args.grid, args.model)
    splits = load_dataset(args.data, data_options(args).decoding_as(model.input_preprocessing()))
    out = Path(args.out or default_folder("tune", args.model))
    result = search(splits, args.model, grid, method=args.search, trials=args.trials, seed=args.seed, out=out,
                    command=" ".join(["imgcls", *args.argv]))
    print(f"chosen: {result['best']}\nmodel:  {result['model_path']}\nreport: {result['report_paths']['html']}")
    return 0
