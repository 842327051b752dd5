"""Fast paths measured, not guessed: each answer is timed once on this CPU, then cached.

- `timed_medians`: the timing every measured choice rests on: candidates take turns in rounds,
  medians count, more rounds run while they disagree, and implausible timings choose nothing;
- `bf16_is_faster`: whether bf16 autocast (with channels_last for convolutional networks) runs
  this network's forward pass faster than fp32 (prediction; training measures its own choices,
  at its own batch size, in imgcls.training.execution);
- `fastest`: which of several exact implementations of the same work is quickest (the kNN
  engines use it);
- `measured_once`, `interleaved_times` and `int8_gemm_run`: the pieces for a measurement of
  one's own, cached the same way (the kNN kernel's plan, imgcls/kernels/tuning.py).

A CPU flag is a guess: AMX-capable Intel CPUs and AMD EPYC CPUs with AVX-512 bf16 (no AMX) both
run bf16 matrix work natively, but how much faster a given network gets differs, and on a CPU
without either bf16 loses. So on a CPU that has AMX or AVX-512 bf16, `--bf16 auto` times forward
passes of a copy of the actual network on a batch of the actual input in both precisions, and
takes bf16 where it is at least MIN_GAIN times as fast. Answers are cached per CPU model, torch
version, thread count, network and input shape, in fast_paths.json in cache_dir() ($IMGCLS_CACHE,
else $XDG_CACHE_HOME/imgcls, else ~/.cache/imgcls), so each measurement runs once.
"""

from __future__ import annotations

import contextlib
import copy
import json
import platform
import re
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from imgcls.storage import cache_dir, write_text

MIN_GAIN = 1.15          # bf16 must beat fp32 by this much: a tie is not worth its rounding
MEASURE_BATCH = 64     # near a training batch: bf16 gains grow with the matrix sizes...
MEASURE_BYTES = 2**23  # ...but fewer rows of large images (8 MB of float input: 13 at 224 px), so a
                       # fine-tuned EfficientNet is measured in seconds, not minutes
RACE_ROUNDS = 5
ROUNDS = 5               # timed_medians: interleaved rounds per measurement,
MAX_ROUNDS = 15          # and more, up to this many, while the rounds disagree:
NOISE = 0.15             # a candidate's interquartile range above this fraction of its median,
PLAUSIBLE = 8.0          # or one way of doing the same work this many times faster than another


def bf16_capable_cpu() -> bool:
    """AMX tiles or AVX-512 bf16: the CPUs on which bf16 matrix work has native instructions."""
    flags = (getattr(torch.cpu, "_is_amx_tile_supported", None), getattr(torch.cpu, "_is_avx512_bf16_supported", None))
    return any(bool(flag()) for flag in flags if flag is not None)


def cpu_model() -> str:
    try:
        found = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
    except OSError:
        found = None
    return found.group(1).strip() if found else (platform.processor() or platform.machine())


def bf16_is_faster(net: nn.Module, example: torch.Tensor, channels_last: bool) -> bool:
    """The cached or freshly measured answer for running this network on inputs like example (a
    forward pass without gradients) on this CPU. Training measures its own choices, at its own
    batch size (imgcls.training.execution)."""
    key = _key(net, example, channels_last)
    cache = read_cache()
    if key not in cache:
        gain = measure_gain(net, example, channels_last)
        if gain is None:
            return False        # the machine was too busy to tell: fp32, and measure again next time
        cache[key] = {"gain": round(gain, 3), "bf16": gain >= MIN_GAIN}
        write_cache(cache)
        from imgcls.progress import console
        choice = "bf16 autocast" + (" + channels_last" if channels_last else "") if gain >= MIN_GAIN else "fp32"
        console.print(f"fast path: {choice} (inference: bf16 measured at {gain:.2f}x fp32's speed for this network "
                      f"on this CPU; cached in {cache_path()})", highlight=False, soft_wrap=True)
    return bool(cache[key]["bf16"])


def fastest(what: str, candidates: dict[str, Callable[[], object]], key: str) -> str:
    """The name of the quickest candidate (name -> a callable that does the same work once).

    Each runs once to warm up; then RACE_ROUNDS rounds run them in turn (so a burst of other work
    on the machine hits all of them alike) and each one's best time counts. The answer is cached
    under key (with the CPU model, torch version and thread count) and said once when measured.
    """
    full_key = "|".join([*machine_key(), key])
    cache = read_cache()
    if cache.get(full_key, {}).get("choice") not in candidates:
        seconds = race(candidates)
        winner = min(seconds, key=seconds.get)
        cache[full_key] = {"choice": winner, "seconds": {name: round(s, 6) for name, s in seconds.items()}}
        write_cache(cache)
        from imgcls.progress import console
        others = ", ".join(f"{seconds[name] / seconds[winner]:.2f}x faster than {name}"
                           for name in seconds if name != winner)
        console.print(f"fast path: {what}: {winner} ({others}, measured on this CPU; cached in {cache_path()})",
                      highlight=False, soft_wrap=True)
    return cache[full_key]["choice"]


def race(candidates: dict[str, Callable[[], object]]) -> dict[str, float]:
    """Each candidate's best time over RACE_ROUNDS interleaved rounds, after one warm-up run each."""
    best = {name: float("inf") for name in candidates}
    for round_ in range(RACE_ROUNDS + 1):
        for name, run in candidates.items():
            start = time.perf_counter()
            run()
            if round_:
                best[name] = min(best[name], time.perf_counter() - start)
    return best


def interleaved_times(candidates: dict[str, Callable[[], object]], rounds: int, warm_up: bool = True
                      ) -> dict[str, list[float]]:
    """Each candidate's seconds in each of `rounds` rounds that run them in turn (after one
    warm-up run each, unless warm_up is False), so that a burst of other work on the machine
    hits all of them alike. Take the median of each list."""
    times = {name: [] for name in candidates}
    for round_ in range(rounds + warm_up):
        for name, run in candidates.items():
            start = time.perf_counter()
            run()
            if round_ or not warm_up:
                times[name].append(time.perf_counter() - start)
    return times


def int8_gemm_run(n: int = 2048) -> tuple[Callable[[], object], float] | None:
    """A callable that multiplies two n x n int8 matrices once with torch._int_mm (oneDNN), and
    the operations that takes (2 n^3), or None where this torch has no CPU int8 GEMM. Timed
    beside a kernel, it gives the machine's int8 peak under the same load."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randint(-128, 128, (n, n), dtype=torch.int8, generator=generator)
    b = torch.randint(-128, 128, (n, n), dtype=torch.int8, generator=generator)
    try:
        torch._int_mm(a[:32, :32], b[:32, :32])
    except (RuntimeError, AttributeError, NotImplementedError):
        return None
    return (lambda: torch._int_mm(a, b)), 2.0 * n ** 3


def measured_once(what: str, key: str, measure: Callable[[], tuple[dict, str, bool]],
                  valid: Callable[[dict], bool] = lambda answer: True) -> dict:
    """The answer cached under key (with the CPU model, torch version and thread count) where it
    is still valid, else measure() -> (answer, summary, keep): said once, and cached where keep
    (a measurement that failed its own checks is used for this run but not kept)."""
    full_key = "|".join([*machine_key(), key])
    cache = read_cache()
    if full_key in cache and valid(cache[full_key]):
        return cache[full_key]
    answer, summary, keep = measure()
    if keep:
        cache = read_cache()
        cache[full_key] = answer
        write_cache(cache)
    from imgcls.progress import console
    where = f"cached in {cache_path()}" if keep else "not cached: it will be measured again"
    console.print(f"fast path: {what}: {summary} (measured on this CPU; {where})", highlight=False, soft_wrap=True)
    return answer


@dataclass
class Medians:
    """What `timed_medians` measured: each candidate's median seconds per call, over how many rounds,
    and whether the rounds agreed (every candidate's interquartile range within NOISE of its median)."""

    seconds: dict[str, float]
    rounds: int
    settled: bool

    def ratio(self, slower: str, faster: str) -> float:
        return self.seconds[slower] / max(self.seconds[faster], 1e-12)


def timed_medians(candidates: dict[str, Callable[[], object]], warmup: int = 1,
                  max_seconds: float | None = None, min_rounds: int = ROUNDS) -> Medians | None:
    """Each candidate's median seconds per call, over interleaved rounds after `warmup` calls each.

    The candidates take turns in every round, the order rotating from round to round, so neither
    its position nor a burst of other work on the machine favours one. While the rounds disagree
    (a candidate's times spread by more than NOISE of its median, or two medians PLAUSIBLE times
    apart: a stall, not a speed), ROUNDS more run, up to MAX_ROUNDS. With max_seconds, no round
    starts after that many seconds once min_rounds have run (heavy steps: fewer, each longer and
    steadier). None when the medians are still implausible then: nothing should be chosen or
    cached from them.
    """
    began = time.perf_counter()
    names = list(candidates)
    for name in names:
        for _ in range(warmup):
            candidates[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    while True:
        for _ in range(ROUNDS):
            if len(times[names[0]]) >= min_rounds and max_seconds is not None \
                    and time.perf_counter() - began >= max_seconds:
                break
            shift = len(times[names[0]]) % len(names)
            for name in names[shift:] + names[:shift]:
                start = time.perf_counter()
                candidates[name]()
                times[name].append(time.perf_counter() - start)
        medians = {name: statistics.median(t) for name, t in times.items()}
        plausible = max(medians.values()) <= PLAUSIBLE * min(medians.values())
        settled = plausible and all(_spread(times[name]) <= NOISE * medians[name] for name in names)
        rounds = len(times[names[0]])
        out_of_time = max_seconds is not None and time.perf_counter() - began >= max_seconds
        if settled or rounds >= MAX_ROUNDS or out_of_time:
            return Medians(medians, rounds, settled) if plausible else None


def _spread(times: list[float]) -> float:
    low, _, high = statistics.quantiles(times, n=4)
    return high - low


def measure_gain(net: nn.Module, example: torch.Tensor, channels_last: bool) -> float | None:
    """fp32 time / bf16 time of a forward pass over a batch of example, on copies of net (the
    original and the random number generators are left as they were); None where the timings were
    implausible (see timed_medians)."""
    per_image = 4 * max(1, example[0].numel()) if len(example) else 1
    batch = example[:max(8, min(MEASURE_BATCH, MEASURE_BYTES // per_image))].float()
    with torch.random.fork_rng(devices=[]):
        timing = timed_medians({"fp32": _forward(copy.deepcopy(net), batch, bf16=False, channels_last=False),
                                "bf16": _forward(copy.deepcopy(net), batch, bf16=True, channels_last=channels_last)})
    return None if timing is None else timing.ratio("fp32", "bf16")


def _forward(net: nn.Module, batch: torch.Tensor, *, bf16: bool, channels_last: bool) -> Callable[[], object]:
    net = net.cpu().eval()
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
        batch = batch.contiguous(memory_format=torch.channels_last)

    @torch.no_grad()
    def run():
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
            return net(batch)
    return run


def cache_path() -> Path:
    return cache_dir() / "fast_paths.json"


def network_key(net: nn.Module) -> str:
    """The network's part of a cache key: its class and size, and how much of it trains (a frozen
    part, as in a fine-tune's first stage, trains without its backward pass: another question)."""
    body = getattr(net, "body", net)
    parameters = sum(p.numel() for p in net.parameters())
    trained = sum(p.numel() for p in net.parameters() if p.requires_grad)
    return f"{type(body).__name__}:{parameters}" + (f" ({trained} trained)" if trained != parameters else "")


def machine_key() -> list[str]:
    """The machine's part of a cache key: CPU model, torch version and thread count."""
    return [cpu_model(), torch.__version__, f"{torch.get_num_threads()} threads"]


def _key(net: nn.Module, example: torch.Tensor, channels_last: bool) -> str:
    return "|".join([*machine_key(), network_key(net), "x".join(map(str, example.shape[1:])),
                     "infer", "channels_last" if channels_last else "contiguous"])


def read_cache() -> dict:
    try:
        return json.loads(cache_path().read_text())
    except (OSError, ValueError):
        return {}


def write_cache(cache: dict) -> None:
    try:
        write_text(cache_path(), json.dumps(cache, indent=1, sort_keys=True))
    except OSError:
        pass        # an unwritable cache only means measuring again next time
