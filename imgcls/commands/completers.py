"""What the shell offers for an argument on Tab: model names, dataset names, saved models, paths.

Each completer is shtab's description of one argument kind, per shell (the function a completion
script calls, and that function's definition). The names come from imgcls.commands.model_table, so
the parser that carries these imports no model, and the script `imgcls completion` prints runs no
Python when Tab is pressed.
"""

from __future__ import annotations

import argparse

from imgcls.commands import model_table


def _names_and_paths(function: str, names: tuple[str, ...], paths: bool, suffixed: tuple[str, ...] = ()) -> dict:
    """A completer offering names (and suffixed, which take no space after them), and paths if asked.

    The bash function's name contains "_file" so that shtab's script marks its answers as file names
    (bash then adds "/" after a folder)."""
    words = " ".join(names + suffixed)
    return {
        "bash": function,
        "zsh": function,
        "fish": f"({function})",
        "preamble": {
            "bash": f'{function}() {{\n  compgen -W "{words}" -- "$1"\n'
                    + ('  compgen -f -- "$1"\n' if paths else "") + "}\n",
            "zsh": f"{function}() {{\n  local ret=1\n  compadd -- {' '.join(names)} && ret=0\n"
                   + (f"  compadd -S '' -- {' '.join(suffixed)} && ret=0\n" if suffixed else "")
                   + ("  _files && ret=0\n" if paths else "") + "  return ret\n}\n",
            "fish": f"function {function}\n  printf '%s\\n' {words}\n"
                    + ("  __fish_complete_path (commandline -ct)\n" if paths else "") + "end\n",
        },
    }


# A model name for --model: the registry's names and the timm:/transfer: prefixes.
MODEL_NAME = _names_and_paths("_imgcls_model_names", model_table.MODELS, paths=False,
                              suffixed=model_table.PREFIXES)
# train's --model: auto (the budgeted race) besides the model names.
TRAIN_MODEL = _names_and_paths("_imgcls_train_model_names", ("auto",) + model_table.MODELS, paths=False,
                               suffixed=model_table.PREFIXES)
# A DATA argument: a named dataset, a folder or a CSV manifest.
DATA = _names_and_paths("_imgcls_datasets_or_files", model_table.DATASETS, paths=True)
# A MODEL argument: a saved model (run folder, .safetensors or exported file) or a pretrained name.
SAVED_MODEL = _names_and_paths("_imgcls_pretrained_or_files", model_table.PRETRAINED, paths=True)


def completes(action: argparse.Action, completer: dict) -> argparse.Action:
    """action, marked for the completion script to offer what completer describes (shtab's `.complete`)."""
    action.complete = completer
    return action
