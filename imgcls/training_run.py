"""`imgcls train` as a function: a model fitted on a dataset, evaluated once on its test split, and
everything written into one run folder (imgcls.run_folder lists what it holds; imgcls.fit_and_evaluate
fits, evaluates and reports). Under torchrun every process trains; rank 0 alone evaluates and writes.

The model "auto" is chosen within the time budget by imgcls.planning's race; a named network's
"auto" settings (learning rate, batch size, epochs) are planned from the data, the budget and this
machine's measured speed (imgcls.planning.settings), and config.json records what they became.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from imgcls import __version__
from imgcls.data.dataset import DatasetSplits
from imgcls.data.load import DataOptions, load_dataset
from imgcls.errors import ImgclsError
from imgcls.fit_and_evaluate import CURVES_TITLE, RunResult, finish_run, fit_and_validate
from imgcls.models.abstention import check_can_abstain
from imgcls.models.calibration import check_method
from imgcls.models.registry import create_model
from imgcls.planning import AUTO, DEFAULT_BUDGET, Budget, DeadlineHook, check_budget_use, check_decoding, choose_model
from imgcls.planning.settings import plan_network, write_range_test_of
from imgcls.planning.speed import figure_seconds, finish_seconds
from imgcls.progress import console
from imgcls.run_folder import RunFolder, write_config
from imgcls.training import distributed
from imgcls.training.hooks import write_history
from imgcls.training.tracking import check_available, tracking


@dataclass
class TrainConfig:
    data: str
    model: str = AUTO
    params: dict = field(default_factory=dict)   # a setting "auto" is planned (lr, epochs, batch_size)
    out: str = "runs/latest"
    data_options: DataOptions = field(default_factory=DataOptions)
    log: str | None = None          # an experiment tracker as well: "tensorboard" or "mlflow"
    abstain: dict | None = None     # {"accept", "score"}: fit an abstention on val after training
    calibration: str = "auto"       # fitted on val after training: auto | none | temperature | sigmoid | isotonic
    time_budget: float | None = None    # seconds for the whole command; None: DEFAULT_BUDGET where one is needed
    planned: dict = field(default_factory=dict)   # filled in: how each planned setting (or the model) was chosen

    def to_dict(self) -> dict:
        return {"data": self.data, "model": self.model, "params": self.params, "out": self.out,
                "data_options": dataclasses.asdict(self.data_options), "log": self.log,
                "abstain": self.abstain, "calibration": self.calibration, "time_budget": self.time_budget,
                "planned": self.planned, "imgcls_version": __version__}


def train(config: TrainConfig, resume: bool = False, started: float | None = None) -> RunResult | None:
    """Load data, fit the model on train, report on val and test, save model and reports.
    Returns None on the ranks other than 0 of a distributed run. started (time.monotonic()) is when
    the command began: the time budget counts from there (default: now)."""
    budget = Budget(config.time_budget or DEFAULT_BUDGET, started if started is not None else time.monotonic(),
                    given=config.time_budget is not None)
    if config.log:
        check_available(config.log)                       # a tracker that is not installed fails first
    if config.model == AUTO:
        if resume:
            raise ImgclsError("--resume continues the run of a named model; run the model and settings that "
                              "config.json records (or start again without --resume)")
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ImgclsError("--model auto runs in one process; name a model to train with --nproc")
        return _train_auto(config, budget)
    check_budget_use(config.model, config.params, budget)   # bad names and settings fail before data loads
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and (budget.given or AUTO in config.params.values()):
        raise ImgclsError("planning (--time-budget, or a setting auto) runs in one process; with --nproc give the "
                          "learning rate, batch size and epochs")
    rank = distributed.setup()
    try:
        result = _train(config, budget, resume, rank)
        distributed.leave_together()   # the other ranks wait while rank 0 evaluates and writes
        return result
    finally:
        distributed.teardown()


def _train(config: TrainConfig, budget: Budget, resume: bool, rank: int) -> RunResult | None:
    fixed = {k: v for k, v in config.params.items() if v != AUTO}
    model = create_model(config.model, **fixed)
    # A model that knows its input (a pretrained backbone) decodes files its own way unless flags say otherwise.
    config = dataclasses.replace(config, data_options=config.data_options.decoding_as(model.input_preprocessing()))
    if rank == 0:
        check_decoding(config.data, config.data_options, budget)
    splits = load_dataset(config.data, config.data_options)
    model.check_can_learn(splits.train.task)              # before anything is written
    if config.abstain:
        check_can_abstain(splits, config.abstain)
    check_method(model, config.calibration, splits.train.task)
    if not len(splits.test):
        raise ImgclsError(f"{splits.name}: no test images to evaluate on (use a --test-fraction above 0)")
    out = Path(config.out)
    hooks, deadline = [], None
    if AUTO in config.params.values() or budget.given:
        # The budget ends training when it was asked for or planned the epochs; epochs given run whole.
        timed = budget.given or config.params.get("epochs") == AUTO
        config, model, deadline = _plan(config, splits, budget, resume, out, rank)
        deadline = deadline if timed else None
        hooks = [deadline] if deadline else []
    if rank == 0:
        write_config(out, config.to_dict(), resume=resume)
        console.print(f"training [bold]{config.model}[/] on {splits.name}: {_sizes_text(splits)}")
        if resume and not RunFolder(out).checkpoint("last").is_file():
            console.print(f"[yellow]note:[/] no checkpoint in {out}/checkpoints to resume from; starting afresh")
    with tracking(config.log if rank == 0 else None, out, config=config.to_dict(), experiment=splits.name,
                  run_name=out.name, resume=resume) as tracker:
        fitted = fit_and_validate(model, config.model, splits, out, resume=resume, rank=rank, tracker=tracker,
                                  abstain=config.abstain, calibration=config.calibration, hooks=hooks)
        if fitted is None:
            return None
        report, note = None, deadline.note() if deadline is not None else None
        if note:
            console.print(f"[yellow]note:[/] {note}")
        if config.planned:
            held = deadline.record() if deadline is not None else {}
            report = {"plan": {"time_budget": budget.seconds, "budget_given": budget.given,
                               "planned": config.planned, **({"note": note} if note else {}),
                               **({"deadline": held} if held else {})}}
        return finish_run(model, config.model, splits, out, extra_metrics=fitted.validation,
                          timings={"fit_seconds": fitted.fit_seconds}, config=config.to_dict(),
                          figures=fitted.figures, tracker=tracker, report=report)


def _plan(config: TrainConfig, splits: DatasetSplits, budget: Budget, resume: bool, out: Path, rank: int):
    """(config with the planned settings, the model made with them, the deadline hook) for a
    network whose settings are planned or whose run has a budget. A resumed run takes the settings
    its first run planned (config.json), so that it replays exactly."""
    before = RunFolder(out).config_json
    if resume and before.is_file():
        recorded = json.loads(before.read_text())
        if recorded.get("model") == config.model and recorded.get("planned"):
            params = {**recorded["params"], **{k: v for k, v in config.params.items() if v != AUTO}}
            config = dataclasses.replace(config, params=params, planned=recorded["planned"])
            # Its test evaluation and report are not measured again: a tenth of the budget is kept for them.
            return config, create_model(config.model, **params), DeadlineHook(budget.deadline - budget.seconds / 10)
    figure = figure_seconds()
    n_test = len(splits.test)

    def reserve(speed) -> float:
        return finish_seconds(speed.predict_seconds, n_test, figure, calibrated=not splits.train.multi_label,
                              network=True)
    # Each epoch also rewrites the run folder's history files and curves (one figure).
    overhead = 1.5 * figure
    planned = plan_network(config.model, config.params, splits.train, splits.val, budget.left(), reserve=reserve,
                           epoch_overhead=overhead, must_fit=budget.given)
    for key, how in planned.notes.items():
        console.print(f"planned {key.replace('_', ' ')}: {how}", highlight=False)
    if planned.range_test is not None and rank == 0:
        write_range_test_of(planned.range_test, out, config.model, splits.name)
    config = dataclasses.replace(config, params=planned.params, planned=planned.to_dict())
    epoch_end = planned.speed.validation_seconds(len(splits.val) if splits.val is not None else 0) + overhead
    return config, planned.model, DeadlineHook(budget.deadline - reserve(planned.speed),
                                               planned.speed.step_seconds, epoch_end)


def _train_auto(config: TrainConfig, budget: Budget) -> RunResult:
    """Race the candidates the data and the budget allow on validation; evaluate the winner once on
    test. config.json records the winner and its settings, so explicit flags can reproduce it."""
    out = Path(config.out)
    choice = choose_model(config.data, config.data_options, budget, calibration=config.calibration,
                          abstain=config.abstain)
    winner = choice.winner
    config = dataclasses.replace(config, model=winner.model, params=choice.params,
                                 data_options=choice.data_options, planned=choice.planned)
    resolved = {**config.to_dict(), "chosen_by": "auto"}
    write_config(out, resolved)
    run = RunFolder(out)
    run.write_json(run.candidates, choice.rows)
    if choice.range_test is not None:
        write_range_test_of(choice.range_test, out, winner.model, choice.splits.name)
    if winner.fitted.model.history_:        # the race trained it without a run folder: its curves now
        curves = write_history(winner.fitted.model.history_, out, winner.fitted.model.task_.multi_label)["curves"]
        winner.fitted.figures[CURVES_TITLE] = curves
    with tracking(config.log, out, config=resolved, experiment=choice.splits.name, run_name=out.name) as tracker:
        result = finish_run(winner.fitted.model, winner.model, choice.splits, out,
                            title=f"{winner.label} on {choice.splits.name}, chosen by --model auto",
                            extra_metrics=winner.fitted.validation,
                            timings={"fit_seconds": winner.fitted.fit_seconds, "race_seconds": choice.race_seconds},
                            config=resolved, figures=winner.fitted.figures, tracker=tracker,
                            report={"candidates": choice.rows, "plan": {**choice.plan, "planned": choice.planned}})
    choice.account_finish(budget)
    _add_to_report(result, {"plan": {**choice.plan, "planned": choice.planned}})
    console.print(choice.reproduce_text(config.data), highlight=False, soft_wrap=True)
    return result


def _add_to_report(result: RunResult, extra: dict) -> None:
    data = json.loads(result.report_paths["json"].read_text())
    data.update(extra)
    result.report_paths["json"].write_text(json.dumps(data, indent=2))


def _sizes_text(splits: DatasetSplits) -> str:
    return ", ".join(f"{n:,} {name}" for name, n in splits.summary().items())
