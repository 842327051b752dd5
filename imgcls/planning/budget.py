"""Time budgets: reading one ("90s", "5m", "1h30m"), the clock of a budgeted command, and the
training hook that ends a run at an epoch boundary when the next epoch would overrun its deadline."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

from imgcls.errors import ImgclsError
from imgcls.training.trainer import Hook, Trainer

DEFAULT_BUDGET = 300.0      # seconds: `imgcls train`'s budget when none is given
_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?")


def parse_duration(text: str | float | int) -> float:
    """Seconds in a duration written as 90s, 5m, 1h, 1h30m or 2m30s (a bare number is seconds)."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        spoken = str(text).strip().lower().replace(" ", "")
        found = _DURATION.fullmatch(spoken)
        if re.fullmatch(r"\d+(?:\.\d+)?", spoken):
            seconds = float(spoken)
        elif spoken and found and any(found.groups()):
            hours, minutes, secs = (float(g) if g else 0.0 for g in found.groups())
            seconds = 3600 * hours + 60 * minutes + secs
        else:
            raise ImgclsError(f"cannot read the time budget {text!r}: write it as 90s, 5m, 1h or 1h30m")
    if not seconds > 0:
        raise ImgclsError(f"the time budget must be more than 0 seconds, not {text!r}")
    return seconds


def duration_text(seconds: float) -> str:
    """A duration as the flag takes it, rounded up to whole seconds: 75 -> "1m15s", 3600 -> "1h"."""
    seconds = int(-(-seconds // 1))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return "".join(f"{n}{unit}" for n, unit in ((hours, "h"), (minutes, "m"), (secs, "s")) if n) or "0s"


@dataclass
class Budget:
    """A command's time budget, counted from `started` (time.monotonic(); by default, now)."""

    seconds: float
    started: float = field(default_factory=time.monotonic)
    given: bool = True        # False: the default budget, which the user did not ask for

    @property
    def deadline(self) -> float:
        return self.started + self.seconds

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def left(self) -> float:
        return self.deadline - time.monotonic()


class DeadlineHook(Hook):
    """Ends training after an epoch when another epoch like the last would end after the deadline
    (a time.monotonic() value): the machine ran slower than measured. The trainer keeps the best
    epoch's weights, as after early stopping; `stopped_after` says when it stopped (0: it did not)."""

    def __init__(self, deadline: float):
        self.deadline = deadline
        self.stopped_after = 0
        self.planned = 0

    def on_train_begin(self, trainer: Trainer) -> None:
        self.epoch_began = time.monotonic()
        self.planned = trainer.cfg.epochs

    def on_epoch_end(self, trainer: Trainer, record: dict) -> None:
        now = time.monotonic()
        last, self.epoch_began = now - self.epoch_began, now     # training and validating it
        if trainer.state.epoch < trainer.cfg.epochs and now + last > self.deadline:
            self.stopped_after = trainer.state.epoch
            trainer.stop(f"the time budget (another epoch of {last:.1f} s would end after the deadline)")

    def note(self) -> str | None:
        """What the stop means for the run, or None when it ran all its epochs."""
        if not self.stopped_after:
            return None
        return (f"stopped at the deadline after epoch {self.stopped_after} of {self.planned}: the machine ran "
                "slower than measured; the best epoch on validation is kept")
