"""The `imgcls` command line: train, eval, predict, export, tune, compare, serve, index, search, data info, models.

Flags are read here and only here, turned into typed config, and handed to the library. Each command
lives in its own module under `imgcls.commands`; this module builds the top-level parser, asks each
command to add its sub-parser, and turns errors into one line and an exit status.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from imgcls import __version__
from imgcls.commands import COMMANDS
from imgcls.errors import ImgclsError


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "config", None):
        try:
            args = _apply_config_file(parser, args, argv)
        except ImgclsError as exc:
            print(f"imgcls: error: {exc}", file=sys.stderr)
            return 2
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return args.handler(args) or 0
    except ImgclsError as exc:
        print(f"imgcls: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = "; rerun the same command with --resume to continue" if args.command == "train" else ""
        print(f"imgcls: interrupted{hint}", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imgcls", description="Image classification: train, evaluate, predict.")
    parser.add_argument("--version", action="version", version=f"imgcls {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(subparsers)
    return parser


def _apply_config_file(parser: argparse.ArgumentParser, args, argv) -> argparse.Namespace:
    """Settings from a YAML file become the train command's defaults; unknown keys are errors."""
    import yaml
    path = Path(args.config)
    try:
        settings = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ImgclsError(f"{path}: cannot read config ({str(exc).splitlines()[0]})") from exc
    if not isinstance(settings, dict):
        raise ImgclsError(f"{path}: a config file must be a mapping of setting: value")
    train = parser._subparsers._group_actions[0].choices["train"]
    known = {a.dest: a for a in train._actions}
    defaults = {}
    for key, value in settings.items():
        dest = key.replace("-", "_")
        dest = dest if dest in known and not dest.startswith("param_") else f"param_{dest}"
        if dest not in known or dest in ("config", "help", "data"):
            raise ImgclsError(f"{path}: unknown setting {key!r}")
        action = known[dest]
        defaults[dest] = action.type(str(value).lower() if isinstance(value, bool) else str(value)) \
            if action.type and value is not None else value
    train.set_defaults(**defaults)
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
