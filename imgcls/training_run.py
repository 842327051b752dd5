"""`imgcls train` as a function: a model fitted on a dataset, evaluated once on its test split, and
everything written into one run folder (imgcls.run_folder lists what it holds; imgcls.fit_and_evaluate
fits, evaluates and reports). Under torchrun every process trains; rank 0 alone evaluates and writes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from imgcls import __version__
from imgcls.data.dataset import DatasetSplits
from imgcls.data.load import DataOptions, load_dataset
from imgcls.errors import ImgclsError
from imgcls.fit_and_evaluate import RunResult, fit_and_report
from imgcls.models.abstention import check_can_abstain
from imgcls.models.calibration import check_method
from imgcls.models.registry import create_model
from imgcls.progress import console
from imgcls.run_folder import RunFolder, write_config
from imgcls.training import distributed
from imgcls.training.tracking import check_available, tracking


@dataclass
class TrainConfig:
    data: str
    model: str = "knn"
    params: dict = field(default_factory=dict)
    out: str = "runs/latest"
    data_options: DataOptions = field(default_factory=DataOptions)
    log: str | None = None          # an experiment tracker as well: "tensorboard" or "mlflow"
    abstain: dict | None = None     # {"accept", "score"}: fit an abstention on val after training
    calibration: str = "auto"       # fitted on val after training: auto | none | temperature | sigmoid | isotonic

    def to_dict(self) -> dict:
        return {"data": self.data, "model": self.model, "params": self.params, "out": self.out,
                "data_options": dataclasses.asdict(self.data_options), "log": self.log,
                "abstain": self.abstain, "calibration": self.calibration, "imgcls_version": __version__}


def train(config: TrainConfig, resume: bool = False) -> RunResult | None:
    """Load data, fit the model on train, report on val and test, save model and reports.
    Returns None on the ranks other than 0 of a distributed run."""
    model = create_model(config.model, **config.params)   # bad names fail before data loads
    if config.log:
        check_available(config.log)                       # as does a tracker that is not installed
    rank = distributed.setup()
    try:
        result = _train(config, model, resume, rank)
        distributed.leave_together()   # the other ranks wait while rank 0 evaluates and writes
        return result
    finally:
        distributed.teardown()


def _train(config: TrainConfig, model, resume: bool, rank: int) -> RunResult | None:
    # A model that knows its input (a pretrained backbone) decodes files its own way unless flags say otherwise.
    config = dataclasses.replace(config, data_options=config.data_options.decoding_as(model.input_preprocessing()))
    splits = load_dataset(config.data, config.data_options)
    model.check_can_learn(splits.train.task)              # before anything is written
    if config.abstain:
        check_can_abstain(splits, config.abstain)
    check_method(model, config.calibration, splits.train.task)
    if not len(splits.test):
        raise ImgclsError(f"{splits.name}: no test images to evaluate on (use a --test-fraction above 0)")
    out = Path(config.out)
    if rank == 0:
        write_config(out, config.to_dict(), resume=resume)
        console.print(f"training [bold]{config.model}[/] on {splits.name}: {_sizes_text(splits)}")
        if resume and not RunFolder(out).checkpoint("last").is_file():
            console.print(f"[yellow]note:[/] no checkpoint in {out}/checkpoints to resume from; starting afresh")
    with tracking(config.log if rank == 0 else None, out, config=config.to_dict(), experiment=splits.name,
                  run_name=out.name, resume=resume) as tracker:
        return fit_and_report(model, config.model, splits, out, config.to_dict(), resume=resume, rank=rank,
                              tracker=tracker, abstain=config.abstain, calibration=config.calibration)


def _sizes_text(splits: DatasetSplits) -> str:
    return ", ".join(f"{n:,} {name}" for name, n in splits.summary().items())
