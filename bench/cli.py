"""How fast the command line answers: `imgcls --help`, `imgcls train --help`, a bad flag and
`imgcls completion bash`, each a fresh process, against a bare Python start and against what help
used to cost (reading every model's flags from the live registry, which imports torch).

The command lines run interleaved, round after round, and the table gives each one's median wall
time and quartiles over the rounds and its median CPU time, with the machine's load average before
and after (a busy machine slows every line; compare them within one run). The slowest imports of `imgcls --help` follow
(`python -X importtime`).

    .venv/bin/python bench/cli.py            # 20 rounds
    .venv/bin/python bench/cli.py --quick    # 5 rounds
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from machine import banner  # bench/machine.py: the CPU and its flags

ROOT = Path(__file__).resolve().parent.parent
AIM_S = 0.5
LINES = {
    "python -c pass (interpreter start)": ["-c", "pass"],
    "imgcls --help": ["-m", "imgcls.cli", "--help"],
    "imgcls train --help": ["-m", "imgcls.cli", "train", "--help"],
    "imgcls train digits --no-such-flag": ["-m", "imgcls.cli", "train", "digits", "--no-such-flag"],
    "imgcls completion bash": ["-m", "imgcls.cli", "completion", "bash"],
    "the registry's flags (what help read before)": [
        "-c", "from imgcls.commands.model_table_writer import live_table; live_table()"],
}


def run_once(args: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds: user + system) of one run of python with args."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _env() -> dict[str, str]:
    # This checkout's imgcls, whatever is installed.
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def slowest_imports(args: list[str], n: int = 5) -> list[tuple[str, float]]:
    """The n imports with the most cumulative time under `python -X importtime`, top-level ones first."""
    result = subprocess.run([sys.executable, "-X", "importtime", *args], cwd=ROOT, env=_env(),
                            capture_output=True, text=True, check=False)
    rows = []
    for line in result.stderr.splitlines():
        if line.startswith("import time:") and "|" in line and "cumulative" not in line:
            _, cumulative, name = line.split("|")
            if not name.startswith("   "):          # a top-level import (nested ones are indented)
                rows.append((name.strip(), int(cumulative) / 1e6))
    return sorted(rows, key=lambda row: -row[1])[:n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 rounds instead of 20")
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args()
    rounds = args.rounds or (5 if args.quick else 20)

    print(banner())
    load_before = os.getloadavg()
    for argv in LINES.values():             # warm the file cache and the .pyc files first
        run_once(argv)
    walls = {name: [] for name in LINES}
    cpus = {name: [] for name in LINES}
    for _ in range(rounds):
        for name, argv in LINES.items():
            wall, cpu = run_once(argv)
            walls[name].append(wall)
            cpus[name].append(cpu)
    load_after = os.getloadavg()

    print(f"load average before {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}, "
          f"after {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f} ({os.cpu_count()} cores); "
          f"{rounds} rounds, interleaved")
    print("wall: seconds until the process ends (median and quartiles); CPU: its user + system seconds "
          "(median), which a busy machine changes less\n")
    width = max(map(len, LINES))
    print(f"{'command line':<{width}}  {'wall s':>7}  {'q1':>6}  {'q3':>6}  {'CPU s':>6}")
    for name, values in walls.items():
        q1, median, q3 = statistics.quantiles(values, n=4) if len(values) > 1 else values * 3
        print(f"{name:<{width}}  {median:>7.3f}  {q1:>6.3f}  {q3:>6.3f}  {statistics.median(cpus[name]):>6.3f}")
    helps = [statistics.median(walls[name]) for name in ("imgcls --help", "imgcls train --help")]
    before = statistics.median(walls["the registry's flags (what help read before)"])
    print(f"\nhelp answers in at most {max(helps):.3f} s (aim: {AIM_S} s, {'met' if max(helps) <= AIM_S else 'missed'}"
          f"); reading the registry's flags alone takes {before:.3f} s, {before / max(helps):.1f}x as long")
    print("\nslowest top-level imports of `imgcls --help` (python -X importtime, cumulative):")
    for name, seconds in slowest_imports(LINES["imgcls --help"]):
        print(f"  {name:<40} {seconds * 1000:8.1f} ms")


if __name__ == "__main__":
    main()
