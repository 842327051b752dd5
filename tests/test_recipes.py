"""Every file in recipes/ is one the command line accepts: known models, known keys, valid values."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from imgcls.models import create_model
from imgcls.planning.budget import parse_duration

RECIPES = sorted((Path(__file__).resolve().parent.parent / "recipes").glob("*.yaml"))


def test_there_are_recipes():
    assert {"fashion-5min.yaml", "fashion-10min.yaml", "fashion-30min.yaml"} <= {p.name for p in RECIPES}


def test_the_fashion_recipes_state_their_budget_not_their_epochs():
    """A recipe by time: the planner fits the epochs to this machine's measured speed."""
    for minutes in (5, 10, 30):
        settings = yaml.safe_load((RECIPES[0].parent / f"fashion-{minutes}min.yaml").read_text())
        assert parse_duration(settings["time_budget"]) == minutes * 60 and "epochs" not in settings


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_builds_its_model(path):
    settings = yaml.safe_load(path.read_text())
    assert isinstance(settings, dict), f"{path.name}: a recipe is a mapping of settings"
    if "model" in settings:                    # a training recipe (imgcls train --config)
        if "time_budget" in settings:          # the command's, not the model's
            parse_duration(settings.pop("time_budget"))
        create_model(settings.pop("model"), **settings).check()
    else:                                      # per-model settings for imgcls compare --settings
        for name, params in settings.items():
            create_model(name, **(params or {})).check()
