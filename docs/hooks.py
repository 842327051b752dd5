"""MkDocs hooks (mkdocs.yml: hooks): a line `<!-- help: COMMAND [SUBCOMMAND] -->` in a page becomes
that command's `imgcls ... --help` text, so the command reference is the parser's own words and
cannot drift from it. The help is formatted in-process at 100 columns (imgcls's parser imports no
torch), from the checkout that holds mkdocs.yml."""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
from pathlib import Path

from mkdocs.exceptions import PluginError

HELP_LINE = re.compile(r"^<!-- help: ([a-z0-9 -]+?) -->$", re.MULTILINE)


def on_config(config):
    root = str(Path(config.config_file_path).resolve().parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    return config


def help_text(words: list[str]) -> str:
    """What `imgcls WORDS --help` prints, at 100 columns."""
    from imgcls.cli import build_parser

    out = io.StringIO()
    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"
    try:
        with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
            build_parser().parse_args([*words, "--help"])
    finally:
        if previous is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = previous
    text = out.getvalue().rstrip()
    if not text.startswith("usage: imgcls"):
        raise PluginError(f"<!-- help: {' '.join(words)} -->: imgcls printed no help for that command")
    return text


def on_page_markdown(markdown: str, page, config, files) -> str:
    def replace(match: re.Match) -> str:
        return "```text\n" + help_text(match.group(1).split()) + "\n```"
    return HELP_LINE.sub(replace, markdown)
