"""imgcls models: the models in the registry, with their options."""

from __future__ import annotations

import argparse
import dataclasses

from imgcls.commands.common import add_command

NAME = "models"
HELP = "list the models in the registry"
EXAMPLES = """examples:
  imgcls models"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = add_command(subparsers, NAME, HELP, EXAMPLES)
    parser.set_defaults(handler=handle)
    return parser


def handle(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from imgcls.models import list_models, parameter_count
    from imgcls.training.config import TrainingConfig
    shared = {f.name for f in dataclasses.fields(TrainingConfig)} | {"tta"}
    table = Table(title="imgcls models (parameters counted for 1x28x28 input, 10 classes)", title_justify="left")
    for column, justify in (("name", "left"), ("description", "left"), ("parameters", "right"), ("options", "left")):
        table.add_column(column, justify=justify)
    for name, cls in list_models().items():
        options = ", ".join(f"{f.name}={f.default}" for f in dataclasses.fields(cls)
                            if f.init and f.name != "threshold"
                            and (f.name not in shared or not cls.capabilities.network))
        table.add_row(name, cls.description, f"{parameter_count(name, (1, 28, 28), 10):,}", options)
    console = Console()
    console.print(table)
    console.print("Neural networks also take the training options: "
                  + ", ".join(f"{f.name}={f.default}" for f in dataclasses.fields(TrainingConfig))
                  + ", and tta=none|flip|multicrop (test-time augmentation)", highlight=False)
    console.print("Any timm architecture: --model timm:NAME (e.g. timm:resnet18).", highlight=False)
    console.print("Every model learns single- and multi-label data; for multi-label data threshold=0 chooses each "
                  "label's threshold on the validation split (threshold=0.5: one for all).", highlight=False)
    return 0
