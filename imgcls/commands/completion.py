"""imgcls completion: a shell completion script for bash, zsh or fish.

shtab writes the script from the parser once, so pressing Tab runs no Python: commands, options,
choices, model names, dataset names and paths are all in the script (imgcls.commands.completers).
"""

from __future__ import annotations

import argparse

from imgcls.commands.common import add_command
from imgcls.commands.completers import completes

NAME = "completion"
HELP = "print a shell completion script for bash, zsh or fish"
EXAMPLES = """examples:
  imgcls completion bash > ~/.local/share/bash-completion/completions/imgcls   # bash-completion loads it
  imgcls completion zsh > ~/.zfunc/_imgcls    # with fpath=(~/.zfunc $fpath) before compinit in ~/.zshrc
  imgcls completion fish > ~/.config/fish/completions/imgcls.fish

The script lists this version's commands, flags and models: write it again after upgrading imgcls."""
SHELLS = ("bash", "zsh", "fish")
# bash: the architecture follows timm: or transfer: without a space. (shtab's function collects its
# answers in a subshell, where compopt cannot reach the completion under way; so a wrapper does it.)
_BASH_NO_SPACE_AFTER_A_PREFIX = """
_imgcls_complete() {
  _shtab_imgcls "$@"
  if [[ ${#COMPREPLY[@]} -eq 1 && ${COMPREPLY[0]} == *: ]]; then compopt -o nospace 2>/dev/null; fi
  return 0
}
complete -o bashdefault -F _imgcls_complete imgcls
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = add_command(subparsers, NAME, HELP, EXAMPLES)
    parser.add_argument("shell", choices=SHELLS, help="the shell the script is for")
    parser.set_defaults(handler=handle)
    return parser


def handle(args) -> int:
    import shtab

    parser = args.root_parser        # the whole command line, as imgcls.cli built it
    with_paths_by_default(parser, shtab.FILE)
    script = shtab.complete(parser, args.shell)
    print(script + (_BASH_NO_SPACE_AFTER_A_PREFIX if args.shell == "bash" else ""), end="")
    return 0


def with_paths_by_default(parser: argparse.ArgumentParser, paths: dict) -> None:
    """Mark every argument of parser and its sub-commands that has no completer, no choices and no
    number type to complete as paths: in imgcls such a value is an image, a folder, a file or a run
    folder. (bash falls back to paths by itself; the zsh and fish scripts offer only what is marked.)"""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                with_paths_by_default(sub, paths)
        elif action.nargs != 0 and not hasattr(action, "complete") and not action.choices \
                and action.type in (None, str):
            completes(action, paths)
