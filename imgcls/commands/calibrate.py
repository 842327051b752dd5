"""imgcls calibrate: calibrate a saved model's probabilities on a dataset's validation split."""

from __future__ import annotations

import argparse

from imgcls.commands.common import (abstention_request, add_abstention_flags, add_command, add_data_argument,
                                    add_data_flags, data_options)
from imgcls.commands.completers import SAVED_MODEL, completes

NAME = "calibrate"
HELP = "calibrate a saved model's probabilities on a dataset's validation split"
EXAMPLES = """examples:
  imgcls calibrate runs/cnn fashion-mnist --out runs/cnn-calibrated     # temperature scaling (networks)
  imgcls calibrate runs/knn fashion-mnist --method isotonic --out runs/knn-iso
  imgcls calibrate runs/linear photos/ --method sigmoid --seed 1 --out linear-platt.safetensors
  imgcls calibrate runs/cnn fashion-mnist --accept 0.95 --out runs/cnn-sure   # and answer "unknown"

The validation split is the one `imgcls train` carves with the same --seed and --val-fraction.
--out a folder: the calibrated model, evaluated once on the test split, with report.html showing
ECE, NLL and Brier score before and after, and the reliability diagram; --out a .safetensors file:
the model alone, the figures printed. --accept also fits an abstention on the calibrated model
(as `imgcls abstain` does); a model that already abstains has its threshold chosen again, for the
same acceptance, since calibration moves the scores it reads."""


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = add_command(subparsers, NAME, HELP, EXAMPLES)
    completes(parser.add_argument("model", metavar="MODEL", help="run folder or .safetensors model file"), SAVED_MODEL)
    add_data_argument(parser, help="dataset name, folder or CSV manifest (the model's classes)")
    parser.add_argument("--out", required=True, metavar="PATH",
                        help="run folder (model.safetensors and reports) or .safetensors file for the calibrated model")
    parser.add_argument("--method", choices=["temperature", "sigmoid", "isotonic"], default=None,
                        help="temperature scaling (models with logits: networks, transfer probe and finetune), or "
                             "scikit-learn's sigmoid (Platt) or isotonic calibration per class (any single-label "
                             "model; may change predictions); default: temperature where the model has logits, "
                             "else sigmoid")
    add_abstention_flags(parser)
    add_data_flags(parser)
    parser.set_defaults(handler=handle)
    return parser


def handle(args) -> int:
    from imgcls.fit_and_evaluate import print_calibration
    from imgcls.saved_models import calibrate_saved
    abstain = abstention_request(args)                     # checked before the model loads
    result = calibrate_saved(args.model, args.data, data_options(args), args.out, method=args.method, abstain=abstain)
    print(f"model:  {result.model_path}")
    if result.report_paths:
        print(f"report: {result.report_paths['html']}")
    else:                                       # the model file alone: its calibration on test, printed
        print_calibration(result.calibration)
    return 0

