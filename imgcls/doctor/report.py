"""The doctor's reports: a terminal summary, doctor.json, and a self-contained doctor.html."""

from __future__ import annotations

import base64
import io
import json
from datetime import datetime, timezone
from pathlib import Path

import torch
from jinja2 import Environment, PackageLoader, select_autoescape
from PIL import Image
from rich.console import Console
from rich.table import Table

from imgcls import __version__
from imgcls.doctor.findings import DoctorReport, DuplicateGroup

SHOWN = 100          # duplicate groups and near pairs drawn in the HTML report (doctor.json has all)
TOP = 5              # findings listed per check in the terminal
_COLOURS = {"OK": "green", "WARN": "yellow", "FAIL": "bold red", "n/a": "dim"}


def print_report(report: DoctorReport, console: Console | None = None) -> None:
    """One line per check with its status, then the first findings of each."""
    console = console or Console()
    console.print(f"[bold]{report.name}[/]: " + ", ".join(f"{s} {n:,}" for s, n in report.sizes.items())
                  + f" images, decoded at {'x'.join(map(str, report.image_shape))}", highlight=False)
    console.print(f"[dim]{report.split_note}[/]", highlight=False)
    table = Table()
    for column in ("check", "status", "findings", "summary"):
        table.add_column(column, justify="right" if column == "findings" else "left")
    for check in report.checks():
        status = check.status(report.options.fail_on)
        table.add_row(check.name, f"[{_COLOURS[status]}]{status}[/]", f"{check.findings:,}", check.summary)
    console.print(table)
    for line in top_findings(report):
        console.print(line, highlight=False, markup=False)
    stats = report.file_stats()
    if stats:
        console.print(_file_stats_line(stats), highlight=False)


def top_findings(report: DoctorReport, n: int = TOP) -> list[str]:
    """The first n findings of each check, one line each."""
    lines = [f"unreadable  {f.path} ({_split(f.split)}, {f.label}): {f.reason}" for f in report.unreadable[:n]]
    lines += [f"mismatch    {f.path} ({_split(f.split)}, {f.label}): {f.reason}" for f in report.mismatched[:n]]
    leaked_first = sorted(report.duplicates, key=lambda g: not g.leaked)
    lines += [f"identical   {_group_text(g)}" for g in leaked_first[:n]]
    near = sorted(report.near_duplicates, key=lambda p: not p.leaked)
    lines += [f"near {p.distance:.4f} {_ref(p.a)}  ~  {_ref(p.b)}" for p in near[:n]]
    lines += [f"label? {e.score:.3f} {e.image.name} ({e.image.split}): given {e.given}, suggested {e.suggested}"
              for e in (report.label_errors or [])[:n]]
    return lines


def _ref(ref) -> str:
    return f"{ref.name} ({ref.split}, {ref.label})"


def _group_text(group: DuplicateGroup) -> str:
    same = {True: " [same bytes]", False: " [same pixels, different bytes]", None: ""}[group.same_bytes]
    return "  =  ".join(_ref(r) for r in group.images) + same + (" [conflicting labels]" if group.conflicting else "")


def _split(split: str | None) -> str:
    return split or "skipped"


def _file_stats_line(stats: dict) -> str:
    w, h = stats["width"], stats["height"]
    modes = ", ".join(f"{mode} {n:,}" for mode, n in stats["modes"].items())
    return (f"files: {stats['files']:,} ({stats['opened']:,} open); width {w['min']}..{w['max']} "
            f"(median {w['median']:g}), height {h['min']}..{h['max']} (median {h['median']:g}); modes: {modes}")


def write_report(report: DoctorReport, out_dir: str | Path) -> dict[str, Path]:
    """Write doctor.json and doctor.html into out_dir; return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "doctor.json", "html": out_dir / "doctor.html"}
    data = {**report.to_dict(), "imgcls_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    paths["json"].write_text(json.dumps(data, indent=2))
    paths["html"].write_text(render_html(report, data))
    return paths


_ENV = Environment(loader=PackageLoader("imgcls", "doctor/templates"), autoescape=select_autoescape())


def render_html(report: DoctorReport, data: dict) -> str:
    """One HTML file with every thumbnail embedded as a base64 PNG: nothing is fetched from the network."""
    groups = sorted(report.duplicates, key=lambda g: not g.leaked)[:SHOWN]
    pairs = sorted(report.near_duplicates, key=lambda p: not p.leaked)[:SHOWN]
    errors = (report.label_errors or [])[:SHOWN]
    rows = ({r.row for g in groups for r in g.images} | {r.row for p in pairs for r in (p.a, p.b)}
            | {e.image.row for e in errors})
    thumbs = {row: thumbnail(report.images[row]) for row in rows}
    return _ENV.get_template("doctor.html").render(
        report=report, data=data, checks=report.checks(), fail_on=report.options.fail_on, groups=groups,
        pairs=pairs, errors=errors, thumbs=thumbs, shown=SHOWN, stats=report.file_stats(), version=__version__)


def thumbnail(image: torch.Tensor) -> str:
    """A decoded image (C, H, W) as a base64 PNG."""
    array = image.permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(array[..., 0] if array.shape[2] == 1 else array).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()

