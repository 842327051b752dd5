"""Hyperparameter search for neural classifiers on the validation split, with Optuna.

Random or grid search over listed values (lr=0.01,0.1 dropout=0,0.3 ...). Each trial trains
with early stopping as configured, reports its validation accuracy after every epoch, and is
pruned when it falls below the median of earlier trials at the same epoch. The study lives in a
journal file in the run folder, so an interrupted search resumes where it stopped when the same
command runs again. The best trial's model is evaluated once on the test split.
"""

from __future__ import annotations

import dataclasses
import itertools
import typing
from pathlib import Path

from rich.table import Table

from imgcls.data.dataset import DatasetSplits
from imgcls.errors import ImgclsError
from imgcls.fit_and_evaluate import finish_run
from imgcls.models.artifact import load_model, save_model
from imgcls.models.registry import create_model, model_class
from imgcls.progress import console, stdout
from imgcls.run_folder import RunFolder
from imgcls.training.trainer import Hook

METHODS = ("random", "grid")


def parse_model_grid(specs: list[str], model: str) -> dict[str, list]:
    """KEY=V1,V2 specs for a model's hyperparameters, values converted to the field's type."""
    cls = model_class(model)
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    grid = {}
    for spec in specs:
        key, _, values = spec.partition("=")
        key = key.strip().replace("-", "_")
        if key not in fields or not values:
            raise ImgclsError(f"--grid {spec!r}: expected KEY=V1,V2,... with KEY among {', '.join(sorted(fields))}")
        grid[key] = [_convert(v.strip(), hints[key], key) for v in values.split(",")]
    if not grid:
        raise ImgclsError("give the values to search, e.g. --grid lr=0.01,0.1 --grid dropout=0,0.3")
    return grid


def _convert(text: str, kind, key: str):
    try:
        if kind is bool:
            return text.lower() in ("yes", "true", "on", "1")
        return kind(text) if kind in (int, float) else text
    except ValueError:
        raise ImgclsError(f"--grid {key}: {text!r} is not a {kind.__name__}") from None


class _ReportToTrial(Hook):
    def __init__(self, trial):
        self.trial = trial

    def on_epoch_end(self, trainer, record: dict) -> None:
        import optuna
        self.trial.report(record["val_accuracy"], record["epoch"])
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"validation accuracy {record['val_accuracy']:.4f} below the median")


def search(splits: DatasetSplits, model: str, grid: dict[str, list], *, method: str, trials: int, seed: int,
           out: str | Path, command: str = "") -> dict:
    import optuna
    splits.require_single_label("tune (validation accuracy)")
    if splits.val is None or not len(splits.val):
        raise ImgclsError("searching needs a validation split: use --val-fraction above 0")
    if method not in METHODS:
        raise ImgclsError(f"unknown search {method!r}; valid: {', '.join(METHODS)}")
    run = RunFolder(out)
    run.trials.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(run.study_journal)))
    sampler = (optuna.samplers.GridSampler(grid, seed=seed) if method == "grid"
               else optuna.samplers.RandomSampler(seed=seed))
    study = optuna.create_study(study_name="imgcls", storage=storage, load_if_exists=True, direction="maximize",
                                sampler=sampler, pruner=optuna.pruners.MedianPruner(n_startup_trials=2))
    wanted = len(list(itertools.product(*grid.values()))) if method == "grid" else trials
    finished = [t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE,
                                                        optuna.trial.TrialState.PRUNED)]
    if len(finished) < wanted:
        console.print(f"searching {model}: {wanted - len(finished)} trial(s) to run, {len(finished)} done before")
        study.optimize(lambda trial: _objective(trial, splits, model, grid, seed, run), n_trials=wanted - len(finished),
                       catch=())
    return _finish(study, splits, model, run, command)


def _objective(trial, splits: DatasetSplits, model: str, grid: dict, seed: int, run: RunFolder) -> float:
    params = {key: trial.suggest_categorical(key, values) for key, values in grid.items()}
    if "seed" in {f.name for f in dataclasses.fields(model_class(model))}:
        params.setdefault("seed", seed)
    classifier = create_model(model, **params)
    classifier.fit(splits.train, validation=splits.val, hooks=[_ReportToTrial(trial)])
    score = max(r["val_accuracy"] for r in classifier.history_)
    folder = run.trial(trial.number)
    save_model(classifier, folder.path)
    folder.write_json(folder.trial_json, {"trial": trial.number, "params": params, "val_accuracy": score,
                                          "history": classifier.history_})
    return score


def _finish(study, splits: DatasetSplits, model: str, run: RunFolder, command: str) -> dict:
    import optuna
    rows = [{"trial": t.number, "state": t.state.name.lower(), "params": t.params,
             "val_accuracy": t.value if t.value is not None else max(t.intermediate_values.values(), default=None)}
            for t in study.trials if t.state != optuna.trial.TrialState.RUNNING]
    rows.sort(key=lambda r: -(r["val_accuracy"] or 0))
    run.write_json(run.trials_json, rows)
    _print_trials(rows)
    if not any(r["state"] == "complete" for r in rows):
        raise ImgclsError("no trial completed; see trials.json")
    best = study.best_trial
    classifier = load_model(run.trial(best.number).path)
    result = finish_run(classifier, model, splits, run.path, command=command,
                        title=f"{model} on {splits.name}, best of {len(rows)} trials",
                        extra_metrics={"val_accuracy": best.value}, config={"search": rows},
                        report={"tuning": {"trials": rows, "best_trial": best.number, "best_params": best.params}})
    return {"best": best.params, "model_path": result.model_path, "report_paths": result.report_paths, "trials": rows}


def _print_trials(rows: list[dict]) -> None:
    table = Table(title="trials, best validation accuracy first", title_justify="left")
    for column in ("trial", "state", "val accuracy", "settings"):
        table.add_column(column, justify="right" if column != "settings" else "left")
    for r in rows:
        accuracy = f"{r['val_accuracy']:.2%}" if r["val_accuracy"] is not None else "-"
        table.add_row(str(r["trial"]), r["state"], accuracy, ", ".join(f"{k}={v}" for k, v in r["params"].items()))
    stdout.print(table)
