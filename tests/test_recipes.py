"""Every file in recipes/ is one the command line accepts: known models, known keys, valid values."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from imgcls.models import create_model

RECIPES = sorted((Path(__file__).resolve().parent.parent / "recipes").glob("*.yaml"))


def test_there_are_recipes():
    assert {"fashion-5min.yaml", "fashion-5min-94.yaml", "fashion-30min.yaml"} <= {p.name for p in RECIPES}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_builds_its_model(path):
    settings = yaml.safe_load(path.read_text())
    assert isinstance(settings, dict), f"{path.name}: a recipe is a mapping of settings"
    if "model" in settings:                    # a training recipe (imgcls train --config)
        create_model(settings.pop("model"), **settings).check()
    else:                                      # per-model settings for imgcls compare --settings
        for name, params in settings.items():
            create_model(name, **(params or {})).check()
