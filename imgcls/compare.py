"""Compare several models on identical splits: the course's ladder from kNN to transfer learning.

Every model is trained on the same train split (validated on the same val split) and evaluated
once on the same test split; each gets its own run folder under DIR (config.json included, as
any run's; imgcls.run_folder), and DIR/leaderboard.json and DIR/compare.html put them side by
side (test accuracy, macro F1, training time, prediction time per image, model size,
parameters), with each model's confusion matrix and curves.

Models are ranked by their task's headline figure (imgcls.task: accuracy, or mAP for multi-label
data), so a multi-label leaderboard has test_mAP, macro_f1 and subset_accuracy columns where a
single-label one has test_accuracy and macro_f1, and PR curves in place of confusion matrices.
All models see the same dataset, so one comparison has one task and one table shape.
"""

from __future__ import annotations

import base64
from dataclasses import asdict
from pathlib import Path

from jinja2 import Environment, PackageLoader, select_autoescape
from rich.table import Table

from imgcls import __version__
from imgcls.data.load import DataOptions, load_dataset
from imgcls.fit_and_evaluate import fit_and_report
from imgcls.models.registry import create_model
from imgcls.progress import console, stdout
from imgcls.run_folder import RunFolder, write_config
from imgcls.task import SingleLabel, Task
from imgcls.training.tracking import check_available, tracking

# The figures a leaderboard shows besides the headline, by task, and how every figure is shown:
# (terminal column, HTML column, as a percentage).
_FIGURES = {"single-label": ("macro_f1",), "multi-label": ("macro_f1", "subset_accuracy")}
_SHOWN = {"test_accuracy": ("test acc", "Test accuracy", True), "test_mAP": ("mAP", "Test mAP", False),
          "val_accuracy": ("val acc", "Val accuracy", True), "val_mAP": ("val mAP", "Val mAP", False),
          "macro_f1": ("macro F1", "Macro F1", False), "subset_accuracy": ("subset acc", "Subset accuracy", True)}

_ENV = Environment(loader=PackageLoader("imgcls", "evaluation/templates"), autoescape=select_autoescape())


def compare(data: str, models: list[str], out: str | Path, options: DataOptions, params: dict[str, dict],
            log: str | None = None) -> list[dict]:
    """Train and evaluate each model; returns the leaderboard rows, best first by the task's headline
    figure (test accuracy, or test mAP for multi-label data). With log ("tensorboard" or "mlflow")
    each model's run also goes to that tracker (MLflow: one store in out, one run per model)."""
    if log:
        check_available(log)
    built = {name: create_model(name, **params.get(name, {})) for name in models}   # bad names fail first
    # One decoding for all (identical splits): files are decoded by the flags, not by any one model.
    splits = load_dataset(data, options)
    run = RunFolder(out)
    task = splits.train.task
    for model in built.values():       # every model must take the data before the first is trained
        model.check_can_learn(task)
    rows = []
    for name, model in built.items():
        console.print(f"[bold]{name}[/] ({len(rows) + 1}/{len(built)})")
        folder = run.member(name).path
        config = {"data": data, "model": name, "params": model.get_params(), "out": str(folder),
                  "data_options": asdict(options), "log": log, "imgcls_version": __version__}
        write_config(folder, config)
        with tracking(log, folder, config=config, experiment=splits.name, run_name=name, store=run.path) as tracker:
            result = fit_and_report(model, name, splits, folder, config, print_table=False, tracker=tracker)
        rows.append(_row(name, model, result, len(splits.test), task))
    rank_rows(rows, task)
    run.write_json(run.leaderboard, rows)
    run.compare_html.write_text(_render(rows, splits, run, task))
    print_leaderboard(rows, splits.name, task)
    return rows


def rank_rows(rows: list[dict], task: Task) -> list[dict]:
    """Sort rows in place, best test headline first; a model without one (mAP is undefined when no
    test image has a label) goes last."""
    key = f"test_{task.headline}"
    rows.sort(key=lambda r: -r[key] if r[key] is not None else float("inf"))
    return rows


def _row(name: str, model, result, n_test: int, task: Task) -> dict:
    # result.metrics holds the evaluation's headline() (accuracy or mAP, macro_f1, subset_accuracy...)
    # and the run's extra figures (val_accuracy or val_mAP) and timings.
    metrics, headline = result.metrics, task.headline
    return {"model": name, f"test_{headline}": metrics.get(headline),
            **{figure: metrics.get(figure) for figure in _FIGURES[task.kind]},
            f"val_{headline}": metrics.get(f"val_{headline}"), "fit_seconds": metrics["fit_seconds"],
            "predict_ms_per_image": 1000 * metrics["predict_seconds"] / max(n_test, 1),
            "model_bytes": result.model_path.stat().st_size, "parameters": model.parameter_count,
            "folder": result.out.name}


def _columns(task: Task, html: bool = False) -> list[str]:
    """The figures of a leaderboard, headline first (with the val headline, in HTML)."""
    val = [f"val_{task.headline}"] if html else []
    return [f"test_{task.headline}", *_FIGURES[task.kind], *val]


def _figure(value: float | None, percent: bool) -> str:
    if value is None:
        return "-"
    return f"{value:.2%}" if percent else f"{value:.3f}"


def print_leaderboard(rows: list[dict], dataset: str, task: Task | None = None) -> None:
    """The leaderboard as a terminal table; task (default: single-label) decides its figures."""
    figures = _columns(task or SingleLabel())
    table = Table(title=f"Leaderboard on {dataset} (test split, evaluated once per model)", title_justify="left")
    for column in ("model", *(_SHOWN[f][0] for f in figures), "train s", "ms/image", "size", "parameters"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for r in rows:
        table.add_row(r["model"], *(_figure(r[f], _SHOWN[f][2]) for f in figures), f"{r['fit_seconds']:.1f}",
                      f"{r['predict_ms_per_image']:.3f}", _size(r["model_bytes"]), f"{r['parameters']:,}")
    stdout.print(table)


def _render(rows: list[dict], splits, run: RunFolder, task: Task) -> str:
    def embed(path: Path) -> str | None:
        return base64.b64encode(path.read_bytes()).decode() if path.is_file() else None

    def figures_of(member: RunFolder) -> list[tuple[str, str, str | None]]:
        # A multi-label run has PR curves where a single-label one has its confusion matrix.
        first = ((member.pr_curves, "Precision-recall curves", "precision-recall curves") if task.multi_label
                 else (member.confusion_matrix, "Confusion matrix", "confusion matrix"))
        return [(caption, alt, embed(path))
                for path, caption, alt in (first, (member.curves, "Training curves", "training curves"))]
    figures = {r["model"]: figures_of(RunFolder(run.path / r["folder"])) for r in rows}
    columns = [(key, _SHOWN[key][1], _SHOWN[key][2]) for key in _columns(task, html=True)]
    return _ENV.get_template("compare.html").render(rows=rows, figures=figures, columns=columns, dataset=splits.name,
                                                    sizes=splits.summary(), size=_size, figure=_figure,
                                                    version=__version__)


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
