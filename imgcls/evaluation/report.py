"""Reports of an evaluation: a terminal table, report.json, report.html and PNG figures."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from jinja2 import Environment, PackageLoader, select_autoescape
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from imgcls import __version__
from imgcls.evaluation.metrics import Evaluation
from imgcls.evaluation.multilabel import MultiLabelEvaluation, precision_recall_curve
from imgcls.run_folder import RunFolder

PR_CURVES = "Precision-recall curves of the labels with the lowest average precision"
LABEL_MISTAKES = ("Most confident mistakes: FP, a label predicted that the image lacks; "
                  "FN, a label it carries that was missed (probability of the label)")
MISTAKES = "Most confident mistakes: true class → predicted class (confidence)"
MISTAKES_EXPLAINED = ("Most confident mistakes: true class → predicted class (confidence), each with the "
                      "heatmap of the evidence it saw for the predicted class ({method})")
MISTAKES_SHOWN = 24


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
    warnings: list[str] = field(default_factory=list)   # about the model itself (imgcls.evaluation.sanity)


def print_report(ev: Evaluation | MultiLabelEvaluation, info: RunInfo, console: Console | None = None) -> None:
    console = console or Console()
    if ev.task == MultiLabelEvaluation.task:
        return _print_multilabel(ev, info, console)
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
        line += f"   {key.replace('_', ' ')} {_figure(key, value)}"
    console.print(line)
    _print_skipped(info, console)
    _print_warnings(info, console)


def _print_warnings(info: RunInfo, console: Console) -> None:
    for warning in info.warnings:
        console.print(f"[bold yellow]warning:[/] {escape(warning)}", highlight=False)


def _print_multilabel(ev: MultiLabelEvaluation, info: RunInfo, console: Console) -> None:
    table = Table(title=f"{info.title}: {info.split} split, {ev.support:,} images", title_justify="left")
    table.add_column("label")
    for name in ("precision", "recall", "f1", "AP", "support", "threshold"):
        table.add_column(name, justify="right")
    for name, row in ev.per_class.items():
        table.add_row(escape(name), *(f"{row[m]:.3f}" for m in ("precision", "recall", "f1")),
                      _ap_text(row["average_precision"]), f"{row['support']:,}", f"{row['threshold']:.3f}")
    table.add_section()
    for label, row, ap in (("micro avg", ev.micro_avg, ""), ("macro avg", ev.macro_avg, _ap_text(ev.mAP)),
                           ("samples avg", ev.samples_avg, "")):
        table.add_row(label, *(f"{row[m]:.3f}" for m in ("precision", "recall", "f1")), ap, f"{row['support']:,}", "")
    console.print(table)
    line = (f"mAP [bold]{_ap_text(ev.mAP)}[/]   micro F1 {ev.micro_avg['f1']:.3f}   macro F1 {ev.macro_avg['f1']:.3f}"
            f"   samples F1 {ev.samples_avg['f1']:.3f}   subset accuracy {ev.subset_accuracy:.2%}"
            f"   Hamming loss {ev.hamming_loss:.4f}")
    for key, value in info.extra_metrics.items():
        line += f"   {key.replace('_', ' ')} {_figure(key, value)}"
    console.print(line)
    for warning in ev.warnings:
        console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False)
    _print_skipped(info, console)
    _print_warnings(info, console)


def _figure(key: str, value: float) -> str:
    """Accuracies as percentages; mAP (an average precision) as a number in 0..1, as its table shows it."""
    return f"{value:.3f}" if "mAP" in key else f"{value:.2%}"


def _ap_text(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def _print_skipped(info: RunInfo, console: Console) -> None:
    if info.skipped_files:
        console.print(f"[yellow]{len(info.skipped_files)} unreadable file(s) skipped[/] (listed in the report)")


def write_report(ev: Evaluation | MultiLabelEvaluation, info: RunInfo, out_dir: str | Path, *, images=None,
                 figures: dict[str, Path] | None = None, heatmaps: dict[int, np.ndarray] | None = None,
                 heatmap_method: str = "Grad-CAM", calibration: dict | None = None,
                 abstention: dict | None = None, extra: dict | None = None) -> dict[str, Path]:
    """Write report.json, confusion_matrix.png, mistakes.png (given the evaluated images) and
    report.html into out_dir; return their paths. A multi-label evaluation gets pr_curves.png
    in place of the confusion matrix, and its mistakes are wrong labels rather than wrong classes.

    heatmaps (image index -> map at the images' size, for the indices confident_mistakes gives)
    are laid over the mistakes they belong to; the caller makes them (imgcls.explain sits above
    evaluation), and heatmap_method names the method in the caption. calibration (from
    imgcls.evaluation.calibration.calibration_summary) joins report.json and gets a table in the HTML;
    so does abstention (imgcls.models.abstention.abstention_summary): how the model answers "unknown".
    extra's keys join report.json too, and the HTML shows those it knows: `candidates` (the
    leaderboard of a run that chose its model, imgcls.planning) and `plan`."""
    run = RunFolder(out_dir).make()
    if images is not None and ev.rows is not None:   # streamed files that stopped decoding were left out
        images = images.subset(ev.rows)
    data = {**ev.to_dict(), **info.extra_metrics, "skipped_files": info.skipped_files,
            "model": info.model, "params": info.params, "dataset": info.dataset, "split": info.split,
            "sizes": info.sizes, "timings": info.timings, "imgcls_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    data["warnings"] = [*data.get("warnings", []), *info.warnings]   # a multi-label evaluation has its own too
    if calibration is not None:
        data["calibration"] = calibration
    if abstention is not None:
        data["abstention"] = abstention
    data.update(extra or {})
    if ev.task == MultiLabelEvaluation.task:
        return _write_multilabel(ev, info, run, data, images, figures)
    paths = {"json": run.report_json, "confusion_matrix": run.confusion_matrix, "html": run.report_html}
    run.write_json(paths["json"], data)
    plot_confusion_matrix(ev, paths["confusion_matrix"])
    shown = {"Confusion matrix": paths["confusion_matrix"], **(figures or {})}
    if images is not None and ev.y_pred is not None and plot_mistakes(ev, images, run.mistakes, heatmaps=heatmaps):
        title = MISTAKES_EXPLAINED.format(method=heatmap_method) if heatmaps else MISTAKES
        paths["mistakes"] = shown[title] = run.mistakes
    paths["html"].write_text(render_html(ev, info, data, shown))
    return paths


def _write_multilabel(ev: MultiLabelEvaluation, info: RunInfo, run: RunFolder, data: dict, images,
                      figures: dict[str, Path] | None) -> dict[str, Path]:
    paths = {"json": run.report_json, "html": run.report_html}
    run.write_json(paths["json"], data)
    shown = {}
    if plot_pr_curves(ev, run.pr_curves):
        paths["pr_curves"] = shown[PR_CURVES] = run.pr_curves
    shown.update(figures or {})
    if images is not None and plot_label_mistakes(ev, images, run.mistakes):
        paths["mistakes"] = shown[LABEL_MISTAKES] = run.mistakes
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


def confident_mistakes(ev: Evaluation, n: int = MISTAKES_SHOWN) -> np.ndarray:
    """Indices of the (up to) n wrongly classified images, the most confidently wrong first."""
    wrong = np.flatnonzero(ev.y_pred != ev.y_true)
    confidence = ev.proba[wrong, ev.y_pred[wrong]]
    return wrong[np.argsort(-confidence, kind="stable")[:n]]


def plot_mistakes(ev: Evaluation, images, path: Path, n: int = MISTAKES_SHOWN,
                  heatmaps: dict[int, np.ndarray] | None = None) -> Path | None:
    """A grid of the most confident mistakes: each image titled 'true -> predicted (confidence)',
    with its heatmap (from heatmaps, by image index) laid over it where one is given."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = confident_mistakes(ev, n)
    if len(chosen) == 0:
        return None
    fig, axes = _image_grid(len(chosen))
    for ax, i in zip(axes.flat, chosen):
        _show_image(ax, images[i])
        if heatmaps is not None and int(i) in heatmaps:
            heat = np.asarray(heatmaps[int(i)], dtype=np.float64)
            span = heat.max() - heat.min()
            heat = (heat - heat.min()) / span if span > 0 else np.zeros_like(heat)
            ax.imshow(heat, cmap="turbo", alpha=0.45, vmin=0, vmax=1, interpolation="bilinear")
        ax.set_title(f"{ev.class_names[ev.y_true[i]]}\n→ {ev.class_names[ev.y_pred[i]]} "
                     f"({ev.proba[i, ev.y_pred[i]]:.0%})", fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_pr_curves(ev: MultiLabelEvaluation, path: Path, n: int = 6) -> Path | None:
    """Precision against recall for the (up to) n labels with the lowest average precision;
    None when no label has a positive."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scored = [(row["average_precision"], j) for j, row in enumerate(ev.per_class.values())
              if row["average_precision"] is not None]
    if not scored:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 5.2), dpi=110)
    for ap, j in sorted(scored)[:n]:
        precision, recall, _ = precision_recall_curve(ev.y_true[:, j], ev.proba[:, j])
        # Steps as scikit-learn's PrecisionRecallDisplay draws them: the area under them is the AP.
        ax.step(recall, precision, where="post", label=f"{ev.class_names[j]} (AP {ap:.3f})")
    ax.set_xlim(0, 1.01)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(f"Lowest average precision (mAP {ev.mAP:.3f} over {len(scored)} labels)")
    ax.legend(loc="lower left", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_label_mistakes(ev: MultiLabelEvaluation, images, path: Path, n: int = 24) -> Path | None:
    """A grid of the most confident wrong labels: false positives by highest probability, then
    false negatives by lowest, each image titled 'FP|FN label (probability)'; None without mistakes."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = ev.proba
    false_pos = np.argwhere((ev.y_pred == 1) & (ev.y_true == 0))
    false_neg = np.argwhere((ev.y_pred == 0) & (ev.y_true == 1))
    false_pos = false_pos[np.argsort(-p[tuple(false_pos.T)], kind="stable")]
    false_neg = false_neg[np.argsort(p[tuple(false_neg.T)], kind="stable")]
    # Half of the grid each, unless one kind has fewer to show.
    k_pos = min(len(false_pos), max(n // 2, n - len(false_neg)))
    chosen = [("FP", i, j) for i, j in false_pos[:k_pos]] + [("FN", i, j) for i, j in false_neg[:n - k_pos]]
    if not chosen:
        return None
    fig, axes = _image_grid(len(chosen))
    for ax, (kind, i, j) in zip(axes.flat, chosen):
        _show_image(ax, images[i])
        ax.set_title(f"{kind}: {ev.class_names[j]}\n({p[i, j]:.0%})", fontsize=7,
                     color="#b03030" if kind == "FP" else "#3050b0")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


_ENV = Environment(loader=PackageLoader("imgcls", "evaluation/templates"), autoescape=select_autoescape())


def render_html(ev: Evaluation | MultiLabelEvaluation, info: RunInfo, data: dict, images: dict[str, Path]) -> str:
    """One self-contained HTML file: figures are embedded, nothing is fetched from the network."""
    embedded = {title: base64.b64encode(Path(p).read_bytes()).decode() for title, p in images.items()
                if Path(p).is_file()}
    return _ENV.get_template("report.html").render(ev=ev, info=info, data=data, images=embedded,
                                                   version=__version__)


def _image_grid(count: int):
    """(figure, axes) for count images, up to 8 a row, their axes hidden (matplotlib imported by the caller)."""
    import matplotlib.pyplot as plt
    cols = min(8, count)
    rows = (count + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.6, rows * 1.9), squeeze=False, dpi=100)
    for ax in axes.flat:
        ax.axis("off")
    return fig, axes


def _show_image(ax, image) -> None:
    """A (C, H, W) uint8 image on ax, grey or colour, pixels as they are."""
    pixels = image.permute(1, 2, 0).numpy()
    ax.imshow(pixels[..., 0] if pixels.shape[2] == 1 else pixels, cmap="gray", vmin=0, vmax=255,
              interpolation="nearest")
