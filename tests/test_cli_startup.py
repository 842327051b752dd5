"""The command line answers at once: help and flag errors import only the standard library and imgcls,
and the flag table they read instead of the models is the registry's own.

Imports are checked rather than times, so a busy machine cannot break the test; bench/cli.py times them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import imgcls
from imgcls.cli import build_parser
from imgcls.commands import model_table, model_table_writer

ROOT = Path(imgcls.__file__).parent.parent

# Runs each argv through main() in one fresh interpreter and reports, per argv, its exit status and
# the modules it imported that are neither the standard library's nor imgcls's.
_RUN = r"""
import contextlib, io, json, sys
baseline = set(sys.modules)
from imgcls.cli import main
report = []
for argv in json.loads(sys.argv[1]):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
        try:
            status = main(argv)
        except SystemExit as exc:
            status = exc.code
    foreign = sorted({m.split(".")[0] for m in set(sys.modules) - baseline} - set(sys.stdlib_module_names) - {"imgcls"})
    report.append({"argv": argv, "status": status, "foreign": foreign, "stderr": err.getvalue()[-300:]})
print(json.dumps(report))
"""


def command_paths(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command and sub-command as the words that select it: ("train",), ("show", "kernel"), ..."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += [(*path, name), *command_paths(sub, (*path, name))]
    return found


def run_in_fresh_interpreter(argvs: list[list[str]]) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-c", _RUN, json.dumps(argvs)], capture_output=True, text=True,
                            env=env, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout)


def test_help_and_flag_errors_import_only_the_standard_library():
    paths = command_paths(build_parser())
    assert ("train",) in paths and ("show", "kernel") in paths and ("data", "info") in paths
    bad = [["train"], ["train", "digits", "--no-such-flag"], ["train", "digits", "--k", "five"],
           ["train", "digits", "--batchnorm", "maybe"], ["no-such-command"], ["show"]]
    argvs = [[], ["--help"], *([*path, "--help"] for path in paths), *bad]
    report = run_in_fresh_interpreter(argvs)
    assert [r["status"] for r in report] == [2] + [0] * (1 + len(paths)) + [2] * len(bad)
    assert "invalid int value: 'five'" in report[-4]["stderr"]
    assert "expected yes or no, not 'maybe'" in report[-3]["stderr"]
    importing = [(r["argv"], r["foreign"]) for r in report if r["foreign"]]
    assert not importing, f"these imported more than the standard library and imgcls: {importing}"


def test_the_check_sees_a_heavy_import():
    """A command that runs its handler loads the library, and the check above reports it."""
    report = run_in_fresh_interpreter([["data", "info", "no/such/folder"]])
    assert report[0]["status"] == 2 and "no such file" in report[0]["stderr"]
    assert "numpy" in report[0]["foreign"], report


def test_model_table_is_what_the_registry_gives():
    """The flag table imgcls --help reads must be the live registry's (regenerate it when this fails)."""
    live = model_table_writer.live_table()
    table = {key: getattr(model_table, key, None) for key in live}
    message = f"imgcls/commands/model_table.py is out of date: run `{model_table_writer.REGENERATE}`"
    assert table == live, message
    assert Path(model_table.__file__).read_text(encoding="utf-8") == model_table_writer.render(live), message


def test_every_name_prefix_is_in_the_table():
    from imgcls.models import registry
    assert set(model_table.PREFIXES) == set(registry._PREFIXES), (
        "a name prefix was registered: add it to PREFIXES in imgcls/commands/model_table_writer.py and run "
        f"`{model_table_writer.REGENERATE}`")


@pytest.mark.parametrize("flag,kind,owner", [("k", "int", "knn"), ("lr", "float", "linear"),
                                             ("batchnorm", "yes_no", "mlp"), ("body_lr", "float", "transfer:NAME"),
                                             ("pretrained", "yes_no", "timm:NAME")])
def test_the_table_gives_each_model_its_flags(flag, kind, owner):
    """The flags a model takes reach the parser, typed, and are checked against the model named."""
    from imgcls.commands.common import model_params
    parser = build_parser()
    value = {"int": "3", "float": "0.5", "yes_no": "yes"}[kind]
    model = owner.replace("NAME", "resnet18")
    args = parser.parse_args(["train", "digits", "--model", model, f"--{flag.replace('_', '-')}", value])
    assert model_params(args)[flag] == {"int": 3, "float": 0.5, "yes_no": True}[kind]
