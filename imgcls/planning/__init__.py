"""Planning a run from the data, a time budget and this machine's measured speed.

- budget: reading a budget ("90s", "5m", "1h30m"), its clock, the deadline hook of a training;
- profile: what the data is (size, colour, classes, task, small images or photographs) and how
  long decoding its files will take;
- speed: this machine's measured speed at what a plan is made of;
- settings: a network's batch size, learning rate (a range test) and epochs, planned;
- candidates and race: `--model auto`, the budgeted race on the validation split.

It sits above imgcls.fit_and_evaluate (each candidate is fitted and validated there; the winner is
evaluated once on test by the caller, imgcls.training_run) and below the command line.
"""

from __future__ import annotations

from imgcls.data.load import DataOptions
from imgcls.errors import ImgclsError
from imgcls.models.registry import create_model
from imgcls.planning.budget import DEFAULT_BUDGET, Budget, DeadlineHook, duration_text, parse_duration
from imgcls.planning.race import Choice, check_decoding_estimate, choose_model
from imgcls.planning.settings import AUTO, PLANNED, check_auto, plans_epochs, unset_to_auto


def check_budget_use(name: str, params: dict, budget: Budget) -> None:
    """One-line errors, before any data is read, for a budget or "auto" settings the named model
    cannot use: a time budget plans a network's epochs, and kNN, say, has none."""
    check_auto(name, params)
    model = create_model(name, **{k: v for k, v in params.items() if v != AUTO})
    if budget.given and not plans_epochs(model):
        what = f"{name} in mode {model.mode}" if getattr(model, "mode", None) else name
        raise ImgclsError(f"--time-budget plans the epochs of a network trained by imgcls's trainer, and {what} "
                          "has none to plan; leave --time-budget out, or use --model auto to race it with "
                          "other models within a budget")


def check_decoding(data: str, options: DataOptions, budget: Budget) -> float | None:
    """For image files and a budget asked for: the estimated seconds to decode them (timed on a
    sample), an error when that alone exceeds the budget; None for other sources or no budget."""
    from imgcls.planning.profile import survey_files
    if not budget.given:
        return None
    survey = survey_files(data)
    return None if survey is None else check_decoding_estimate(survey, options, budget, data)


__all__ = ["AUTO", "DEFAULT_BUDGET", "PLANNED", "Budget", "Choice", "DeadlineHook", "check_budget_use",
           "check_decoding", "choose_model", "duration_text", "parse_duration", "unset_to_auto"]
