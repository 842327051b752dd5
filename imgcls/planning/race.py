"""The race behind `imgcls train DATA --model auto`: candidates planned from the data, the time
budget and this machine's measured speed, raced on the validation split only; the winner (the
best validation figure among the candidates trained to their end) is then evaluated once on test
by the caller (imgcls.fit_and_evaluate.finish_run).

In order, cheapest first, each started only when its estimated time, plus the time the slowest
finisher would need for the test evaluation and the report, fits what is left of the budget:

1. the kNN baseline on pixels (a budget that cannot fit even this is an error naming the minimum),
   then the linear classifier;
2. kNN and a linear probe on a pretrained backbone's embeddings (computed once for both): for
   photographs, and for small images when they take a small share of the budget;
3. the networks (imgcls.planning.candidates), in a budgeted successive halving. Each is measured
   (a few training steps at its batch size) while the time left could still hold it; as many as
   can each train MIN_FIRST_ROUND_EPOCHS epochs (and run their range test) in EXPLORE_SHARE of the
   time left make a first round, each briefly trained with its epochs planned for its share and its
   learning rate from a range test; the others are halved out, and the best trains again from
   scratch with the rest of the time (its learning rate and batch size kept), unless its first run
   had all the epochs worth planning already. A single network gets all the time. A network's
   epochs are planned before it trains; if the machine runs slower, its deadline (DeadlineHook)
   shortens it from its first real steps, or ends it early, keeping its best epoch.

A finished candidate that scores 100% on validation ends the race: nothing can beat it there.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import torch

from imgcls.data.dataset import DatasetSplits
from imgcls.data.load import DataOptions, load_dataset
from imgcls.errors import ImgclsError
from imgcls.fit_and_evaluate import fit_and_validate
from imgcls.models.abstention import check_can_abstain, fit_abstention
from imgcls.models.distance import ExactSearch
from imgcls.models.knn import decide, vote
from imgcls.models.registry import create_model, model_class
from imgcls.models.transfer import shared_embeddings
from imgcls.planning.budget import Budget, DeadlineHook, duration_text
from imgcls.planning.candidates import (BACKBONE, BACKBONE_SIDE, SMALL_IMAGE_SIDE, Candidate, embedding_candidates,
                                        network_candidates, pretrained_available)
from imgcls.planning.profile import PIXEL_SIDE, DataProfile, FileSurvey, profile_of, survey_files
from imgcls.planning.settings import epochs_cap, measure_network, plan_network
from imgcls.planning.speed import figure_seconds, finish_seconds, seconds_of
from imgcls.progress import console, stdout

EXPLORE_SHARE = 0.3        # of the networks' time, for the brief first runs when several networks compete
EMBEDDING_SHARE = 0.2      # of the budget, at most, for a backbone's embeddings of small images
FULL_SIZE_SHARE = EMBEDDING_SHARE   # small images are embedded at the backbone's own size where that fits this share too
FULL_SIZE_COST = (BACKBONE_SIDE / SMALL_IMAGE_SIDE) ** 2    # its time per image against SMALL_IMAGE_SIDE's
PROMOTION_GAIN = 2.0       # the best network trains again only with at least this many times its first run's time
MIN_FIRST_ROUND_EPOCHS = 3  # a first-round run holds at least this many epochs, or fewer networks race
KNN_KS = (5, 3, 7, 1, 9)   # k tried on validation, in order of preference on a tie
KNN_SAMPLE = 128           # validation queries timed to estimate the search


@dataclass
class Choice:
    """The race's outcome: the winner, fitted and validated, with everything the run folder records."""

    winner: Candidate
    splits: DatasetSplits              # the winner's decoding of the data (what it trained on)
    data_options: DataOptions          # and how to decode it again
    candidates: list[Candidate]
    plan: dict                         # the budget's accounting and what was measured
    race_seconds: float

    @property
    def params(self) -> dict:
        return self.winner.fitted.model.get_params()

    @property
    def planned(self) -> dict:
        return {**self.winner.planned, "model": {"value": self.winner.model, "how": self.why()}}

    @property
    def range_test(self) -> dict | None:
        return self.winner.range_test

    @property
    def rows(self) -> list[dict]:
        return [c.row() for c in self.candidates]

    def why(self) -> str:
        rivals = [c for c in self.candidates if c.competes and c is not self.winner]
        runner = max(rivals, key=lambda c: c.score, default=None)
        text = f"chosen by --model auto: the best validation figure of {sum(c.competes for c in self.candidates)}"
        text += f" candidates trained ({self.winner.score:.4g}"
        return text + (f"; next {runner.label}, {runner.score:.4g})" if runner else ")")

    def account_finish(self, budget: Budget) -> None:
        """Add the test evaluation and report to the accounting, now that they are done."""
        self.plan["finish_seconds"] = round(budget.elapsed() - self.plan["race_ended_at"], 2)
        self.plan["total_seconds"] = round(budget.elapsed(), 2)

    def reproduce_text(self, data: str) -> str:
        """The command line that trains the winner again with explicit flags."""
        model = self.winner.fitted.model
        defaults = {f.name: f.default for f in dataclasses.fields(model_class(self.winner.model))
                    if f.init and f.default is not dataclasses.MISSING}
        # The planned settings always: left out, a named network would plan them again.
        flags = [f"--{k.replace('_', '-')} {_flag_value(v)}" for k, v in model.get_params().items()
                 if k not in ("seed", "threshold") and (defaults.get(k, object()) != v or k in self.winner.planned)]
        size = self.data_options.size
        if size and self.winner.view == "pixels":
            flags.append(f"--image-size {size}")
        return f"the same model with explicit flags: imgcls train {data} --model {self.winner.model} " + " ".join(flags)


def _flag_value(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    text = str(value)
    return f"{text}" if text and " " not in text else f"'{text}'"


def choose_model(data: str, options: DataOptions, budget: Budget, *, calibration: str = "auto",
                 abstain: dict | None = None) -> Choice:
    """Load the data, race the candidates on its validation split within the budget, and return the
    winner (abstaining, if asked, once chosen). Nothing is written and the test split is not touched."""
    survey = survey_files(data)
    if survey is not None:
        check_decoding_estimate(survey, _pixel_options(options, survey), budget, data)
    splits = load_dataset(data, _pixel_options(options, survey))
    if splits.val is None or not len(splits.val):
        raise ImgclsError("--model auto races its candidates on the validation split, and this run has none "
                          "(use a --val-fraction above 0, or name a model)")
    if not len(splits.test):
        raise ImgclsError(f"{splits.name}: no test images to evaluate on (use a --test-fraction above 0)")
    if splits.train.streamed:
        raise ImgclsError(f"--model auto needs the images in memory, and {splits.name} is streamed from its files "
                          "(over --memory-budget): name a network with --model, or give a larger --memory-budget")
    if abstain:
        check_can_abstain(splits, abstain)
    race = Race(data, options, budget, splits, survey, calibration)
    console.print(f"--model auto: {race.profile.describe()}; a time budget of {duration_text(budget.seconds)}, "
                  f"{budget.left():.0f} s left", highlight=False)
    race.run()
    winner = race.winner()
    splits = race.views[winner.view]
    if abstain:
        model = winner.fitted.model
        model.abstention_ = fit_abstention(model, splits.val, abstain["accept"], abstain["score"],
                                           reference=splits.train)
    print_leaderboard(race.candidates, splits.name, race.profile)
    plan = {**race.accounting(), "race_ended_at": round(budget.elapsed(), 2)}
    return Choice(winner, splits, race.options_of(winner.view), race.candidates, plan, race.seconds)


def _pixel_options(options: DataOptions, survey: FileSurvey | None) -> DataOptions:
    """The decoding pixel models get: the flags', else the data's default, at most PIXEL_SIDE a side."""
    if survey is None or options.size is not None or options.preprocessing is not None:
        return options
    prep = survey.preprocessing(options)
    if max(prep.size) <= PIXEL_SIDE:
        return options
    return dataclasses.replace(options, size=min(PIXEL_SIDE, survey.native_side) or PIXEL_SIDE)


def check_decoding_estimate(survey: FileSurvey, options: DataOptions, budget: Budget, data: str) -> float:
    """The estimated seconds to decode every file at options' decoding; an error when that alone
    exceeds what is left of the budget."""
    estimate = survey.decode_seconds(survey.preprocessing(options))
    if estimate > budget.left():
        raise ImgclsError(f"decoding the {survey.files:,} image files of {data} would take about {estimate:.0f} s on "
                          f"this machine (timed on {len(survey.sample)} of them), more than the time budget of "
                          f"{duration_text(budget.seconds)} allows; give --time-budget {duration_text(budget.elapsed() + estimate * 1.5 + 30)} or more, "
                          "or a smaller --image-size")
    return estimate


class Race:
    """The candidates, their measured costs and results, and the budget they share."""

    def __init__(self, data: str, options: DataOptions, budget: Budget, splits: DatasetSplits,
                 survey: FileSurvey | None, calibration: str):
        self.data, self.options, self.budget, self.survey = data, options, budget, survey
        self.calibration = calibration
        self.views: dict[str, DatasetSplits] = {"pixels": splits}
        self.view_options: dict[str, DataOptions] = {"pixels": _pixel_options(options, survey)}
        self.profile: DataProfile = profile_of(splits, survey)
        self.candidates: list[Candidate] = []
        self.reserve = 0.0               # the test evaluation and report of the slowest finisher so far
        self.loaded_at = budget.elapsed()
        self.figure = figure_seconds()   # a report figure, drawn here now
        self.seed = options.seed
        self.started = time.monotonic()
        self.measured: dict = {"figure_seconds": round(self.figure, 3)}

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started

    def options_of(self, view: str) -> DataOptions:
        return self.view_options[view]

    # -- the race -----------------------------------------------------------------------------
    def run(self) -> None:
        self.knn()
        self.linear()
        self.embeddings()
        self.networks()

    def winner(self) -> Candidate:
        best = max((c for c in self.candidates if c.competes), key=lambda c: c.score)   # first of equals
        best.winner = True
        return best

    def left(self) -> float:
        """Seconds left for candidates: the budget's, less the slowest finisher's test evaluation and report."""
        return self.budget.left() - self.reserve

    def add(self, candidate: Candidate) -> Candidate:
        self.candidates.append(candidate)
        return candidate

    def perfect(self) -> Candidate | None:
        """A finished candidate scoring 100% on validation: nothing can beat it there."""
        return next((c for c in self.candidates if c.competes and c.score >= 1.0), None)

    def skip(self, candidate: Candidate, reason: str) -> None:
        candidate.status, candidate.reason = "not started", reason
        console.print(f"  {candidate.label}: not started ({reason})", highlight=False)

    def should_skip(self, candidate: Candidate, estimate: float | None = None, finish: float = 0.0) -> bool:
        """Skip (and say why) a candidate that cannot win or cannot finish in what is left."""
        best = self.perfect()
        if best is not None:
            self.skip(candidate, f"{best.label} already scores 100% on validation")
            return True
        if estimate is not None:
            candidate.estimate = estimate
            candidate.allowed = self.left() - max(0.0, finish - self.reserve)
            need = estimate + max(0.0, finish - self.reserve)
            if need > self.left():
                self.skip(candidate, f"needs about {need:.0f} s with its test evaluation; {max(self.left(), 0):.0f} s "
                          "are left")
                return True
        return False

    def fit(self, candidate: Candidate, model, started: float, hooks=()) -> Candidate:
        """Fit on the candidate's view of train, calibrate and measure on validation; record it."""
        splits = self.views[candidate.view]
        try:
            fitted = fit_and_validate(model, candidate.model, splits, calibration=self.calibration, hooks=hooks)
        except ImgclsError as exc:
            candidate.status, candidate.reason = "failed", str(exc)
            candidate.seconds = time.monotonic() - started
            console.print(f"  {candidate.label}: failed ({exc})", highlight=False)
            return candidate
        candidate.fitted, candidate.status = fitted, "finished"
        candidate.seconds = time.monotonic() - started
        notes = [h.note() for h in hooks if isinstance(h, DeadlineHook) and h.note()]
        candidate.reason = notes[0] if notes else candidate.reason
        per_image = fitted.validation_seconds / max(len(splits.val), 1)
        self.reserve = max(self.reserve, self.finish_estimate(model, per_image))
        score = candidate.score
        console.print(f"  {candidate.label}: validation {_score_text(score, self.profile)} in "
                      f"{candidate.seconds:.1f} s", highlight=False)
        return candidate

    def finish_estimate(self, model, predict_seconds: float) -> float:
        calibrated = model.calibration_ is not None or (self.calibration == "auto" and model.has_logits
                                                         and not self.profile.multi_label)
        return finish_seconds(predict_seconds, self.profile.test, self.figure, calibrated=calibrated,
                              network=model.capabilities.explained_by == "network",
                              weight_images=model.capabilities.explained_by in ("network", "template"))

    # -- 1. baselines on pixels ----------------------------------------------------------------
    def knn(self) -> None:
        """kNN on pixels: k and L1 or L2 chosen on validation (one search per metric), then fitted."""
        started = time.monotonic()
        train, val = self.views["pixels"].train, self.views["pixels"].val
        probe = create_model("knn")
        fit = seconds_of(lambda: probe.fit(train))
        sample = val.images[:KNN_SAMPLE]
        per_query = seconds_of(lambda: probe.predict(sample)) / len(sample)
        self.measured["knn_query_seconds"] = per_query
        estimate = fit + 3 * len(val) * per_query             # two searches to choose, one to validate
        finish = finish_seconds(per_query, self.profile.test, self.figure)
        if estimate + finish > self.budget.left():
            minimum = self.budget.elapsed() + estimate + finish
            raise ImgclsError(f"a time budget of {duration_text(self.budget.seconds)} cannot fit even the kNN "
                              f"baseline on {self.views['pixels'].name} on this machine: loading the data, kNN on "
                              f"the validation split and the test evaluation and report need about {minimum:.0f} s; "
                              f"give --time-budget {duration_text(minimum * 1.25 + 1)} or more")
        allowed = self.budget.left() - finish
        k, metric = (5, "l2") if self.profile.multi_label else _knn_on_validation(train, val)
        candidate = self.add(Candidate(f"knn (k={k}, {metric})", "knn", {"k": k, "metric": metric}, "baseline",
                                       estimate=estimate, allowed=allowed))
        self.fit(candidate, create_model("knn", k=k, metric=metric), started)

    def linear(self) -> None:
        """The linear classifier on standardised pixels, its time estimated from one epoch on a sample."""
        started = time.monotonic()
        train = self.views["pixels"].train
        candidate = self.add(Candidate("linear", "linear", {"seed": self.seed}, "baseline"))
        if self.should_skip(candidate):
            return
        sample = train.subset(torch.arange(min(len(train), 2048)))
        one_epoch = seconds_of(lambda: create_model("linear", epochs=1, seed=self.seed).fit(sample))
        model = create_model("linear", seed=self.seed)
        estimate = one_epoch * len(train) / len(sample) * model.epochs
        if self.should_skip(candidate, estimate, finish_seconds(0.0, self.profile.test, self.figure,
                                                                weight_images=True)):
            return
        self.fit(candidate, model, started)

    # -- 2. a pretrained backbone's embeddings --------------------------------------------------
    def embeddings(self) -> None:
        found = [self.add(c) for c in embedding_candidates(self.profile, self.seed)]
        if not pretrained_available():
            for c in found:
                self.skip(c, f"the pretrained weights of {BACKBONE} are not installed")
            return
        if self.should_skip(found[0]):
            for c in found[1:]:
                self.skip(c, found[0].reason)
            return
        started = time.monotonic()
        model = create_model(found[0].model, **found[0].params)
        per_image = _embedding_seconds(model, self.views["pixels"].train)
        n = self.profile.train + self.profile.val
        full_size = per_image * FULL_SIZE_COST * (n + 3 * self.profile.val + self.profile.test)
        if not self.profile.photographs and full_size <= FULL_SIZE_SHARE * self.budget.seconds:
            # few small images: the backbone at its own size is affordable, and sees them as it learnt to
            for old, new in zip(found, embedding_candidates(self.profile, self.seed, full_size=True)):
                old.label, old.params = new.label, new.params
            model, per_image = create_model(found[0].model, **found[0].params), per_image * FULL_SIZE_COST
        view, decode = self._backbone_view(model)
        self.measured["embedding_seconds"] = per_image
        shared = decode + n * per_image                       # decoding at its size, embedding train and val
        estimate = shared + 3 * self.profile.val * per_image  # and the probe's validation and calibration
        finish = finish_seconds(per_image, self.profile.test, self.figure, calibrated=True, network=True)
        allowed = self.left() if self.profile.photographs else EMBEDDING_SHARE * self.budget.seconds
        if estimate > allowed and not self.profile.photographs:
            for c in found:
                c.estimate = estimate
                self.skip(c, f"its embeddings of small images would take about {estimate:.0f} s, more than "
                          f"{EMBEDDING_SHARE:.0%} of the budget")
            return
        if self.should_skip(found[0], estimate, finish):
            for c in found[1:]:
                self.skip(c, found[0].reason)
            return
        if view is None:
            view = self._load_backbone_view(model)
            if view is None:
                for c in found:
                    self.skip(c, "decoding the files at the backbone's size gave other splits")
                return
        with shared_embeddings():
            for candidate in found:
                if candidate is not found[0] and self.should_skip(candidate):
                    continue
                self.fit(candidate, create_model(candidate.model, **candidate.params), started)
                started = time.monotonic()

    def _backbone_view(self, model) -> tuple[DatasetSplits | None, float]:
        """(the data as the backbone takes it, if ready, else None; seconds decoding it will take).
        Images in memory (arrays) are resized inside the network: the same splits serve."""
        if self.survey is None:
            self.views["backbone"], self.view_options["backbone"] = self.views["pixels"], self.view_options["pixels"]
            return self.views["backbone"], 0.0
        options = self.options.decoding_as(model.input_preprocessing())
        self.view_options["backbone"] = options
        return None, self.survey.decode_seconds(options.preprocessing)

    def _load_backbone_view(self, model) -> DatasetSplits | None:
        splits = load_dataset(self.data, self.view_options["backbone"])
        pixels = self.views["pixels"]
        if any(getattr(splits, s).names(s) != getattr(pixels, s).names(s) for s in ("train", "val", "test")):
            return None
        self.views["backbone"] = splits
        return splits

    # -- 3. networks ----------------------------------------------------------------------------
    def networks(self) -> None:
        """Measure each network that may start, choose how many a first round can hold (each at
        least MIN_FIRST_ROUND_EPOCHS in its share), run that round, and train the best again for
        longer with the time left; a single network gets all of it."""
        found = [self.add(c) for c in network_candidates(self.profile, self.seed)]
        measured = []
        for c in found:
            if c.view == "backbone" and not pretrained_available():
                self.skip(c, f"the pretrained weights of {BACKBONE} are not installed")
            elif c.view == "backbone" and "backbone" not in self.views:
                self.skip(c, "the backbone's embeddings did not fit the budget, so neither does fine-tuning it")
            elif measured and len(self._first_round(measured)) < len(measured):
                # the time left cannot hold the networks measured so far: measuring more would only cost
                self.skip(c, f"the time left holds a first round of {max(len(self._first_round(measured)), 1)} "
                          "network(s)")
            elif not self.should_skip(c):
                started = time.monotonic()
                splits = self.views[c.view]
                c.measured = measure_network(c.model, c.params, splits.train, splits.val, self.left())
                c.seconds = time.monotonic() - started
                measured.append(c)
        if not measured:
            return
        first_round = self._first_round(measured)
        for c in measured[len(first_round):] if len(first_round) > 1 else []:
            self.skip(c, f"the time left holds a first round of {len(first_round)} networks")
        if len(first_round) <= 1:
            chosen = first_round[0] if first_round else measured[0]
            for c in measured:
                if c is not chosen:
                    self.skip(c, f"the time left holds one network, {chosen.label}")
            self.train_network(chosen, self.left())
            return
        share = EXPLORE_SHARE * self.left() / len(first_round)
        for c in first_round:
            if not self.should_skip(c):
                self.train_network(c, min(share, self.left()))
        trained = sorted((c for c in first_round if c.competes), key=lambda c: -c.score)
        if not trained:
            return
        best = trained[0]
        for c in trained[1:]:
            c.status = "halved out"
            c.reason = f"below {best.label} in the first round"
        longer = self.add(Candidate(best.label, best.model, {**best.params, "lr": best.fitted.model.lr,
                                                             "batch_size": best.fitted.model.batch_size},
                                    "network", view=best.view, round=2))
        if self.should_skip(longer):
            return
        if self.left() < PROMOTION_GAIN * share:
            self.skip(longer, f"{self.left():.0f} s left, under {PROMOTION_GAIN:g}x its first run's {share:.0f} s")
            return
        steps = -(-len(self.views[best.view].train) // best.fitted.model.batch_size)
        if best.fitted.model.epochs >= epochs_cap(steps):
            self.skip(longer, f"its first run had the {best.fitted.model.epochs} epochs worth planning already")
            return
        best.reason = "the best of the first round: trained again for longer"
        longer.measured = dataclasses.replace(best.measured, params=longer.params, seconds=0.0)
        self.train_network(longer, self.left(), best.range_test)

    def _first_round(self, measured: list[Candidate]) -> list[Candidate]:
        """The most networks (in order of preference) whose first runs, EXPLORE_SHARE of the time
        left split between them, each hold its range test and MIN_FIRST_ROUND_EPOCHS epochs; a
        single one (the first whose one epoch fits) when two do not fit."""
        left = self.left()
        for n in range(len(measured), 1, -1):
            share = EXPLORE_SHARE * left / n
            if all(self._first_run_seconds(c) <= share for c in measured[:n]):
                return measured[:n]
        return [c for c in measured if self._epoch_seconds(c) <= left][:1]

    def _epoch_seconds(self, candidate: Candidate) -> float:
        splits = self.views[candidate.view]
        return candidate.measured.epoch_seconds(splits.train, splits.val)

    def _first_run_seconds(self, candidate: Candidate) -> float:
        return candidate.measured.range_test_seconds() + MIN_FIRST_ROUND_EPOCHS * self._epoch_seconds(candidate)

    def train_network(self, candidate: Candidate, seconds: float, range_test: dict | None = None) -> None:
        """Plan the measured network's settings for `seconds` (a range test for lr auto, its epochs
        from its speed), then train it with a deadline."""
        started = time.monotonic() - candidate.seconds       # measuring it counts
        splits = self.views[candidate.view]
        reserve_now = self.reserve

        def extra_finish(speed) -> float:        # beyond the reserve already kept, if this one wins
            return max(0.0, finish_seconds(speed.predict_seconds, self.profile.test, self.figure,
                                           calibrated=not self.profile.multi_label, network=True) - reserve_now)
        try:
            planned = plan_network(candidate.model, candidate.params, splits.train, splits.val, seconds,
                                   measured=candidate.measured, reserve=extra_finish)
        except ImgclsError as exc:
            candidate.seconds = time.monotonic() - started
            self.skip(candidate, str(exc))
            return
        candidate.planned = planned.to_dict()
        candidate.range_test = planned.range_test or range_test
        if planned.range_test is None and range_test is not None:
            candidate.planned["lr"] = {"value": planned.params.get("lr"),
                                       "how": "suggested by the range test of its first round"}
        # Planning (its range test included) and the planned epochs; measuring it came before `seconds`.
        candidate.estimate = (planned.seconds - candidate.measured.seconds
                              + self._epoch_seconds(candidate) * planned.params.get("epochs", 1))
        candidate.allowed = seconds - extra_finish(planned.speed)
        deadline = min(time.monotonic() + seconds * 1.1,
                       self.budget.deadline - max(self.reserve, reserve_now + extra_finish(planned.speed)))
        epoch_end = planned.speed.validation_seconds(len(splits.val) if splits.val is not None else 0)
        self.fit(candidate, planned.model, started,
                 hooks=[DeadlineHook(deadline, planned.speed.step_seconds, epoch_end)])

    def accounting(self) -> dict:
        """The budget's record: what was measured, and where the time went."""
        return {"time_budget": self.budget.seconds, "budget_given": self.budget.given,
                "profile": self.profile.to_dict(), "measured": self.measured,
                "loading_seconds": round(self.loaded_at, 2),
                "candidates_seconds": round(sum(c.seconds for c in self.candidates), 2),
                "race_seconds": round(self.seconds, 2), "finish_estimate_seconds": round(self.reserve, 2)}


def _knn_on_validation(train, val) -> tuple[int, str]:
    """(k, metric) of the best validation accuracy among KNN_KS x (l2, l1): one search per metric for
    the largest k, every smaller k voted over its prefix (as imgcls tune does)."""
    flat_train, flat_val = train.images.reshape(len(train), -1), val.images.reshape(len(val), -1)
    best, chosen = -1.0, (5, "l2")
    for metric in ("l2", "l1"):
        distances, indices = ExactSearch(flat_train, metric).search(flat_val, max(KNN_KS))
        labels = train.labels[indices]
        for k in KNN_KS:
            votes, first_rank = vote(distances[:, :k], labels[:, :k], train.num_classes)
            accuracy = (decide(votes, first_rank) == val.labels).double().mean().item()
            if accuracy > best:
                best, chosen = accuracy, (k, metric)
    return chosen


def _embedding_seconds(model, train) -> float:
    """Seconds a backbone takes to embed one image, timed on up to 64 training images (its batches
    hold 128) after a warm-up."""
    model.net_ = model.network_for(train)
    sample = train.images[:64]
    model.embeddings(sample[:8])
    return seconds_of(lambda: model.embeddings(sample)) / len(sample)


def _score_text(score: float | None, profile: DataProfile) -> str:
    if score is None:
        return "-"
    return f"mAP {score:.3f}" if profile.multi_label else f"accuracy {score:.2%}"


def print_leaderboard(candidates: list[Candidate], dataset: str, profile: DataProfile) -> None:
    """The race as a terminal table: every candidate, its validation figure, seconds and fate."""
    from rich.table import Table
    figure = "val mAP" if profile.multi_label else "val acc"
    table = Table(title=f"--model auto on {dataset}: the candidates, raced on the validation split",
                  title_justify="left")
    for column in ("candidate", figure, "seconds", "status"):
        table.add_column(column, justify="left" if column in ("candidate", "status") else "right")
    for c in candidates:
        status = ("winner" if c.winner else c.status) + (f": {c.reason}" if c.reason else "")
        value = c.score
        shown = "-" if value is None else (f"{value:.3f}" if profile.multi_label else f"{value:.2%}")
        label = c.label + (" (longer)" if c.round == 2 else "")
        table.add_row(label, shown, f"{c.seconds:.1f}", status)
    stdout.print(table)


__all__ = ["Choice", "Race", "choose_model", "check_decoding_estimate", "print_leaderboard"]
