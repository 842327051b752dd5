"""A network's settings from the data and the time it may take: the batch size from the number of
training images, the learning rate from a short range test on the training split (what `imgcls
lr-find` runs), and the epochs from this machine's measured speed. Only the settings asked for
("auto") are planned; every other one is used as given.

The epochs are fixed before training starts, so the learning-rate schedule stays one pure function
of the step and the planned total, and a resumed run replays exactly (it takes the planned values
from the run's config.json instead of planning again). The one exception is the deadline's
(imgcls.planning.budget.DeadlineHook): when the first real steps run slower than measured here, it
shortens the run, the schedule follows the new total, and the checkpoint records it for a resume.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from imgcls.data.dataset import ImageDataset
from imgcls.errors import ImgclsError
from imgcls.models.registry import create_model
from imgcls.models.transfer import TransferClassifier
from imgcls.planning.speed import NetworkSpeed, network_speed
from imgcls.training.lr_find import range_test, write_range_test
from imgcls.training.memory import step_bytes_per_image

PLANNED = ("lr", "epochs", "batch_size")   # the settings a run may leave to the planner
AUTO = "auto"
RANGE_TEST_STEPS = 60       # fastai runs 100; 60 spans 1e-5..10 in factors of 1.12
RANGE_TEST_LR = (1e-5, 10.0)
RANGE_TEST_SHARE = 0.25     # of a training's time, at most, for its range test
TARGET_STEPS = 3000         # optimiser steps that are plenty for these networks; epochs stop there
MAX_EPOCHS = 100
MARGIN = 0.85               # epochs are planned to fill this share of their time: a busy machine's speed wanders,
                            # and a run cut short by its deadline ends mid-schedule
BATCH_RANGE = (16, 256)
STEP_MEMORY = 512 * 2**20   # bytes a training step's activations may take, at most, when the batch is planned


def batch_size_for(n_train: int, step_bytes_per_image: int = 0) -> int:
    """A power of two near n_train / 16, within BATCH_RANGE: a small dataset gets about 16 optimiser
    steps an epoch, a large one batches big enough to keep a CPU's cores busy; and no larger than
    the largest power of two whose step holds STEP_MEMORY (photographs at 192 px: LeNet-5 keeps
    about 4 MB an image), though never below BATCH_RANGE's floor."""
    wanted = max(n_train / 16, 1)
    size = int(min(max(2 ** round(math.log2(wanted)), BATCH_RANGE[0]), BATCH_RANGE[1]))
    return max(min(size, memory_cap(step_bytes_per_image)), BATCH_RANGE[0]) if step_bytes_per_image else size


def memory_cap(step_bytes_per_image: int) -> int:
    """The largest power of two of images whose training step holds STEP_MEMORY."""
    return 2 ** max(0, int(math.log2(max(STEP_MEMORY // max(step_bytes_per_image, 1), 1))))


def epochs_cap(steps_per_epoch: int) -> int:
    """The most epochs worth planning: TARGET_STEPS optimiser steps, at most MAX_EPOCHS."""
    return max(1, min(MAX_EPOCHS, math.ceil(TARGET_STEPS / max(steps_per_epoch, 1))))


def plans_epochs(model) -> bool:
    """Whether the model trains in epochs by imgcls's trainer (a network; a transfer model only in
    mode finetune): what a time budget can plan."""
    if not model.capabilities.network:
        return False
    return not isinstance(model, TransferClassifier) or model.mode == "finetune"


def range_testable(model) -> bool:
    """Whether `lr auto` applies: a network trained from its first layer (a transfer model keeps its
    fine-tuning learning rate, whose two stages a single range test does not describe)."""
    return model.capabilities.network and not isinstance(model, TransferClassifier)


def check_auto(name: str, params: dict) -> None:
    """One-line errors for "auto" settings the model cannot plan."""
    asked = [key for key, value in params.items() if value == AUTO]
    if not asked:
        return
    model = create_model(name, **{k: v for k, v in params.items() if v != AUTO})
    if not plans_epochs(model):
        raise ImgclsError(f"{asked[0]} auto applies to networks trained in epochs; {name} has no "
                          f"{asked[0].replace('_', ' ')} to plan")
    if "lr" in asked and not range_testable(model):
        raise ImgclsError(f"lr auto runs a range test on a network trained from scratch; {name} keeps its "
                          "fine-tuning learning rate (give --lr)")
    unknown = sorted(set(asked) - set(PLANNED))
    if unknown:
        raise ImgclsError(f"{unknown[0]} cannot be auto; only {', '.join(PLANNED)} can")


def unset_to_auto(name: str, params: dict) -> dict:
    """params with every plannable setting it does not give set to "auto" (nothing for models
    that do not train in epochs; the learning rate only where a range test applies)."""
    model = create_model(name, **{k: v for k, v in params.items() if v != AUTO})
    if not plans_epochs(model):
        return dict(params)
    keys = [k for k in PLANNED if k != "lr" or range_testable(model)]
    return {**{k: AUTO for k in keys if k not in params}, **params}


@dataclass
class Planned:
    """A network with its planned settings, and how each was chosen."""

    model: object                   # the classifier, created with the resolved settings
    params: dict                    # every setting given or planned, as create_model takes them
    notes: dict = field(default_factory=dict)       # setting -> how it was chosen
    range_test: dict | None = None  # the lr range test's result, where one ran
    speed: NetworkSpeed | None = None
    seconds: float = 0.0            # spent planning: measuring and the range test

    def to_dict(self) -> dict:
        return {key: {"value": self.params.get(key), "how": how} for key, how in self.notes.items()}


@dataclass
class Measured:
    """A network at its (planned) batch size, with its speed measured on this machine."""

    name: str
    params: dict            # with the batch size resolved; other settings may still be "auto"
    notes: dict
    speed: NetworkSpeed
    seconds: float          # spent measuring

    def epoch_seconds(self, train: ImageDataset, val: ImageDataset | None, overhead: float = 0.0) -> float:
        return self.speed.epoch_seconds(len(train), len(val) if val is not None else 0) + overhead

    def range_test_seconds(self) -> float:
        return RANGE_TEST_STEPS * self.speed.step_seconds if self.params.get("lr") == AUTO else 0.0


def measure_network(name: str, params: dict, train: ImageDataset, val: ImageDataset | None,
                    seconds: float | None = None) -> Measured:
    """Resolve the batch size if it is "auto" and time the network at it (imgcls.planning.speed);
    seconds: the time its training may take, which bounds measuring its execution."""
    start = time.monotonic()
    check_auto(name, params)
    params, notes = dict(params), {}
    if params.get("batch_size") == AUTO:
        params["batch_size"], notes["batch_size"] = planned_batch_size(name, params, train)
    model = create_model(name, **{k: v for k, v in params.items() if v != AUTO})
    speed = network_speed(model, train, val, seconds)
    return Measured(name, params, notes, speed, time.monotonic() - start)


def planned_batch_size(name: str, params: dict, train: ImageDataset) -> tuple[int, str]:
    """The batch size for the training data and what one image's step takes in memory, and why."""
    model = create_model(name, **{k: v for k, v in params.items() if v != AUTO})
    per_image = step_bytes_per_image(model.network_for(train), tuple(train.images.shape[1:]))
    size, by_count = batch_size_for(len(train), per_image), batch_size_for(len(train))
    why = (f"{size}: a power of two near 1/16 of the {len(train):,} training images (within "
           f"{BATCH_RANGE[0]}..{BATCH_RANGE[1]})")
    if size < by_count:
        why = (f"{size}: the largest power of two whose step's activations ({per_image / 2**20:.1f} MB an image) "
               f"fit {STEP_MEMORY // 2**20} MB; {by_count} would be near 1/16 of the {len(train):,} training images")
    return size, why


def plan_network(name: str, params: dict, train: ImageDataset, val: ImageDataset | None, seconds: float,
                 *, measured: Measured | None = None, reserve: Callable[[NetworkSpeed], float] = lambda speed: 0.0,
                 epoch_overhead: float = 0.0, must_fit: bool = True) -> Planned:
    """Resolve the "auto" settings in params for a network that may take `seconds` (measuring it,
    its range test and its training, validation included), less reserve(its measured speed) (kept
    for what follows: its test evaluation and report). measured: the network measured already
    (measure_network; its time is then not part of `seconds`). epoch_overhead: seconds each epoch
    adds besides training and validating (the history files a run folder gets). Without any "auto"
    setting the speed is still measured, for the caller's deadline. must_fit: an error when not
    even one epoch fits (else one epoch, with a note)."""
    start = time.monotonic()
    measured = measured or measure_network(name, params, train, val, seconds)
    fixed = {k: v for k, v in measured.params.items() if v != AUTO}
    notes, speed = dict(measured.notes), measured.speed
    model = create_model(name, **fixed)
    result = None
    if params.get("lr") == AUTO:
        test_seconds = measured.range_test_seconds()
        if test_seconds <= RANGE_TEST_SHARE * (seconds - (time.monotonic() - start)):
            result = range_test(model, train, steps=RANGE_TEST_STEPS, min_lr=RANGE_TEST_LR[0],
                                max_lr=RANGE_TEST_LR[1], show_progress=False)
            fixed["lr"] = float(f"{result['suggested_lr']:.3g}")
            notes["lr"] = (f"{fixed['lr']:.3g}: suggested by a learning-rate range test of {len(result['lrs'])} "
                           f"steps on the training split")
        else:
            fixed["lr"] = model.lr
            notes["lr"] = (f"{model.lr:.3g} ({name}'s default): a range test of {RANGE_TEST_STEPS} steps "
                           f"(about {test_seconds:.0f} s here) did not fit the time")
    if params.get("epochs") == AUTO:
        left = seconds - (time.monotonic() - start) - reserve(speed)
        per_epoch = measured.epoch_seconds(train, val, epoch_overhead)
        steps_per_epoch = max(1, -(-len(train) // fixed.get("batch_size", model.batch_size)))
        cap = epochs_cap(steps_per_epoch)
        head = model.head_epochs if isinstance(model, TransferClassifier) else 0   # a fine-tune's frozen stage
        fits = int(MARGIN * left // per_epoch) - head
        if fits < 1 and must_fit:
            raise ImgclsError(f"one epoch of {name} takes about {per_epoch:.1f} s on this machine and "
                              f"{max(left, 0):.0f} s are left for training it")
        fixed["epochs"] = max(1, min(fits, cap))
        limit = (f"the {cap} epochs of about {TARGET_STEPS:,} optimiser steps" if fits >= cap
                 else f"what fits {MARGIN:.0%} of {max(left, 0):.0f} s")
        notes["epochs"] = (f"{fixed['epochs']}: {limit}, at {per_epoch:.2f} s an epoch measured here "
                           f"({speed.step_seconds * 1000:.0f} ms a step of {speed.batch_size} images)"
                           + ("" if fits >= 1 else "; not even one epoch fits the time"))
    model = create_model(name, **fixed)
    return Planned(model, fixed, notes, result, speed, time.monotonic() - start + measured.seconds)


def write_range_test_of(result: dict, out: str | Path, model: str, dataset: str) -> None:
    """lr_find.json and lr_find.png in the run folder, naming the model and dataset, as `imgcls
    lr-find` writes them: the run's report then records the advice beside the rate used."""
    write_range_test({"model": model, "dataset": dataset, **result}, out)
