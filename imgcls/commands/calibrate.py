"""imgcls calibrate: calibrate a saved model's probabilities on a dataset's validation split."""

from __future__ import annotations

import argparse
from pathlib import Path

from imgcls.commands.common import abstention_request, add_abstention_flags, add_command, add_data_flags, data_options
from imgcls.errors import ImgclsError

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
    parser.add_argument("model", metavar="MODEL", help="run folder or .safetensors model file")
    parser.add_argument("data", metavar="DATA", help="dataset name, folder or CSV manifest (the model's classes)")
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
    import dataclasses

    from imgcls.data.load import load_dataset
    from imgcls.evaluation import evaluate_model
    from imgcls.finish import calibration_report, finish_run, print_calibration
    from imgcls.inference import resolve_model
    from imgcls.inference.onnx_model import OnnxClassifier
    from imgcls.models.calibration import check_method
    abstain = abstention_request(args)                     # checked before the model loads
    model = resolve_model(args.model)
    if isinstance(model, OnnxClassifier):
        raise ImgclsError(f"{args.model} is an exported model; calibrate the saved model, then export it again")
    method = args.method or ("temperature" if model.has_logits else "sigmoid")
    check_method(model, method)
    if args.image_size is not None or args.channels is not None:
        raise ImgclsError("calibrate decodes images exactly as the model expects; drop --image-size and --channels")
    splits = load_dataset(args.data, dataclasses.replace(data_options(args), preprocessing=model.preprocessing_))
    calibrated = calibrated_model(model, splits, method, abstain)
    out = Path(args.out)
    if out.suffix == ".safetensors":
        calibrated.save(out)
        print(f"model:  {out}")
        if splits.test is not None and len(splits.test):
            evaluation, _ = evaluate_model(calibrated, splits.test, splits.skipped)
            print_calibration(calibration_report(calibrated, evaluation, splits.test, None)[0])
        return 0
    if splits.test is None or not len(splits.test):
        raise ImgclsError(f"{splits.name}: no test images to report on (use a --test-fraction above 0, or "
                          "--out FILE.safetensors to write the model alone)")
    result = finish_run(calibrated, model.model_name, splits, out,
                        title=f"{model.model_name} calibrated ({method}) on {splits.name}")
    print(f"model:  {result.model_path}\nreport: {result.report_paths['html']}")
    return 0


def calibrated_model(model, splits, method: str, abstain: dict | None = None):
    """The model calibrated with `method` on splits.val (the train command's validation split);
    the model itself is left as it is. abstain ({"accept", "score"}), or the model's own abstention
    where it has one: fitted again on splits.val after calibrating, since it reads the calibrated
    scores."""
    from imgcls.models.abstention import fit_abstention
    from imgcls.models.calibration import calibrate
    from imgcls.runs import check_can_abstain
    if splits.val is None or not len(splits.val):
        raise ImgclsError(f"{splits.name}: no validation images to calibrate on (use a --val-fraction above 0)")
    calibrated = calibrate(model, splits.val, method=method)
    own = model.abstention_
    if abstain is None and own is not None and own.accept is not None:
        abstain = {"accept": own.accept, "score": own.score}
    if abstain is not None:
        check_can_abstain(splits, abstain)
        calibrated.abstention_ = fit_abstention(calibrated, splits.val, abstain["accept"], abstain["score"],
                                                reference=splits.train)
        print(f"abstention: {calibrated.abstention_.describe()}")
    return calibrated

