"""What is done to a model already saved: evaluate it on a dataset, calibrate its probabilities,
teach it to answer "unknown". `imgcls eval`, `imgcls calibrate` and `imgcls abstain` are these
functions and a parser.

Each decodes the dataset's files exactly as the model expects (its preprocessing travels in the
saved file), so the decoding flags --image-size and --channels are refused. Calibrating and
abstaining fit on the validation split that `imgcls train` carves with the same --seed and
--val-fraction, so the data flags the model was trained with give the same held-out images.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from imgcls.data.load import DataOptions, load_dataset
from imgcls.errors import ImgclsError
from imgcls.evaluation import RunInfo, evaluate_model, print_report, write_report
from imgcls.evaluation.weight_images import model_figures
from imgcls.fit_and_evaluate import RunResult, calibration_report, finish_run, mistake_heatmaps, print_calibration
from imgcls.models.abstention import Abstention, check_can_abstain, fit_abstention
from imgcls.models.artifact import load_model, resolve_model_path, save_model
from imgcls.models.calibration import calibrate, check_method
from imgcls.progress import stdout


def evaluate_saved(model_path: str | Path, data: str, options: DataOptions, out: str | Path | None,
                   split: str = "test", runtime: str | None = None) -> RunResult:
    """Evaluate a saved or pretrained model on a dataset's split (files are decoded with the model's
    preprocessing), predicting in `runtime` (see imgcls.inference.resolve_model)."""
    from imgcls.inference.resolve import resolve_model
    model = resolve_model(str(model_path), runtime)
    if options.size is not None or options.channels is not None or options.decode is not None:
        raise ImgclsError("eval decodes images exactly as the model expects "
                          f"({_decode_text(model.preprocessing_)}); drop --image-size, --channels and --decode")
    splits = load_dataset(data, dataclasses.replace(options, preprocessing=model.preprocessing_))
    part = getattr(splits, split)          # the split named: train, val or test
    if part is None:
        raise ImgclsError(f"{data} has no {split} split")
    evaluation, predict_seconds = evaluate_model(model, part, splits.skipped)
    info = RunInfo(title=f"{model.model_name} on {splits.name}", model=model.model_name, params=model.get_params(),
                   dataset=splits.name, split=split, sizes=splits.summary(),
                   timings={"predict_seconds": predict_seconds},
                   skipped_files=[s.to_dict() for s in splits.skipped])
    calibration, calibration_figures = calibration_report(model, evaluation, part, out, split)
    print_report(evaluation, info, stdout)
    print_calibration(calibration)
    heatmaps = mistake_heatmaps(model, evaluation, part.images) if out else None
    paths = write_report(evaluation, info, out, images=part.images, figures={**model_figures(model, out),
                         **calibration_figures}, heatmaps=heatmaps, calibration=calibration) if out else {}
    return RunResult(Path(out) if out else Path("."), Path(model_path), paths, evaluation.headline(),
                     calibration=calibration)


def calibrate_saved(model_path: str | Path, data: str, options: DataOptions, out: str | Path, *,
                    method: str | None = None, abstain: dict | None = None) -> RunResult:
    """Calibrate a saved model on data's validation split with `method` (default: temperature
    scaling where the model has logits, else sigmoid) and write it to out: a run folder, where
    it is evaluated once on the test split with its report (finish_run), or a .safetensors file,
    the model alone (result.calibration then holds its figures on test, where data has a test
    split). abstain ({"accept", "score"}): see calibrated_model."""
    from imgcls.inference.resolve import resolve_model
    model = resolve_model(str(model_path))
    if model.capabilities.exported:
        raise ImgclsError(f"{model_path} is an exported model; calibrate the saved model, then export it again")
    method = method or ("temperature" if model.has_logits else "sigmoid")
    check_method(model, method)
    if options.size is not None or options.channels is not None or options.decode is not None:
        raise ImgclsError("calibrate decodes images exactly as the model expects; drop --image-size, --channels "
                          "and --decode")
    splits = load_dataset(data, dataclasses.replace(options, preprocessing=model.preprocessing_))
    calibrated = calibrated_model(model, splits, method, abstain)
    out = Path(out)
    if out.suffix == ".safetensors":
        calibrated.save(out)
        summary = None
        if splits.test is not None and len(splits.test):
            evaluation, _ = evaluate_model(calibrated, splits.test, splits.skipped)
            summary = calibration_report(calibrated, evaluation, splits.test, None)[0]
        return RunResult(out.parent, out, {}, calibrated.metrics_, calibration=summary)
    if splits.test is None or not len(splits.test):
        raise ImgclsError(f"{splits.name}: no test images to report on (use a --test-fraction above 0, or "
                          "--out FILE.safetensors to write the model alone)")
    return finish_run(calibrated, model.model_name, splits, out,
                      title=f"{model.model_name} calibrated ({method}) on {splits.name}")


def calibrated_model(model, splits, method: str, abstain: dict | None = None):
    """The model calibrated with `method` on splits.val (the train command's validation split);
    the model itself is left as it is. abstain ({"accept", "score"}), or the model's own abstention
    where it has one: fitted again on splits.val after calibrating, since it reads the calibrated
    scores."""
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


def abstain_saved(model_path: str | Path, data: str, options: DataOptions, abstain: dict,
                  out: str | Path | None = None) -> tuple[Path, Abstention]:
    """Fit an abstention for a saved model on data's validation split (knn: its training split as
    reference; use the data flags the model was trained with, so val is the same held-out part),
    and save the model with it to out (default: in place)."""
    path = resolve_model_path(model_path)
    model = load_model(path)
    if not model.takes_images:
        raise ImgclsError(f"{model_path}: a model fitted on feature vectors; fit its abstention from Python "
                          "(imgcls.models.abstention.fit_abstention)")
    if options.size is not None or options.channels is not None or options.decode is not None:
        raise ImgclsError("abstain decodes images exactly as the model expects; drop --image-size, --channels "
                          "and --decode")
    splits = load_dataset(data, dataclasses.replace(options, preprocessing=model.preprocessing_))
    check_can_abstain(splits, abstain)
    if splits.val.class_names != model.class_names_:
        raise ImgclsError(f"{data} has classes {', '.join(splits.val.class_names)}; the model was trained on "
                          f"{', '.join(model.class_names_)}")
    model.abstention_ = fit_abstention(model, splits.val, abstain["accept"], abstain["score"], reference=splits.train)
    return save_model(model, Path(out) if out else path), model.abstention_


def _decode_text(prep) -> str:
    return (f"{prep.channels} channel(s), {prep.size[0]}x{prep.size[1]}, {prep.resize}, crop {prep.crop_pct:g}, "
            f"{prep.interpolation}, {prep.decode} decode")
