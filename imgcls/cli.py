"""The `imgcls` command line: train, eval, predict, export, tune, compare, serve, index, search, data info, show, models.

Flags are read here and only here, turned into typed config, and handed to the library. Each command
lives in its own module under `imgcls.commands`; this module builds the top-level parser, asks each
command to add its sub-parser, and turns errors into one line and an exit status.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from imgcls import __version__
from imgcls.commands import COMMANDS
from imgcls.errors import ImgclsError


def main(argv: list[str] | None = None) -> int:
    started = time.monotonic()          # a command's time budget counts from here
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "config", None):
        try:
            args.config_file.apply(Path(args.config))
            args = parser.parse_args(argv)
        except ImgclsError as exc:
            print(f"imgcls: error: {exc}", file=sys.stderr)
            return 2
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    args.started = started
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
    parser.set_defaults(root_parser=parser)     # for commands that read the whole command line (completion)
    return parser


if __name__ == "__main__":
    sys.exit(main())
