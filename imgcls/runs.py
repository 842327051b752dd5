"""Runs: train a model on a dataset, evaluate it, and write everything into one run folder.

A run folder holds model.safetensors (the self-describing model), config.json and config.yaml
(the resolved settings), report.json / report.html / confusion_matrix.png / mistakes.png, and for
models trained by gradient descent history.json / history.csv / curves.png and checkpoints/;
with --log, tensorboard/ or the MLflow store (imgcls.training.tracking).
The test split is evaluated once, at the end (imgcls.finish). Under torchrun every process trains; rank 0 alone
evaluates and writes.
"""

from __future__ import annotations

import dataclasses
import json

import yaml
from dataclasses import dataclass, field
from pathlib import Path

from imgcls import __version__
from imgcls.data.dataset import DatasetSplits
from imgcls.data.load import DataOptions, load_dataset
from imgcls.errors import ImgclsError
from imgcls.evaluation import RunInfo, evaluate_model, print_report, write_report
from imgcls.evaluation.weights import model_figures
from imgcls.finish import RunResult, calibration_report, fit_and_report, mistake_heatmaps, print_calibration
from imgcls.models.abstention import Abstention, check_accept, check_score, fit_abstention
from imgcls.models.artifact import save_model
from imgcls.models.calibration import check_method
from imgcls.models.registry import create_model
from imgcls.progress import console, stdout
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
        _write_config(config, out, resume)
        console.print(f"training [bold]{config.model}[/] on {splits.name}: {_sizes_text(splits)}")
        if resume and not (out / "checkpoints" / "last.safetensors").is_file():
            console.print(f"[yellow]note:[/] no checkpoint in {out}/checkpoints to resume from; starting afresh")
    with tracking(config.log if rank == 0 else None, out, config=config.to_dict(), experiment=splits.name,
                  run_name=out.name, resume=resume) as tracker:
        return fit_and_report(model, config.model, splits, out, config.to_dict(), resume=resume, rank=rank,
                              tracker=tracker, abstain=config.abstain, calibration=config.calibration)


def _write_config(config: TrainConfig, out: Path, resume: bool) -> None:
    """config.json / config.yaml: the resolved settings. Resuming requires the same ones."""
    out.mkdir(parents=True, exist_ok=True)
    resolved = config.to_dict()
    previous = out / "config.json"
    if resume and previous.is_file():
        before = json.loads(previous.read_text())
        keys = ("data", "model", "data_options")
        changed = [k for k in keys if before.get(k) != resolved.get(k)]
        if changed:
            raise ImgclsError(f"{out}: cannot resume with different {', '.join(changed)}; "
                              "use the same command, or a new --out")
    previous.write_text(json.dumps(resolved, indent=2))
    (out / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))


def evaluate_saved(model_path: str | Path, data: str, options: DataOptions, out: str | Path | None,
                   split: str = "test", runtime: str | None = None) -> RunResult:
    """Evaluate a saved or pretrained model on a dataset's split (files are decoded with the model's
    preprocessing), predicting in `runtime` (see imgcls.inference.resolve_model)."""
    from imgcls.inference.resolve import resolve_model
    model = resolve_model(str(model_path), runtime)
    if options.size is not None or options.channels is not None or options.decode is not None:
        raise ImgclsError("eval decodes images exactly as the model expects "
                          f"({_decode_text(model.preprocessing_)}); drop --image-size, --channels and --decode")
    splits = load_dataset(data, dataclasses.replace(options, preprocessing=model.preprocessing_))
    part = getattr(splits, split)
    if part is None:
        raise ImgclsError(f"{data} has no {split} split")
    evaluation, predict_seconds = evaluate_model(model, part, splits.skipped)
    info = RunInfo(title=f"{model.model_name} on {splits.name}", model=model.model_name, params=model.get_params(),
                   dataset=splits.name, split=split, sizes=splits.summary(),
                   timings={"predict_seconds": predict_seconds},
                   skipped_files=[s.to_dict() for s in splits.skipped])
    calibration, calibration_figures = calibration_report(model, evaluation, part, out, split)
    print_report(evaluation, info, stdout)
    print_calibration(calibration)
    heatmaps = mistake_heatmaps(model, evaluation, part.images) if out else None
    paths = write_report(evaluation, info, out, images=part.images, figures={**model_figures(model, out),
                         **calibration_figures}, heatmaps=heatmaps, calibration=calibration) if out else {}
    return RunResult(Path(out) if out else Path("."), Path(model_path), paths, evaluation.headline())


def check_can_abstain(splits: DatasetSplits, abstain: dict) -> None:
    """Refuse, before any training, an abstention the data cannot give: it needs single-label
    data with a validation split to choose the threshold on."""
    check_accept(abstain["accept"])
    check_score(abstain["score"])
    if splits.train.multi_label:
        raise ImgclsError("--accept is for single-label data; a multi-label model already answers no label "
                          "when none is above its threshold")
    if splits.val is None or not len(splits.val):
        raise ImgclsError("--accept chooses its threshold on the validation split; use a --val-fraction above 0")


def abstain_saved(model_path: str | Path, data: str, options: DataOptions, abstain: dict,
                  out: str | Path | None = None) -> tuple[Path, Abstention]:
    """Fit an abstention for a saved model on data's validation split (knn: its training split as
    reference; use the data flags the model was trained with, so val is the same held-out part),
    and save the model with it to out (default: in place)."""
    from imgcls.models.artifact import load_model, resolve_model_path
    path = resolve_model_path(model_path)
    model = load_model(path)
    if not model.takes_images:
        raise ImgclsError(f"{model_path}: a model fitted on feature vectors; fit its abstention from Python "
                          "(imgcls.models.abstention.fit_abstention)")
    if options.size is not None or options.channels is not None or options.decode is not None:
        raise ImgclsError("abstain decodes images exactly as the model expects; drop --image-size, --channels "
                          "and --decode")
    splits = load_dataset(data, dataclasses.replace(options, preprocessing=model.preprocessing_))
    check_can_abstain(splits, abstain)
    if splits.val.class_names != model.class_names_:
        raise ImgclsError(f"{data} has classes {', '.join(splits.val.class_names)}; the model was trained on "
                          f"{', '.join(model.class_names_)}")
    model.abstention_ = fit_abstention(model, splits.val, abstain["accept"], abstain["score"], reference=splits.train)
    return save_model(model, Path(out) if out else path), model.abstention_


def _decode_text(prep) -> str:
    return (f"{prep.channels} channel(s), {prep.size[0]}x{prep.size[1]}, {prep.resize}, crop {prep.crop_pct:g}, "
            f"{prep.interpolation}, {prep.decode} decode")


def _sizes_text(splits: DatasetSplits) -> str:
    return ", ".join(f"{n:,} {name}" for name, n in splits.summary().items())
