"""The end of every run, written once: evaluate on the test split once, record that look, save
the model with its test metrics, and write the reports, all in the run folder.

`imgcls train` and `imgcls compare` (through fit_and_report) and both tuners (kNN
cross-validation, network search) end here, so what a run folder holds and how often its test
split was looked at read the same for all of them.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imgcls.data.dataset import DatasetSplits, SkippedFile
from imgcls.errors import ImgclsError
from imgcls.evaluation import RunInfo, evaluate_model, print_report, write_report
from imgcls.evaluation.ledger import LOG_FILE, record_test_evaluation
from imgcls.evaluation.report import confident_mistakes
from imgcls.evaluation.sanity import find_lr_advice, lr_advice_warning, overfitting_warning, useless_model_warnings
from imgcls.evaluation.weights import model_figures
from imgcls.models.abstention import fit_abstention
from imgcls.models.artifact import save_model
from imgcls.progress import console, stdout
from imgcls.task import TASKS
from imgcls.training.hooks import HistoryHook, ProgressHook, TrackingHook, write_history
from imgcls.training.tracking import Tracker


@dataclass
class RunResult:
    out: Path
    model_path: Path
    report_paths: dict[str, Path]
    metrics: dict
    test_evaluations: int = 0      # looks at the test split recorded in out, this one included


def fit_and_report(model, name: str, splits: DatasetSplits, out: Path, config: dict, *, resume: bool = False,
                   rank: int = 0, print_table: bool = True, tracker: Tracker | None = None,
                   abstain: dict | None = None) -> RunResult | None:
    """Fit on train (validating on val), then finish_run: evaluate once on test, save the model and
    the reports in out. Returns None on the ranks other than 0 of a distributed run.

    A tracker (rank 0's) gets every epoch's record and, from finish_run, the final report.
    abstain ({"accept", "score"}): after fitting, the model learns to answer "unknown", its
    threshold chosen on val (imgcls.models.abstention.fit_abstention)."""
    hooks = [ProgressHook(), HistoryHook(out)] if rank == 0 else []
    tracking = TrackingHook(tracker) if tracker is not None else None
    hooks += [tracking] if tracking else []
    start = time.perf_counter()
    model.fit(splits.train, validation=splits.val, run_dir=out, resume=resume, hooks=hooks)
    fit_seconds = time.perf_counter() - start
    if rank != 0:
        return None
    state = getattr(model, "train_state_", None)       # streamed files that stopped decoding mid-training
    splits.skipped += [SkippedFile(name, reason) for name, reason in getattr(state, "unreadable", [])]
    extra = {}
    if abstain:
        model.abstention_ = fit_abstention(model, splits.val, abstain["accept"], abstain["score"],
                                           reference=splits.train)
        console.print(f"abstention: {abstain['score']} above {model.abstention_.threshold:.4g} answers unknown "
                      f"(accepts {model.abstention_.fitted_on['accepted']:.1%} of val)")
    if splits.val is not None and len(splits.val):
        val_eval, _ = evaluate_model(model, splits.val, splits.skipped)
        if val_eval.headline_value is not None:        # val_accuracy, or val_mAP for multi-label models
            extra[f"val_{TASKS[val_eval.task].headline}"] = val_eval.headline_value
    figures = {}
    if tracking:
        tracking.catch_up(getattr(model, "history_", None) or [])
    if getattr(model, "history_", None):
        figures["Training curves: loss and accuracy per epoch"] = write_history(model.history_, out, model.task_.multi_label)["curves"]
    return finish_run(model, name, splits, out, extra_metrics=extra, timings={"fit_seconds": fit_seconds},
                      config=config, figures=figures, print_table=print_table, tracker=tracker)


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
    if print_table:
        print_report(evaluation, info, stdout)
    else:                                   # the table is left out (compare prints its own); the warnings are not
        for warning in warnings:
            console.print(f"[bold yellow]warning:[/] {name}: {warning}", highlight=False)
    if count > 1:
        console.print(f"[yellow]note:[/] the test split has now been evaluated {count} times in {out} "
                      f"(see {out / LOG_FILE})")
    figures = {**(figures or {}), **model_figures(model, out)}       # filters or templates, where it has them
    paths = write_report(evaluation, info, out, images=splits.test.images, figures=figures,
                         heatmaps=mistake_heatmaps(model, evaluation, splits.test.images))
    data = json.loads(paths["json"].read_text())
    data.update({**(report or {}), "test_evaluations": count, **({"lr_find": lr_advice} if lr_advice else {})})
    paths["json"].write_text(json.dumps(data, indent=2))
    if tracker is not None:
        history = [out / "history.json", out / "history.csv"]
        files = [*paths.values(), *(figures or {}).values(), *(p for p in history if p.is_file())]
        epochs = getattr(model, "history_", None) or [{"epoch": 0}]
        tracker.log_report(data, list(dict.fromkeys(files)), step=epochs[-1]["epoch"])
    metrics = {**model.metrics_, **timings, "macro_f1": evaluation.macro_avg["f1"]}
    return RunResult(out, model_path, paths, metrics, count)


def run_warnings(model, name: str, evaluation, dataset: str, out: Path) -> tuple[list[str], dict | None]:
    """What the run's report should warn about (imgcls.evaluation.sanity): a useless or collapsed
    single-label model, overfitting in its history, and a learning rate far from the finder's
    advice (found beside the run; see find_lr_advice), with that advice to record."""
    found = []
    if evaluation.task == "single-label" and evaluation.y_pred is not None:
        found += useless_model_warnings(evaluation.y_true, evaluation.y_pred, evaluation.class_names)
    found += overfitting_warning(getattr(model, "history_", None) or [])
    lr, advice = model.get_params().get("lr"), find_lr_advice(out, name, dataset)
    if lr is None or advice is None:
        return found, None
    (result, path) = advice
    found += lr_advice_warning(lr, result["suggested_lr"], f"imgcls lr-find ({path})")
    return found, {"suggested_lr": result["suggested_lr"], "lr": lr, "file": str(path)}


def mistake_heatmaps(model, evaluation, images) -> dict[int, np.ndarray] | None:
    """Grad-CAM maps of the predicted class for the most confident mistakes the report shows (image
    index -> map), for a single-label convolutional network; None for other models (kNN, linear, an
    MLP, exported files) and for multi-label reports, whose mistakes are single labels."""
    if model.explained_by != "network" or evaluation.task != "single-label" or evaluation.y_pred is None:
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
