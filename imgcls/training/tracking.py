"""Experiment tracking: a run's config, every epoch's figures and its final report, also written
to TensorBoard event files or to an MLflow tracking store (`imgcls train --log tensorboard|mlflow`).

Both are optional extras (pip install 'imgcls[tensorboard]' or 'imgcls[mlflow]'); the run folder
stays the record either way, and a tracker only mirrors what goes into it:

- the config (config.json): TensorBoard text "config"; MLflow params (flattened, "params.lr") and
  the artifact config.json;
- each epoch's record (history.json): one scalar / metric per figure, under its history name
  (train_loss, val_accuracy, lr, ...), at step = epoch;
- the final report (report.json): its figures under "report/" (report/accuracy,
  report/macro_avg/f1, report/timings/fit_seconds ...), at the last epoch's step; the JSON as
  TensorBoard text "report" or an MLflow artifact, with the report's figures (TensorBoard
  images, MLflow artifacts: report.html, confusion_matrix.png, curves.png ...).

TensorBoard writes <run>/tensorboard/. MLflow logs to MLFLOW_TRACKING_URI where that is set, else
to a SQLite store in the run folder (sqlite:///<run>/mlflow.db, artifacts in <run>/mlartifacts;
`imgcls compare`: one store in its folder, one MLflow run per model):
MLflow's own local default since 3.7; its ./mlruns file store refuses to open since 3.13 unless
opted in. A resumed run continues the same MLflow run (its id is kept in <run>/mlflow_run.json).
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from imgcls import __version__
from imgcls.errors import ImgclsError
from imgcls.run_folder import CONFIG_JSON, RunFolder

TRACKERS = ("tensorboard", "mlflow")
_NEEDS = {"tensorboard": "tensorboard", "mlflow": "mlflow"}     # the module each one imports
# Parts of report.json that are not the run's figures: per-class tables, and the hyperparameters
# (already logged as the config).
_NOT_FIGURES = ("per_class", "params")


def check_available(kind: str) -> None:
    """Raise ImgclsError unless `kind` is a tracker whose package is installed (before any data loads)."""
    if kind not in TRACKERS:
        raise ImgclsError(f"unknown tracker {kind!r}; valid: {', '.join(TRACKERS)}")
    try:
        importlib.import_module(_NEEDS[kind])
    except ImportError:
        raise ImgclsError(f"--log {kind} needs the {_NEEDS[kind]} package: pip install 'imgcls[{kind}]'") from None


class Tracker:
    """Where a run's config, epochs and report go besides its own folder."""

    def log_config(self, config: dict) -> None: ...
    def log_epoch(self, record: dict) -> None: ...
    def log_report(self, report: dict, files: list[Path], step: int) -> None:
        """report.json's figures at step (the last epoch trained; 0 without epochs) and the report's files."""
    def close(self, failed: bool = False) -> None: ...


def open_tracker(kind: str, run_dir: str | Path, *, experiment: str, run_name: str, resume: bool = False,
                 store: str | Path | None = None) -> Tracker:
    """A tracker of `kind` ("tensorboard" or "mlflow") for the run in run_dir. MLflow's local store
    is in `store` (default: run_dir), so that the runs of one comparison share one."""
    check_available(kind)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if kind == "tensorboard":
        return TensorBoardTracker(RunFolder(run_dir).tensorboard)
    return MlflowTracker(run_dir, Path(store or run_dir), experiment=experiment, run_name=run_name, resume=resume)


def epoch_figures(record: dict) -> dict[str, float]:
    """An epoch record's numbers by their history names, without the epoch itself."""
    return {k: float(v) for k, v in record.items() if k != "epoch" and _is_number(v)}


def report_figures(report: dict, prefix: str = "report") -> dict[str, float]:
    """report.json's numbers by path (report/accuracy, report/macro_avg/f1, report/sizes/test),
    one level of nesting deep; per-class tables, lists and the hyperparameters are left out."""
    figures = {}
    for key, value in report.items():
        if key in _NOT_FIGURES:
            continue
        if _is_number(value):
            figures[f"{prefix}/{key}"] = float(value)
        elif isinstance(value, dict):
            figures.update({f"{prefix}/{key}/{k}": float(v) for k, v in value.items() if _is_number(v)})
    return figures


def flat_params(config: dict, prefix: str = "") -> dict[str, str]:
    """A nested config as MLflow params: {"params.lr": "0.1", "data": "digits"}; None is "None"."""
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flat_params(value, name + "."))
        else:
            flat[name] = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return flat


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _json_text(data: dict) -> str:
    # A fenced block, so TensorBoard's markdown view shows the JSON as it is.
    return "```json\n" + json.dumps(data, indent=2) + "\n```"


class TensorBoardTracker(Tracker):
    """Event files written by torch.utils.tensorboard's SummaryWriter."""

    def __init__(self, log_dir: Path):
        from torch.utils.tensorboard import SummaryWriter
        self.log_dir = log_dir
        self.writer = SummaryWriter(log_dir=str(log_dir))

    def log_config(self, config: dict) -> None:
        self.writer.add_text("config", _json_text(config))

    def log_epoch(self, record: dict) -> None:
        for name, value in epoch_figures(record).items():
            self.writer.add_scalar(name, value, global_step=record["epoch"])
        self.writer.flush()      # a crashed run keeps the epochs it finished

    def log_report(self, report: dict, files: list[Path], step: int) -> None:
        for name, value in report_figures(report).items():
            self.writer.add_scalar(name, value, global_step=step)
        self.writer.add_text("report", _json_text(report), global_step=step)
        for path in files:
            if path.suffix == ".png":
                self.writer.add_image(f"figures/{path.stem}", _rgb(path), global_step=step, dataformats="HWC")
        self.writer.flush()

    def close(self, failed: bool = False) -> None:
        self.writer.close()


def _rgb(path: Path):
    import numpy as np
    from PIL import Image
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


class MlflowTracker(Tracker):
    """One MLflow run, written through MlflowClient (no global active run to leak between runs)."""

    def __init__(self, run_dir: Path, store: Path, *, experiment: str, run_name: str, resume: bool):
        from mlflow import MlflowClient
        # MLflow announces its database migrations at INFO level on every new store.
        for name in ("mlflow.store.db.utils", "alembic"):
            logging.getLogger(name).setLevel(logging.WARNING)
        local = not os.environ.get("MLFLOW_TRACKING_URI")
        self.uri = f"sqlite:///{RunFolder(store).mlflow_db.resolve()}" if local else os.environ["MLFLOW_TRACKING_URI"]
        self.client = MlflowClient(tracking_uri=self.uri)
        self.run_id = self._resumed(run_dir) if resume else None
        if self.run_id is None:
            found = self.client.get_experiment_by_name(experiment)
            experiment_id = found.experiment_id if found else self.client.create_experiment(
                experiment, artifact_location=RunFolder(store).mlflow_artifacts.resolve().as_uri() if local else None)
            run = self.client.create_run(experiment_id, run_name=run_name,
                                         tags={"imgcls.run_dir": str(run_dir.resolve()),
                                               "imgcls.version": __version__})
            self.run_id = run.info.run_id
        run = RunFolder(run_dir)
        run.write_json(run.mlflow_run, {"tracking_uri": self.uri, "run_id": self.run_id})

    def _resumed(self, run_dir: Path) -> str | None:
        """The MLflow run that a resumed run continues, if it logged to this same store."""
        from mlflow.exceptions import MlflowException
        state = RunFolder(run_dir).mlflow_run
        if not state.is_file():
            return None
        saved = json.loads(state.read_text())
        if saved.get("tracking_uri") != self.uri:
            return None
        try:
            self.client.get_run(saved["run_id"])
        except MlflowException:      # deleted, or a store made afresh
            return None
        self.client.update_run(saved["run_id"], status="RUNNING")
        return saved["run_id"]

    def log_config(self, config: dict) -> None:
        from mlflow.entities import Param
        # Params cannot change once logged: a resumed run (which may train for more epochs) keeps
        # its first values there; config.json, re-logged, is the settings it finished with.
        logged = self.client.get_run(self.run_id).data.params
        params = [Param(k, v) for k, v in flat_params(config).items() if k not in logged]
        for i in range(0, len(params), 100):        # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[i:i + 100])
        self.client.log_dict(self.run_id, config, CONFIG_JSON)

    def log_epoch(self, record: dict) -> None:
        self._log_metrics(epoch_figures(record), record["epoch"])

    def log_report(self, report: dict, files: list[Path], step: int) -> None:
        self._log_metrics(report_figures(report), step)
        for path in files:
            self.client.log_artifact(self.run_id, str(path))

    def _log_metrics(self, figures: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in figures.items()])

    def close(self, failed: bool = False) -> None:
        self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")


@contextmanager
def tracking(kind: str | None, run_dir: str | Path, *, config: dict, experiment: str, run_name: str,
             resume: bool = False, store: str | Path | None = None) -> Iterator[Tracker | None]:
    """An open tracker with the run's config logged (None when kind is None); on leaving, the
    tracker is closed, and an MLflow run marked FAILED if the run raised (Ctrl-C included)."""
    if kind is None:
        yield None
        return
    tracker = open_tracker(kind, run_dir, experiment=experiment, run_name=run_name, resume=resume, store=store)
    failed = True
    try:
        tracker.log_config(config)
        yield tracker
        failed = False
    finally:
        tracker.close(failed)
