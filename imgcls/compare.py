"""Compare several models on identical splits: the course's ladder from kNN to transfer learning.

Every model is trained on the same train split (validated on the same val split) and evaluated
once on the same test split; each gets its own run folder under DIR, and DIR/leaderboard.json
and DIR/compare.html put them side by side (test accuracy, macro F1, training time, prediction
time per image, model size, parameters), with each model's confusion matrix and curves.
"""

from __future__ import annotations

import base64
import json
from dataclasses import asdict
from pathlib import Path

from jinja2 import Environment, PackageLoader, select_autoescape
from rich.table import Table

from imgcls import __version__
from imgcls.data.load import DataOptions, load_dataset
from imgcls.finish import fit_and_report
from imgcls.models.registry import create_model
from imgcls.progress import console, stdout

_ENV = Environment(loader=PackageLoader("imgcls", "evaluation/templates"), autoescape=select_autoescape())


def compare(data: str, models: list[str], out: str | Path, options: DataOptions, params: dict[str, dict]) -> list[dict]:
    """Train and evaluate each model; returns the leaderboard rows, best test accuracy first."""
    built = {name: create_model(name, **params.get(name, {})) for name in models}   # bad names fail first
    splits = load_dataset(data, options)
    out = Path(out)
    rows = []
    for name, model in built.items():
        console.print(f"[bold]{name}[/] ({len(rows) + 1}/{len(built)})")
        folder = out / name.replace(":", "-")
        config = {"data": data, "model": name, "params": model.get_params(), "data_options": asdict(options)}
        result = fit_and_report(model, name, splits, folder, config, print_table=False)
        rows.append(_row(name, model, result, len(splits.test)))
    rows.sort(key=lambda r: -r["test_accuracy"])
    (out / "leaderboard.json").write_text(json.dumps(rows, indent=2))
    (out / "compare.html").write_text(_render(rows, splits, out))
    print_leaderboard(rows, splits.name)
    return rows


def _row(name: str, model, result, n_test: int) -> dict:
    metrics = result.metrics
    return {"model": name, "test_accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"],
            "val_accuracy": metrics.get("val_accuracy"), "fit_seconds": metrics["fit_seconds"],
            "predict_ms_per_image": 1000 * metrics["predict_seconds"] / max(n_test, 1),
            "model_bytes": result.model_path.stat().st_size, "parameters": _parameters(model),
            "folder": result.out.name}


def _parameters(model) -> int:
    net = getattr(model, "net_", None)
    if net is not None:
        return sum(p.numel() for p in net.parameters())
    weight = getattr(model, "weight_", None)
    return weight.numel() + model.bias_.numel() if weight is not None else 0


def print_leaderboard(rows: list[dict], dataset: str) -> None:
    table = Table(title=f"Leaderboard on {dataset} (test split, evaluated once per model)", title_justify="left")
    for column in ("model", "test acc", "macro F1", "train s", "ms/image", "size", "parameters"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for r in rows:
        table.add_row(r["model"], f"{r['test_accuracy']:.2%}", f"{r['macro_f1']:.3f}", f"{r['fit_seconds']:.1f}",
                      f"{r['predict_ms_per_image']:.3f}", _size(r["model_bytes"]), f"{r['parameters']:,}")
    stdout.print(table)


def _render(rows: list[dict], splits, out: Path) -> str:
    def embed(path: Path) -> str | None:
        return base64.b64encode(path.read_bytes()).decode() if path.is_file() else None
    figures = {r["model"]: {"confusion": embed(out / r["folder"] / "confusion_matrix.png"),
                            "curves": embed(out / r["folder"] / "curves.png")} for r in rows}
    return _ENV.get_template("compare.html").render(rows=rows, figures=figures, dataset=splits.name,
                                                    sizes=splits.summary(), size=_size, version=__version__)


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
