"""Small extras on the training loop: a live progress bar with an epoch table, history files, curves,
and each epoch sent to an experiment tracker (TensorBoard, MLflow)."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

from rich.console import Group
from rich.live import Live
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from imgcls.progress import console, progress_enabled
from imgcls.run_folder import RunFolder
from imgcls.training.tracking import Tracker
from imgcls.training.trainer import Hook, Trainer

_HEADINGS = {"train_loss": "loss", "train_accuracy": "acc", "val_loss": "val loss", "val_accuracy": "val acc",
             "val_mAP": "val mAP", "images_per_second": "img/s", "seconds": "s"}
_COLUMNS = ("epoch", "lr", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "images_per_second", "seconds")
# Multi-label runs also show validation mAP; their accuracies are subset accuracies (every label right).
_MULTI_LABEL_COLUMNS = ("epoch", "lr", "train_loss", "train_accuracy", "val_loss", "val_mAP", "val_accuracy",
                        "images_per_second", "seconds")


def _columns(multi_label: bool) -> tuple[str, ...]:
    return _MULTI_LABEL_COLUMNS if multi_label else _COLUMNS


class ProgressHook(Hook):
    """A bar per epoch with running loss, accuracy and images/s; a table row per finished epoch."""

    def on_train_begin(self, trainer: Trainer) -> None:
        self.enabled = progress_enabled()
        if not self.enabled:
            return
        self.progress = Progress(TextColumn("epoch {task.fields[epoch]}"), BarColumn(),
                                 TextColumn("loss {task.fields[loss]:.4f}  acc {task.fields[acc]:.2%}  "
                                            "{task.fields[speed]:,.0f} img/s"),
                                 TimeElapsedColumn(), TimeRemainingColumn(), console=console)
        self.columns = _columns(trainer.task.multi_label)
        self.table = _epoch_table(self.columns)
        self.live = Live(Group(self.table, self.progress), console=console, refresh_per_second=4)
        self.live.start()
        self._new_task(trainer)

    def _new_task(self, trainer: Trainer) -> None:
        self.seen, self.loss_sum, self.correct, self.started = 0, 0.0, 0, time.perf_counter()
        self.task = self.progress.add_task("", total=trainer.batches_per_epoch, epoch=trainer.state.epoch + 1,
                                           loss=0.0, acc=0.0, speed=0.0)

    def on_batch_end(self, trainer: Trainer, batch_size: int, loss: float, correct: int) -> None:
        if not self.enabled:
            return
        self.seen += batch_size
        self.loss_sum += loss * batch_size
        self.correct += correct
        speed = self.seen * trainer.world / max(time.perf_counter() - self.started, 1e-9)
        self.progress.update(self.task, advance=1, loss=self.loss_sum / self.seen, acc=self.correct / self.seen,
                             speed=speed)

    def on_epoch_end(self, trainer: Trainer, record: dict) -> None:
        if not self.enabled:
            return
        self.progress.remove_task(self.task)
        self.table.add_row(*(_format(k, record.get(k)) for k in self.columns))
        if trainer.state.epoch < trainer.cfg.epochs and not trainer.state.stopped_early:
            self._new_task(trainer)

    def on_train_end(self, trainer: Trainer) -> None:
        if not self.enabled:
            return
        self.live.stop()
        console.print()
        if trainer.state.stopped_early:
            console.print(f"stopped after epoch {trainer.state.epoch}: {trainer.state.stop_reason}; "
                          f"keeping epoch {trainer.state.best_epoch}")


class HistoryHook(Hook):
    """history.json, history.csv and curves.png in the run folder, rewritten after every epoch."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)

    def on_epoch_end(self, trainer: Trainer, record: dict) -> None:
        write_history(trainer.state.history, self.run_dir, trainer.task.multi_label)


class TrackingHook(Hook):
    """Each finished epoch's record, as history.json has it, to an experiment tracker."""

    def __init__(self, tracker: Tracker):
        self.tracker = tracker
        self.logged = 0          # the last epoch sent

    def on_train_begin(self, trainer: Trainer) -> None:
        self.logged = trainer.state.epoch       # a resumed run sent the epochs before this one

    def on_epoch_end(self, trainer: Trainer, record: dict) -> None:
        self._send(record)

    def catch_up(self, history: list[dict]) -> None:
        """Send the epochs of a model that trains in its own loop, without the trainer's events (linear)."""
        for record in history:
            if record["epoch"] > self.logged:
                self._send(record)

    def _send(self, record: dict) -> None:
        self.tracker.log_epoch(record)
        self.logged = record["epoch"]


def write_history(history: list[dict], run_dir: Path, multi_label: bool = False) -> dict[str, Path]:
    """history.json, history.csv and curves.png; multi_label names the losses and accuracies so."""
    run = RunFolder(run_dir).make()
    paths = {"json": run.history_json, "csv": run.history_csv, "curves": run.curves}
    paths["json"].write_text(json.dumps(history, indent=2))
    keys = [k for k in _columns(multi_label) if any(k in r for r in history)]
    with paths["csv"].open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(history)
    plot_curves(history, paths["curves"], multi_label)
    return paths


def plot_curves(history: list[dict], path: Path, multi_label: bool = False) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
    accuracy = "subset accuracy" if multi_label else "accuracy"
    for key, label, ax in (("train_loss", "train", loss_ax), ("val_loss", "validation", loss_ax),
                           ("train_accuracy", f"train {accuracy}", acc_ax),
                           ("val_accuracy", f"validation {accuracy}", acc_ax), ("val_mAP", "validation mAP", acc_ax)):
        values = [r.get(key) for r in history]
        if any(v is not None for v in values):
            ax.plot(epochs, values, marker="o", markersize=3, label=label)
    loss_ax.set(title="Loss", xlabel="epoch", ylabel="binary cross-entropy" if multi_label else "cross-entropy")
    acc_ax.set(title="mAP and subset accuracy" if multi_label else "Accuracy", xlabel="epoch",
               ylabel="mAP / accuracy" if multi_label else "accuracy")
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _epoch_table(columns: tuple[str, ...]) -> Table:
    table = Table(title_justify="left")
    for key in columns:
        table.add_column(_HEADINGS.get(key, key), justify="right")
    return table


def _format(key: str, value) -> str:
    if value is None:
        return "-"
    if key == "epoch":
        return str(value)
    if key == "lr":
        return f"{value:.2e}"
    if key.endswith("accuracy"):
        return f"{value:.2%}"
    if key == "images_per_second":
        return f"{value:,.0f}"
    return f"{value:.3f}" if key == "seconds" else f"{value:.4f}"
