"""The run folder: every file a run writes, named in one place, and each command's default folder.

A run folder is what `imgcls train` writes (and each model's folder under `imgcls compare`, the
folder of `imgcls tune`, `imgcls calibrate --out DIR`, `imgcls eval --out DIR`). Every writer asks
RunFolder for its paths, so this list is the whole of what a run folder can hold:

- model.safetensors: the self-describing model (imgcls.models.artifact); model.onnx, model.int8.onnx
  or model.xml beside it once exported (imgcls export)
- config.json and config.yaml: the resolved settings; resuming requires the same ones
- report.json and report.html: the one evaluation on the test split (imgcls.evaluation.report), with
  confusion_matrix.png (single-label) or pr_curves.png (multi-label), mistakes.png, filters.png (a
  network's first-layer filters), templates.png (a linear model's class templates) and
  reliability.png (a calibrated model, before and after)
- test_evaluations.json: the ledger of every look at the test split (imgcls.evaluation.ledger)
- history.json, history.csv and curves.png: epoch by epoch, for models trained in epochs
- checkpoints/last.safetensors and checkpoints/best.safetensors: the trainer's, to resume from;
  stage-head/ and stage-all/ hold those of a fine-tuned transfer model's two trainings
- lr_find.json and lr_find.png: the learning-rate range test (imgcls lr-find)
- candidates.json: every candidate model a run raced on the validation split, with its settings,
  validation figure and seconds (the leaderboard of a run that chooses its model)
- cv_results.json and cv.png: kNN's cross-validation (imgcls tune); trials.json, trials/trial-NNN/
  (each a run folder with trial.json) and study.journal: a network's search (imgcls tune)
- tensorboard/, or mlflow.db, mlartifacts/ and mlflow_run.json: with --log (imgcls.training.tracking)
- leaderboard.json and compare.html: imgcls compare's folder, which holds one run folder per model

Default folders (`--out` not given) follow one rule (default_folder), with the model's name made
safe for any file system: `imgcls train --model timm:resnet18` writes runs/timm-resnet18, `imgcls
tune` runs/tune-timm-resnet18, `imgcls lr-find` runs/lr-find-timm-resnet18, `imgcls compare`
runs/compare.

It sits with the foundations (of imgcls it imports only imgcls.errors and imgcls.storage), so every
layer can ask it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from imgcls.storage import write_text

RUNS = Path("runs")
MODEL_FILE = "model.safetensors"
CONFIG_JSON, CONFIG_YAML = "config.json", "config.yaml"
TEST_EVALUATIONS = "test_evaluations.json"
LR_FIND_JSON, LR_FIND_PLOT = "lr_find.json", "lr_find.png"
CHECKPOINTS = "checkpoints"


def folder_name(model: str) -> str:
    """A model name as a folder name any file system takes: timm:resnet18 -> timm-resnet18."""
    return re.sub(r"[^A-Za-z0-9._+-]", "-", model)


def default_folder(command: str, model: str | None = None) -> Path:
    """Where a command writes when --out is not given: runs/<model> for train, runs/<command>-<model>
    for the other commands about one model (tune, lr-find), runs/<command> for the others (compare)."""
    if model is None:
        return RUNS / command
    return RUNS / (folder_name(model) if command == "train" else f"{command}-{folder_name(model)}")


@dataclass(frozen=True)
class RunFolder:
    """The paths of one run folder's files (see the module docstring); nothing is created."""

    path: Path

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))

    def make(self) -> RunFolder:
        """Create the folder (and its parents) if it is missing; returns self."""
        self.path.mkdir(parents=True, exist_ok=True)
        return self

    # -- the model and its settings -------------------------------------------------------------
    @property
    def model(self) -> Path:
        return self.path / MODEL_FILE

    def exported(self, suffix: str) -> Path:
        """The model exported beside it: model.onnx, model.int8.onnx, model.xml."""
        return self.path / f"model{suffix}"

    @property
    def config_json(self) -> Path:
        return self.path / CONFIG_JSON

    @property
    def config_yaml(self) -> Path:
        return self.path / CONFIG_YAML

    # -- the test evaluation and its report -----------------------------------------------------
    @property
    def report_json(self) -> Path:
        return self.path / "report.json"

    @property
    def report_html(self) -> Path:
        return self.path / "report.html"

    @property
    def confusion_matrix(self) -> Path:
        return self.path / "confusion_matrix.png"

    @property
    def pr_curves(self) -> Path:
        return self.path / "pr_curves.png"

    @property
    def mistakes(self) -> Path:
        return self.path / "mistakes.png"

    @property
    def filters(self) -> Path:
        return self.path / "filters.png"

    @property
    def templates(self) -> Path:
        return self.path / "templates.png"

    @property
    def reliability(self) -> Path:
        return self.path / "reliability.png"

    @property
    def test_evaluations(self) -> Path:
        return self.path / TEST_EVALUATIONS

    # -- training -------------------------------------------------------------------------------
    @property
    def history_json(self) -> Path:
        return self.path / "history.json"

    @property
    def history_csv(self) -> Path:
        return self.path / "history.csv"

    @property
    def curves(self) -> Path:
        return self.path / "curves.png"

    def checkpoint(self, which: str) -> Path:
        """checkpoints/<which>.safetensors: "last" (to resume from) or "best"."""
        return self.path / CHECKPOINTS / f"{which}.safetensors"

    def stage(self, name: str) -> RunFolder:
        """The folder of one stage of a training in stages (a transfer model's "head", then "all")."""
        return RunFolder(self.path / f"stage-{name}")

    @property
    def lr_find_json(self) -> Path:
        return self.path / LR_FIND_JSON

    @property
    def lr_find_plot(self) -> Path:
        return self.path / LR_FIND_PLOT

    # -- choosing a model or its settings -------------------------------------------------------
    @property
    def candidates(self) -> Path:
        """Every candidate raced on the validation split: [{model, params, validation figure, seconds}]."""
        return self.path / "candidates.json"

    @property
    def cv_results(self) -> Path:
        return self.path / "cv_results.json"

    @property
    def cv_plot(self) -> Path:
        return self.path / "cv.png"

    @property
    def trials_json(self) -> Path:
        return self.path / "trials.json"

    @property
    def trials(self) -> Path:
        return self.path / "trials"

    def trial(self, number: int) -> RunFolder:
        """One search trial's folder: its model and trial.json."""
        return RunFolder(self.trials / f"trial-{number:03d}")

    @property
    def trial_json(self) -> Path:
        return self.path / "trial.json"

    @property
    def study_journal(self) -> Path:
        return self.path / "study.journal"

    # -- experiment trackers --------------------------------------------------------------------
    @property
    def tensorboard(self) -> Path:
        return self.path / "tensorboard"

    @property
    def mlflow_db(self) -> Path:
        return self.path / "mlflow.db"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.path / "mlartifacts"

    @property
    def mlflow_run(self) -> Path:
        return self.path / "mlflow_run.json"

    # -- a comparison of models -----------------------------------------------------------------
    @property
    def leaderboard(self) -> Path:
        return self.path / "leaderboard.json"

    @property
    def compare_html(self) -> Path:
        return self.path / "compare.html"

    def member(self, model: str) -> RunFolder:
        """A compared model's own run folder: <folder>/<model name made safe>."""
        return RunFolder(self.path / folder_name(model))

    def write_json(self, path: Path, data) -> Path:
        """data as indented JSON at path (one of this folder's), the folder made if missing; the
        file is replaced atomically, so a reader never finds half of it."""
        self.make()
        return write_text(path, json.dumps(data, indent=2))


def write_config(folder: str | Path, resolved: dict, *, resume: bool = False,
                 must_match: tuple[str, ...] = ("data", "model", "data_options")) -> RunFolder:
    """config.json and config.yaml: a run's resolved settings. Resuming requires the keys in
    must_match to be as the folder's config.json has them (ImgclsError otherwise)."""
    import yaml

    from imgcls.errors import ImgclsError
    run = RunFolder(folder).make()
    if resume and run.config_json.is_file():
        before = json.loads(run.config_json.read_text())
        changed = [k for k in must_match if before.get(k) != resolved.get(k)]
        if changed:
            raise ImgclsError(f"{run.path}: cannot resume with different {', '.join(changed)}; "
                              "use the same command, or a new --out")
    run.write_json(run.config_json, resolved)
    write_text(run.config_yaml, yaml.safe_dump(resolved, sort_keys=False))
    return run
