"""`imgcls completion bash|zsh|fish`: the scripts, loaded into the real shells, complete what a user types.

bash runs the script's completion function on COMP_WORDS/COMP_CWORD and reads COMPREPLY; fish answers
`complete -C LINE`; zsh completes in a pseudo-terminal (zsh/zpty) with compadd recording what it is
offered. A shell that is not installed is skipped (bash always is, on Linux).
"""

from __future__ import annotations

import contextlib
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from imgcls.cli import main
from imgcls.models import list_models

CASES = [  # (command line, ending where Tab is pressed; what the shell must offer)
    ("imgcls tr", {"train"}),
    ("imgcls compl", {"completion"}),
    ("imgcls completion ", {"bash", "zsh", "fish"}),
    ("imgcls show to", {"top-images"}),
    ("imgcls train digits --mod", {"--model", "--mode"}),
    ("imgcls train digits --model re", {"resnet18", "resnet20", "resnet56"}),
    ("imgcls train digits --model ti", {"timm:"}),
    ("imgcls train digits --model tr", {"transfer:"}),
    ("imgcls train digits --batchn", {"--batchnorm"}),
    ("imgcls train digits --resize ", {"crop", "pad", "stretch"}),
    ("imgcls train fash", {"fashion-mnist"}),
    ("imgcls train ci", {"cifar10", "cifar100"}),
    ("imgcls train pho", {"photos"}),                               # a folder
    ("imgcls show top-images runs/cnn mn", {"mnist"}),              # the second positional is DATA
    ("imgcls eval eff", {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"}),
    ("imgcls eval ru", {"runs"}),                                   # a saved model's folder
    ("imgcls show kernel pho", {"photos"}),                         # IMAGE: paths
    ("imgcls train digits --lr ", set()),                           # a number: nothing to offer
]
ALL_MODELS = ("imgcls train digits --model ", {"auto", *list_models(), "timm:", "transfer:"})

# zsh with the completion script on its fpath, in a pseudo-terminal: for each command line (argument 2
# on), type it and Tab, and print every match the completion functions add; Tab prints "<tabbed>" when
# the completion is over, and nothing more is typed before, so that no keys arrive while it runs.
_ZSH_CAPTURE = r"""
zmodload zsh/zpty
zpty z zsh -f -i
zpty -w z "fpath=(${(q)1} \$fpath); PROMPT=; autoload -U compinit; compinit -u -D"
zpty -w z 'compadd () { if [[ ${@[1,(i)(-|--)]} == *-(O|A|D)\ * ]]; then builtin compadd "$@"; return $?; fi;
  typeset -a __hits; builtin compadd -A __hits "$@"; local ret=$?;
  (( $#__hits )) && print -l -- "<h""it>"${^__hits}; builtin compadd "$@"; return ret }'
zpty -w z '_tab_then_mark() { zle complete-word; print "<tab""bed>" }; zle -N _tab_then_mark; bindkey "^I" _tab_then_mark'
zpty -w z "print '<rea''dy>'"
zpty -r z out '*<ready>*'
for line in "${@[2,-1]}"; do
  zpty -w -n z "$line"$'\t'
  zpty -r z out '*<tabbed>*'
  print -r -- "$out"
  zpty -w -n z $'\x15'
done
zpty -d z
"""


@pytest.fixture(scope="module")
def scripts(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("completion")
    found = {}
    for shell in ("bash", "zsh", "fish"):
        path = folder / shell / ("_imgcls" if shell == "zsh" else "imgcls")
        path.parent.mkdir()
        with open(path, "w") as out, contextlib.redirect_stdout(out):
            assert main(["completion", shell]) == 0
        found[shell] = path
    return found


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A folder with photos/ and runs/cnn/ in it, where the shells complete paths."""
    folder = tmp_path_factory.mktemp("cwd")
    (folder / "photos" / "cat").mkdir(parents=True)
    (folder / "runs" / "cnn").mkdir(parents=True)
    return folder


def bash_offers(script: Path, workdir: Path, lines: list[str]) -> list[set[str]]:
    """What the script's completion function puts in COMPREPLY for each line (Tab at its end), and
    "(no space)" where it asks readline not to add a space after the word."""
    queries = "\n".join("q " + " ".join(shlex.quote(w) for w in line.split(" ")) for line in lines)
    program = f"""
source {shlex.quote(str(script))}
function=$(complete -p imgcls | sed -E 's/.* -F ([^ ]+) .*/\\1/')
compopt() {{ options+=("$*"); }}   # readline's options for this completion, recorded
q() {{
  COMP_WORDS=("$@"); COMP_CWORD=$(( $# - 1 )); COMP_LINE="$*"; COMP_POINT=${{#COMP_LINE}}; COMPREPLY=(); options=()
  "$function" imgcls "${{COMP_WORDS[COMP_CWORD]}}" "${{COMP_WORDS[COMP_CWORD-1]}}"
  printf '%s\\t' "${{COMPREPLY[@]}}"; [[ " ${{options[*]}} " == *" -o nospace "* ]] && printf '(no space)'
  printf '\\n'
}}
{queries}
"""
    result = subprocess.run(["bash", "--norc", "--noprofile", "-c", program], capture_output=True, text=True,
                            cwd=workdir, timeout=120)
    assert result.returncode == 0, result.stderr
    return [set(filter(None, row.split("\t"))) for row in result.stdout.split("\n")[:len(lines)]]


def test_bash_completes_commands_options_models_and_datasets(scripts, workdir):
    lines = [line for line, _ in CASES] + [ALL_MODELS[0]]
    no_space = {"timm:": {"timm:", "(no space)"}, "transfer:": {"transfer:", "(no space)"}}
    want = [no_space.get(next(iter(w)), w) if len(w) == 1 else w for _, w in CASES] + [ALL_MODELS[1]]
    assert bash_offers(scripts["bash"], workdir, lines) == want


def test_bash_registers_for_the_command(scripts):
    result = subprocess.run(["bash", "--norc", "-c", f"source {shlex.quote(str(scripts['bash']))}; complete -p imgcls"],
                            capture_output=True, text=True, timeout=60)
    assert result.stdout.startswith("complete ") and result.stdout.split()[-1] == "imgcls"


@pytest.mark.skipif(not shutil.which("fish"), reason="fish is not installed")
def test_fish_completes_the_same(scripts, workdir):
    for line, want in [*CASES, ALL_MODELS]:
        result = subprocess.run(["fish", "--no-config", "-c", f"source {shlex.quote(str(scripts['fish']))}; "
                                 f"complete -C {shlex.quote(line)}"], capture_output=True, text=True, cwd=workdir,
                                timeout=120)
        assert result.returncode == 0, result.stderr
        offered = {row.split("\t")[0].rstrip("/") for row in result.stdout.splitlines()}
        assert offered == want, line


@pytest.mark.skipif(not shutil.which("zsh"), reason="zsh is not installed")
def test_zsh_completes_the_same(scripts, workdir):
    cases = [*CASES, ALL_MODELS]
    result = subprocess.run(["zsh", "-f", "-c", _ZSH_CAPTURE, "zsh", str(scripts["zsh"].parent),
                             *(line for line, _ in cases)], capture_output=True, text=True, cwd=workdir, timeout=300)
    assert result.returncode == 0, result.stderr
    answers = result.stdout.replace("\r", "").split("<tabbed>")[:len(cases)]
    offered = [{row.split("<hit>", 1)[1].strip() for row in answer.splitlines() if "<hit>" in row}
               for answer in answers]
    assert offered == [want for _, want in cases]
