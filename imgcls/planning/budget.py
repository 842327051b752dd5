"""Time budgets: reading one ("90s", "5m", "1h30m"), the clock of a budgeted command, and the
training hook that keeps a run inside its deadline: it shortens the run from its real speed, ends
it after an epoch when another would overrun, and cuts an epoch that would."""

from __future__ import annotations

import math
import re
import time
from collections import deque
from dataclasses import dataclass, field

from imgcls.errors import ImgclsError
from imgcls.training.trainer import Hook, Trainer

DEFAULT_BUDGET = 300.0      # seconds: `imgcls train`'s budget when none is given
REPLAN_AFTER = 12           # batches timed before the run is re-planned from them...
REPLAN_SHARE = 0.05         # ...or this share of its batches, whichever is more
WARMUP_BATCHES = 2          # not timed: allocations, kernel choices, the data pipeline starting
WINDOW = 20                 # the last batches timed, whose mean is the speed the deadline plans with
REPLAN_MARGIN = 0.95        # a re-plan fills this share of the time left: the speed still wanders
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
    """Keeps a training inside its deadline (a clock() value; time.monotonic() by default) when the
    machine runs slower than the planner measured (a busier machine, the first epoch's pipeline,
    another thread count, validation):

    1. Re-plan: after the first REPLAN_AFTER batches (or REPLAN_SHARE of the run's, whichever is
       more; the first WARMUP_BATCHES are not timed), when the epochs left, at the measured seconds
       a batch plus each epoch's end (validation, checkpoints, history files), would end after the
       deadline, the run is shortened to the epochs that fit (at least the one under way):
       Trainer.shorten, so the learning-rate schedule ends with the new total. It only shortens.
    2. After each epoch: training ends when another epoch like the last would end after the deadline.
    3. Mid-epoch: when the rest of the epoch under way and its end would end after the deadline, the
       epoch ends at its next optimiser step and is validated (Trainer.cut_epoch), and training ends.

    step_seconds and epoch_end_seconds: what the planner measured for a batch and planned for each
    epoch's end; the end is scaled by how much slower the batches run, until an epoch has ended
    and measured it. The trainer keeps the best epoch's weights, as after early stopping."""

    def __init__(self, deadline: float, step_seconds: float | None = None, epoch_end_seconds: float = 0.0,
                 clock=time.monotonic):
        self.deadline, self.clock = deadline, clock
        self.step_seconds, self.planned_end = step_seconds, epoch_end_seconds
        self.measured_end: float | None = None       # the last epoch end's seconds, once one has ended
        self.planned = 0                # epochs, as planned
        self.replanned: dict = {}       # the re-plan's figures, when it shortened the run
        self.stopped_after = 0          # the epoch after which it ended training (0: it did not)
        self.cut: tuple[int, int, int] | None = None    # (epoch, batches trained, of batches) when it cut one

    def on_train_begin(self, trainer: Trainer) -> None:
        self.planned = trainer.state.shortened.get("from", trainer.cfg.epochs)    # a resumed run's, too
        self.mark = self.epoch_began = self.clock()
        self.batches, self.timed = 0, deque(maxlen=WINDOW)
        left = (trainer.cfg.epochs - trainer.state.epoch) * trainer.batches_per_epoch - trainer.state.batches_done
        self.replan_at = max(REPLAN_AFTER, math.ceil(REPLAN_SHARE * left))

    def on_batch_end(self, trainer: Trainer, batch_size: int, loss: float, correct: int) -> None:
        now, self.batches = self.clock(), self.batches + 1
        if self.batches > WARMUP_BATCHES:
            self.timed.append(now - self.mark)
        self.mark = now
        if not self.timed or trainer.state.stopped_early:
            return
        per_batch = sum(self.timed) / len(self.timed)
        if self.batches == self.replan_at:
            self._replan(trainer, now, per_batch)
        state = trainer.state
        rest = trainer.batches_this_epoch - state.batches_done
        if rest > 0 and now + rest * per_batch + self._epoch_end(per_batch) > self.deadline:
            self.cut = (state.epoch + 1, state.batches_done, trainer.batches_this_epoch)
            trainer.cut_epoch(f"the time budget (the rest of epoch {state.epoch + 1} would end after the deadline)")

    def on_epoch_end(self, trainer: Trainer, record: dict) -> None:
        now = self.clock()
        self.measured_end = now - self.mark        # validation, checkpoints, the hooks before this one
        last, self.epoch_began, self.mark = now - self.epoch_began, now, now     # training and validating it
        state = trainer.state
        if self.cut is not None:      # it ended at its next optimiser step: maybe its last
            done = record.get("cut_after_batches")
            self.cut = (state.epoch, done, self.cut[2]) if done else None
            self.stopped_after = 0 if self.cut else state.epoch
        if not state.stopped_early and state.epoch < trainer.cfg.epochs and now + last > self.deadline:
            self.stopped_after = state.epoch
            trainer.stop(f"the time budget (another epoch of {last:.1f} s would end after the deadline)")

    def _epoch_end(self, per_batch: float) -> float:
        """Seconds an epoch's end will take: as last measured, else as planned, scaled by how much
        slower than planned the batches run."""
        if self.measured_end is not None:
            return self.measured_end
        slower = per_batch / self.step_seconds if self.step_seconds else 1.0
        return self.planned_end * max(1.0, slower)

    def _replan(self, trainer: Trainer, now: float, per_batch: float) -> None:
        state, per_epoch = trainer.state, trainer.batches_this_epoch
        end, left = self._epoch_end(per_batch), REPLAN_MARGIN * (self.deadline - now)

        def needs(epochs: int) -> float:         # seconds for `epochs` more epochs, the one under way included
            return (epochs * per_epoch - state.batches_done) * per_batch + epochs * end
        wanted = trainer.cfg.epochs - state.epoch
        if needs(wanted) <= left:
            return
        fits = max([e for e in range(1, wanted) if needs(e) <= left], default=1)
        self.replanned = {"planned_epochs": trainer.cfg.epochs, "epochs": state.epoch + fits,
                          "planned_step_seconds": self.step_seconds, "measured_step_seconds": per_batch,
                          "after_batches": self.batches}
        trainer.shorten(state.epoch + fits, f"the time budget (measured {per_batch * 1000:.0f} ms a step)")

    def record(self) -> dict:
        """What the deadline did, for the run's report: {} when the run went as planned."""
        found = dict(self.replanned)
        if self.cut is not None:
            found["cut"] = dict(zip(("epoch", "batches", "of_batches"), self.cut))
        if self.stopped_after:
            found["stopped_after_epoch"] = self.stopped_after
        return found

    def note(self) -> str | None:
        """What the deadline did to the run, in words, or None when it ran as planned."""
        said = []
        if self.replanned:
            r = self.replanned
            planned = (f" against {r['planned_step_seconds'] * 1000:.0f} ms planned"
                       if r["planned_step_seconds"] else "")
            said.append(f"shortened from {r['planned_epochs']} to {r['epochs']} epochs after {r['after_batches']} "
                        f"steps: they took {r['measured_step_seconds'] * 1000:.0f} ms each{planned}, and the "
                        "learning-rate schedule follows the new total")
        if self.cut is not None:
            epoch, done, of = self.cut
            said.append(f"ended epoch {epoch} after {done} of its {of} batches, at the deadline, and validated "
                        "what it had trained")
        elif self.stopped_after:
            said.append(f"stopped at the deadline after epoch {self.stopped_after} of {self.planned}: the machine "
                        "ran slower than measured")
        if not said:
            return None
        kept = "; the best epoch on validation is kept" if self.cut is not None or self.stopped_after else ""
        return "; ".join(said) + kept
