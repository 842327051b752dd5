"""Every run's two steps, written once.

1. fit_and_validate: fit on the train split (validating on val epoch by epoch), calibrate on val
   (temperature scaling by default for networks), fit an abstention there if asked, and measure
   the validation headline; the test split is not touched. Its FittedModel.validation_score is
   what a run that races candidate models on validation ranks them by, before finishing the
   winner alone.
2. finish_run: evaluate on the test split once, record that look, save the model with its test
   metrics, and write the reports, all in the run folder (imgcls.run_folder). The report shows
   a calibrated model's calibration before and after, on test.

`imgcls train` and `imgcls compare` (through fit_and_report, which is 1 then 2), both tuners (kNN
cross-validation, network search) and `imgcls calibrate --out DIR` end in finish_run, so what a
run folder holds and how often its test split was looked at read the same for all of them.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from imgcls.data.dataset import DatasetSplits, SkippedFile
from imgcls.errors import ImgclsError
from imgcls.evaluation import RunInfo, evaluate_model, print_report, write_report
from imgcls.evaluation.calibration import BINS_TEXT, calibration_summary, plot_reliability
from imgcls.evaluation.ledger import record_test_evaluation
from imgcls.evaluation.report import confident_mistakes
from imgcls.evaluation.sanity import (LABELS_HINT, find_lr_advice, learning_rate_hint, learning_warnings,
                                     lr_advice_warning, model_advice, overfitting_warning, useless_model_warnings)
from imgcls.evaluation.weight_images import model_figures
from imgcls.models.abstention import abstention_summary, fit_abstention
from imgcls.models.artifact import save_model
from imgcls.models.base import Classifier
from imgcls.models.calibration import check_method, default_method, fit_calibration, uncalibrated
from imgcls.progress import console, stdout
from imgcls.run_folder import RunFolder
from imgcls.task import TASKS
from imgcls.training.hooks import HistoryHook, ProgressHook, TrackingHook, write_history
from imgcls.training.tracking import Tracker

CURVES_TITLE = "Training curves: loss and accuracy per epoch"


@dataclass
class RunResult:
    out: Path
    model_path: Path
    report_paths: dict[str, Path]
    metrics: dict
    test_evaluations: int = 0      # looks at the test split recorded in out, this one included
    calibration: dict | None = None   # report.json's "calibration" (see calibration_report), if calibrated


@dataclass
class FittedModel:
    """A model fitted on train and made ready on val (calibrated, abstaining if asked), with what
    fitting showed; the test split is untouched."""

    model: Classifier
    name: str
    fit_seconds: float
    validation: dict = field(default_factory=dict)   # {"val_accuracy": ...} or {"val_mAP": ...}; {} without val
    validation_seconds: float = 0.0                  # predicting the validation split (what test will cost)
    figures: dict[str, Path] = field(default_factory=dict)   # the training curves, where it has a history

    @property
    def validation_score(self) -> float | None:
        """The validation headline (accuracy, or mAP for multi-label data): what candidates are ranked by."""
        return next(iter(self.validation.values()), None)


def fit_and_report(model, name: str, splits: DatasetSplits, out: Path, config: dict, *, resume: bool = False,
                   rank: int = 0, print_table: bool = True, tracker: Tracker | None = None,
                   abstain: dict | None = None, calibration: str = "auto") -> RunResult | None:
    """fit_and_validate, then finish_run: evaluate once on test, save the model and the reports in
    out. Returns None on the ranks other than 0 of a distributed run. A tracker (rank 0's) gets
    every epoch's record and, from finish_run, the final report."""
    fitted = fit_and_validate(model, name, splits, out, resume=resume, rank=rank, tracker=tracker, abstain=abstain,
                              calibration=calibration)
    if fitted is None:
        return None
    return finish_run(model, name, splits, out, extra_metrics=fitted.validation,
                      timings={"fit_seconds": fitted.fit_seconds}, config=config, figures=fitted.figures,
                      print_table=print_table, tracker=tracker)


def fit_and_validate(model, name: str, splits: DatasetSplits, out: str | Path | None = None, *,
                     resume: bool = False, rank: int = 0, tracker: Tracker | None = None,
                     abstain: dict | None = None, calibration: str = "auto", hooks: list | tuple = ()
                     ) -> FittedModel | None:
    """Fit on train (validating on val), calibrate on val, fit an abstention on val if asked, and
    measure the validation headline. With out, the run folder gets the training's checkpoints,
    history files and curves (none without). Returns None on the ranks other than 0 of a
    distributed run.

    calibration: "auto" (temperature scaling for models with logits, see
    imgcls.models.calibration.default_method), "none", or a method of imgcls.models.calibration.METHODS.
    abstain ({"accept", "score"}): after calibrating, the model learns to answer "unknown", its
    threshold chosen on val (imgcls.models.abstention.fit_abstention). hooks join the training loop's
    own (a deadline, say; imgcls.training.trainer.Hook)."""
    hooks = ([ProgressHook()] + ([HistoryHook(out)] if out is not None else []) + list(hooks)) if rank == 0 else []
    tracking = TrackingHook(tracker) if tracker is not None else None
    hooks += [tracking] if tracking else []
    start = time.perf_counter()
    model.fit(splits.train, validation=splits.val, run_dir=out, resume=resume, hooks=hooks)
    fit_seconds = time.perf_counter() - start
    if rank != 0:
        return None
    # streamed files that stopped decoding mid-training
    splits.skipped += [SkippedFile(file, reason) for file, reason in model.unreadable_files_]
    calibrate_on_validation(model, splits, calibration)
    fitted = FittedModel(model, name, fit_seconds)
    if abstain:
        model.abstention_ = fit_abstention(model, splits.val, abstain["accept"], abstain["score"],
                                           reference=splits.train)
        console.print(f"abstention: {model.abstention_.describe()}", highlight=False)
    if splits.val is not None and len(splits.val):
        val_eval, fitted.validation_seconds = evaluate_model(model, splits.val, splits.skipped)
        if val_eval.headline_value is not None:        # val_accuracy, or val_mAP for multi-label models
            fitted.validation[f"val_{TASKS[val_eval.task].headline}"] = val_eval.headline_value
    if tracking:
        tracking.catch_up(model.history_)
    if model.history_ and out is not None:
        fitted.figures[CURVES_TITLE] = write_history(model.history_, Path(out), model.task_.multi_label)["curves"]
    return fitted


def calibrate_on_validation(model, splits: DatasetSplits, calibration: str = "auto") -> None:
    """Fit the model's calibration on splits.val, in place: the method asked for, or with "auto"
    the model's default (none for kNN, linear and multi-label models). Without validation images
    there is nothing to fit on: "auto" says so and goes on, a method asked for is an error."""
    check_method(model, calibration)
    method = default_method(model) if calibration == "auto" else None if calibration == "none" else calibration
    if method is None:
        return
    if splits.val is None or not len(splits.val):
        if calibration != "auto":
            raise ImgclsError(f"{method} calibration is fitted on the validation split, and {splits.name} has none "
                              "(use a --val-fraction above 0)")
        console.print("[yellow]note:[/] no validation images: the model is left uncalibrated")
        return
    model.calibration_ = fit_calibration(model, splits.val, method)


def calibration_report(model, evaluation, data, out: Path | None, split: str = "test"
                       ) -> tuple[dict | None, dict[str, Path]]:
    """(report.json's "calibration": the method, its parameters and ECE, NLL and Brier before and
    after it on data, the split the evaluation measured; the reliability diagram as a figure) for a
    calibrated single-label model; (None, {}) for the others. The uncalibrated probabilities come
    from predicting data again without the calibration."""
    calibration = model.calibration_
    if calibration is None or evaluation.task != "single-label":
        return None, {}
    before, _ = evaluate_model(uncalibrated(model), data)
    if len(before.y_true) != len(evaluation.y_true):      # a streamed file stopped decoding in between
        return None, {}
    summary = calibration_summary(evaluation.y_true, before.proba, evaluation.proba, calibration.to_dict(), split)
    figures = {}
    if out is not None:
        path = plot_reliability(evaluation.y_true, before.proba, evaluation.proba, RunFolder(out).make().reliability,
                                split)
        figures[f"Reliability diagram before and after {summary['method']} calibration ({BINS_TEXT}, "
                f"{split} split)"] = path
    return summary, figures


def print_calibration(summary: dict | None) -> None:
    """One line: the calibration and its ECE, NLL and Brier score before -> after."""
    if summary is None:
        return
    what = (f"temperature scaling (T = {summary['temperature']:.3f})" if summary["method"] == "temperature"
            else f"{summary['method']} calibration")
    changes = "   ".join(f"{name} {summary['before'][key]:.4f} → {summary['after'][key]:.4f}"
                         for key, name in (("ece", "ECE"), ("nll", "NLL"), ("brier", "Brier")))
    stdout.print(f"{what}, fitted on validation; {summary['measured_on']} split: {changes}   "
                 f"(ECE: {BINS_TEXT})", highlight=False)


def finish_run(model, name: str, splits: DatasetSplits, out: str | Path, *, title: str | None = None,
               extra_metrics: dict | None = None, timings: dict | None = None, sizes: dict | None = None,
               config: dict | None = None, figures: dict[str, Path] | None = None, report: dict | None = None,
               command: str | None = None, print_table: bool = True, tracker: Tracker | None = None) -> RunResult:
    """Evaluate the fitted model once on splits.test, record that look in out, save the model with
    its test metrics (and extra_metrics, e.g. val_accuracy) in out, and write the reports there.

    extra_metrics, timings, sizes, config, figures and title describe the run in the report;
    report's keys join report.json beside the evaluation's own (a tuner's table, say).
    A tracker gets report.json's figures and the report's files.
    """
    out = Path(out)
    run = RunFolder(out)
    evaluation, predict_seconds = evaluate_model(model, splits.test, splits.skipped)   # the one look at test
    count = record_test_evaluation(out, name, command)
    extra = dict(extra_metrics or {})
    model.metrics_ = {**evaluation.headline(), **extra, "evaluated_on": f"{splits.name} test"}
    model_path = save_model(model, out)
    timings = {**(timings or {}), "predict_seconds": predict_seconds}
    warnings, lr_advice = run_warnings(model, name, evaluation, splits.name, out)
    info = RunInfo(title=title or f"{name} on {splits.name}", model=name, params=model.get_params(),
                   dataset=splits.name, sizes=sizes or splits.summary(), timings=timings,
                   skipped_files=[s.to_dict() for s in splits.skipped], extra_metrics=extra,
                   config={**(config or {}), "test_evaluations": count}, warnings=warnings)
    calibration, calibration_figures = calibration_report(model, evaluation, splits.test, out)
    abstention = abstention_summary(model, splits.test) if evaluation.task == "single-label" else None
    if print_table:
        print_report(evaluation, info, stdout)
        print_calibration(calibration)
        if abstention:
            stdout.print(f"abstention: {abstention['text']}; on the test split it accepts "
                         f"{abstention['test_accepted']:.1%}", highlight=False)
    else:                                   # the table is left out (compare prints its own); the warnings are not
        for warning in warnings:
            console.print(f"[bold yellow]warning:[/] {name}: {warning}", highlight=False)
    if count > 1:
        console.print(f"[yellow]note:[/] the test split has now been evaluated {count} times in {out} "
                      f"(see {run.test_evaluations})")
    # filters or templates, where it has them; the reliability diagram of a calibrated model
    figures = {**(figures or {}), **model_figures(model, out), **calibration_figures}
    paths = write_report(evaluation, info, out, images=splits.test.images, figures=figures,
                         heatmaps=mistake_heatmaps(model, evaluation, splits.test.images), calibration=calibration,
                         abstention=abstention, extra=report)
    data = json.loads(paths["json"].read_text())
    data.update({**(report or {}), "test_evaluations": count, **({"lr_find": lr_advice} if lr_advice else {})})
    run.write_json(paths["json"], data)
    if tracker is not None:
        history = [run.history_json, run.history_csv]
        files = [*paths.values(), *(figures or {}).values(), *(p for p in history if p.is_file())]
        epochs = model.history_ or [{"epoch": 0}]
        tracker.log_report(data, list(dict.fromkeys(files)), step=epochs[-1]["epoch"])
    metrics = {**model.metrics_, **timings, "macro_f1": evaluation.macro_avg["f1"]}
    return RunResult(out, model_path, paths, metrics, count, calibration)


def run_warnings(model, name: str, evaluation, dataset: str, out: Path) -> tuple[list[str], dict | None]:
    """What the run's report should warn about (imgcls.evaluation.sanity): a useless or collapsed
    single-label model, a network that did not learn (its history), overfitting, and a learning
    rate far from the finder's advice (found beside the run; see find_lr_advice), with that advice
    to record. Each warning says what to try for this model."""
    found = []
    history = model.history_
    lr, advice = model.get_params().get("lr"), find_lr_advice(out, name, dataset)
    hint = learning_rate_hint(model.model_name, lr, advice[0]["suggested_lr"] if advice else None)
    if evaluation.task == "single-label" and evaluation.y_pred is not None:
        remedy = "; or ".join(a for a in (model_advice(model.model_name), hint) if a) or LABELS_HINT
        found += useless_model_warnings(evaluation.y_true, evaluation.y_pred, evaluation.class_names, remedy)
        share = np.bincount(evaluation.y_true, minlength=len(evaluation.class_names)) / max(len(evaluation.y_true), 1)
        found += learning_warnings(history, share, remedy)
    found += overfitting_warning(history)
    if lr is None or advice is None:
        return found, None
    (result, path) = advice
    found += lr_advice_warning(lr, result["suggested_lr"], f"imgcls lr-find ({path})")
    return found, {"suggested_lr": result["suggested_lr"], "lr": lr, "file": str(path)}


def mistake_heatmaps(model, evaluation, images) -> dict[int, np.ndarray] | None:
    """Grad-CAM maps of the predicted class for the most confident mistakes the report shows (image
    index -> map), for a single-label convolutional network; None for other models (kNN, linear, an
    MLP, exported files) and for multi-label reports, whose mistakes are single labels."""
    if model.capabilities.explained_by != "network" or evaluation.task != "single-label" or evaluation.y_pred is None:
        return None
    from imgcls.explain import explain
    chosen = confident_mistakes(evaluation)
    if not len(chosen):
        return None
    try:
        found = explain(model, images[chosen.tolist()], method="gradcam")
    except ImgclsError:          # no convolutional layer: Grad-CAM does not apply
        return None
    return {int(chosen[e.image]): e.map for e in found}
