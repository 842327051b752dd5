"""Reports of an evaluation: a terminal table, report.json, report.html and PNG figures."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from jinja2 import Environment, PackageLoader, select_autoescape
from rich.console import Console
from rich.table import Table

from imgcls import __version__
from imgcls.evaluation.metrics import Evaluation


@dataclass
class RunInfo:
    """What was evaluated, on what, and how long it took."""

    title: str
    model: str
    params: dict
    dataset: str
    split: str = "test"
    sizes: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    skipped_files: list = field(default_factory=list)
    extra_metrics: dict = field(default_factory=dict)   # e.g. {"val_accuracy": 0.9}
    config: dict = field(default_factory=dict)


def print_report(ev: Evaluation, info: RunInfo, console: Console | None = None) -> None:
    console = console or Console()
    table = Table(title=f"{info.title}: {info.split} split, {ev.support:,} images", title_justify="left")
    table.add_column("class")
    for name in ("precision", "recall", "f1"):
        table.add_column(name, justify="right")
    table.add_column("support", justify="right")
    for name, row in ev.per_class.items():
        table.add_row(name, *(f"{row[m]:.3f}" for m in ("precision", "recall", "f1")), f"{row['support']:,}")
    table.add_section()
    for label, row in (("macro avg", ev.macro_avg), ("weighted avg", ev.weighted_avg)):
        table.add_row(label, *(f"{row[m]:.3f}" for m in ("precision", "recall", "f1")), f"{row['support']:,}")
    console.print(table)
    line = f"accuracy [bold]{ev.accuracy:.2%}[/]"
    if ev.top5_accuracy is not None:
        line += f"   top-5 accuracy {ev.top5_accuracy:.2%}"
    for key, value in info.extra_metrics.items():
        line += f"   {key.replace('_', ' ')} {value:.2%}"
    console.print(line)
    if info.skipped_files:
        console.print(f"[yellow]{len(info.skipped_files)} unreadable file(s) skipped[/] (listed in the report)")


def write_report(ev: Evaluation, info: RunInfo, out_dir: str | Path, *, images=None,
                 figures: dict[str, Path] | None = None) -> dict[str, Path]:
    """Write report.json, confusion_matrix.png, mistakes.png (given the evaluated images) and
    report.html into out_dir; return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "report.json", "confusion_matrix": out_dir / "confusion_matrix.png",
             "html": out_dir / "report.html"}
    data = {**ev.to_dict(), **info.extra_metrics, "skipped_files": info.skipped_files,
            "model": info.model, "params": info.params, "dataset": info.dataset, "split": info.split,
            "sizes": info.sizes, "timings": info.timings, "imgcls_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    paths["json"].write_text(json.dumps(data, indent=2))
    plot_confusion_matrix(ev, paths["confusion_matrix"])
    shown = {"Confusion matrix": paths["confusion_matrix"], **(figures or {})}
    if images is not None and ev.y_pred is not None and plot_mistakes(ev, images, out_dir / "mistakes.png"):
        paths["mistakes"] = shown["Most confident mistakes: true class → predicted class (confidence)"] = \
            out_dir / "mistakes.png"
    paths["html"].write_text(render_html(ev, info, data, shown))
    return paths


def plot_confusion_matrix(ev: Evaluation, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = ev.confusion_matrix
    n = len(ev.class_names)
    row_sums = cm.sum(1, keepdims=True)
    normalised = np.divide(cm, row_sums, out=np.zeros(cm.shape), where=row_sums > 0)
    side = min(max(5.0, 0.55 * n + 2.5), 30.0)
    fig, ax = plt.subplots(figsize=(side, side * 0.85), dpi=110)
    im = ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    if n <= 30:
        ax.set_xticks(range(n), ev.class_names, rotation=45, ha="right")
        ax.set_yticks(range(n), ev.class_names)
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                            color="white" if normalised[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"Confusion matrix (accuracy {ev.accuracy:.2%})")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_mistakes(ev: Evaluation, images, path: Path, n: int = 24) -> Path | None:
    """A grid of the most confident mistakes: each image titled 'true -> predicted (confidence)'."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    wrong = np.flatnonzero(ev.y_pred != ev.y_true)
    if len(wrong) == 0:
        return None
    confidence = ev.proba[wrong, ev.y_pred[wrong]]
    chosen = wrong[np.argsort(-confidence, kind="stable")[:n]]
    cols = min(8, len(chosen))
    rows = (len(chosen) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.6, rows * 1.9), squeeze=False, dpi=100)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, chosen):
        image = images[i].permute(1, 2, 0).numpy()
        ax.imshow(image[..., 0] if image.shape[2] == 1 else image, cmap="gray", vmin=0, vmax=255,
                  interpolation="nearest")
        ax.set_title(f"{ev.class_names[ev.y_true[i]]}\n→ {ev.class_names[ev.y_pred[i]]} "
                     f"({ev.proba[i, ev.y_pred[i]]:.0%})", fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


_ENV = Environment(loader=PackageLoader("imgcls", "evaluation/templates"), autoescape=select_autoescape())


def render_html(ev: Evaluation, info: RunInfo, data: dict, images: dict[str, Path]) -> str:
    """One self-contained HTML file: figures are embedded, nothing is fetched from the network."""
    embedded = {title: base64.b64encode(Path(p).read_bytes()).decode() for title, p in images.items()
                if Path(p).is_file()}
    return _ENV.get_template("report.html").render(ev=ev, info=info, data=data, images=embedded,
                                                   version=__version__)
