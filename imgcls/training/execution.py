"""How the training step runs on this machine: fp32 or bf16 autocast, contiguous or channels_last
memory, how many threads, eager or through torch.compile; each chosen by timing training steps as
the run will take them.

On the CPU the settings left at auto are the candidates: fp32 and bf16 autocast (bf16 only where
the CPU has native bf16 instructions; elsewhere it is emulated and cannot win), each in the
contiguous and channels_last layouts (for convolutional networks); then, for the fastest of those,
torch's thread count against half of it (unless --threads or OMP_NUM_THREADS fixes it). Each
candidate is a copy of the network doing what Trainer.step does, on a batch of the run's real size
and shape: the batch's float conversion and layout, the forward pass and loss, the backward pass
and an optimiser step. The candidates take turns in rounds and their medians count
(imgcls.fastpath.timed_medians: more rounds while the rounds disagree; implausible timings choose
nothing). bf16 and fewer threads are taken only where GAIN times as fast as the best without
them (bf16 rounds, and a thread left idle is a guess about the rest of the machine); a layout only
moves memory, so the faster one is taken.

torch.compile (inductor) is a candidate too, with --compile auto, for runs long enough to repay
compiling: where the run's length, estimated from its steps and the measured step time, is at
least COMPILE_WORTH_TRYING seconds, a copy of the winner is compiled (timed), its steps are raced
against the eager winner's, and compile is taken where the compile time plus the run's compiled
steps beat its eager steps by GAIN.

A choice is cached in fast_paths.json (imgcls.fastpath) per CPU model, torch version, thread
count, network, input shape, batch size and which settings were left to choose, and said once,
when measured; but one measured while other work kept the machine busy (the load average above
the cores: fewer threads can then win by 4-20x, which a quiet machine would regret) serves only
the run that measured it. A run too short to repay measuring (where measuring would take more than
MEASURING_SHARE of its estimated length) takes the defaults without a cached answer: fp32,
contiguous, torch's threads, eager. Measuring starts no round after it has taken that share, or
a time budget's share when the run has one, once MIN_ROUNDS have run (heavy steps, such as a
fine-tuned EfficientNet's seconds-long ones, get a brief race rather than none); a brief race that
did not settle, like a busy machine's, serves only its run, and so does one where half the threads
ran CONTENDED times as fast (a core was busy with other work, whatever the load average said: a
"1 thread, 4.1x" choice once reached the cache and made every later run single-threaded); and a
choice, cached or not, serves the rest of the process (a budgeted run measures while planning,
then trains with what it measured).
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import time
from dataclasses import dataclass, replace
from typing import Callable

import torch
from torch import nn

from imgcls.fastpath import (Medians, bf16_capable_cpu, cache_path, machine_key, network_key, read_cache,
                             timed_medians, write_cache)
from imgcls.runtime import has_convolutions, use_bf16, use_channels_last

GAIN = 1.05                  # bf16, fewer threads and compile must be this much faster to be taken
MEASURING_SHARE = 0.1        # measure where measuring is estimated at most this share of the run
COMPILE_WORTH_TRYING = 600.0 # seconds of estimated training from which compiling is measured
ROUND_SECONDS = 0.05         # each timed call runs enough steps to last about this long
MIN_ROUNDS = 2               # rounds a race runs at least, when its time is short (heavy steps); ROUNDS when not
CONTENDED = 1.5              # half the threads this much faster is a sign that other work held a core:
                             # such a choice serves its run only

_MEASURED_IN_THIS_PROCESS: dict[tuple[str, str], dict] = {}   # (cache file, key) -> the choice made here,
                                                               # cached or not (busy, brief or contended)


@dataclass(frozen=True)
class Execution:
    """How training steps run. threads 0 leaves torch's thread count as it is."""

    bf16: bool = False
    channels_last: bool = False
    threads: int = 0
    compile: bool = False

    @property
    def name(self) -> str:
        parts = ["bf16" if self.bf16 else "fp32"] + ["channels_last"] * self.channels_last
        parts += [f"{self.threads} thread{'s' * (self.threads != 1)}"] * bool(self.threads)
        return " + ".join(parts + ["compile"] * self.compile)

    @classmethod
    def from_name(cls, name: str) -> Execution:
        parts = name.split(" + ")
        threads = next((int(p.split()[0]) for p in parts if p.endswith(("thread", "threads"))), 0)
        return cls("bf16" in parts, "channels_last" in parts, threads, "compile" in parts)


@dataclass(frozen=True)
class Settings:
    """The training settings that decide the execution: each auto, on or off (threads: 0 is auto)."""

    bf16: str = "auto"
    channels_last: str = "auto"
    threads: int = 0
    compile: str = "off"


def choose_execution(net: nn.Module, batch: torch.Tensor, settings: Settings, device: torch.device,
                     run_steps: int, make_optimizer: Callable[[nn.Module], torch.optim.Optimizer],
                     max_seconds: float | None = None) -> Execution:
    """The execution for training net on batches like batch (uint8 or float, the real batch size)
    for run_steps steps; make_optimizer builds the run's optimiser for a copy of net. Measuring
    takes at most MEASURING_SHARE of the run's estimated length, and at most max_seconds (a time
    budget's share; None: no other limit). net, its gradients and the random number generators
    are left as they were."""
    if device.type != "cpu":
        bf16 = use_bf16(settings.bf16, device)
        return Execution(bf16, use_channels_last(settings.channels_last, device, net, bf16), 0,
                         settings.compile == "on")
    candidates = _candidates(net, settings)
    may_compile = settings.compile == "auto"
    if len(candidates) == 1 and not may_compile and len(_thread_options(settings)) == 1:
        return replace(candidates[0], compile=settings.compile == "on")
    key = "|".join([*machine_key(), network_key(net), "x".join(map(str, batch.shape[1:])), f"batch {len(batch)}",
                    "train", f"bf16 {settings.bf16}", f"channels_last {settings.channels_last}",
                    f"threads {settings.threads or 'auto'}"])
    with torch.random.fork_rng(devices=[]), _kept_threads():
        racer = _Racer(net, batch, make_optimizer)
        here = (str(cache_path()), key)       # a process's answers belong beside the cache it reads
        entry = read_cache().get(key) or _MEASURED_IN_THIS_PROCESS.get(here)
        if entry is None:
            default = candidates[0]
            began = time.perf_counter()
            step = racer.step_seconds(default)
            least = len(candidates) * (MIN_ROUNDS + 1) * max(step, ROUND_SECONDS)    # a warm-up and MIN_ROUNDS each
            allowance = min(run_steps * step * MEASURING_SHARE, max_seconds if max_seconds is not None else math.inf)
            if allowance < least:
                return replace(default, compile=settings.compile == "on")
            entry = racer.eager_choice(candidates, _thread_options(settings), deadline=began + allowance)
            if entry is None:           # the machine was too busy to tell: defaults, measured again next run
                return replace(default, compile=settings.compile == "on")
            busy = machine_busy()
            _MEASURED_IN_THIS_PROCESS[here] = entry     # a busy or brief measurement serves this run (planning, training)
            if not busy and entry["settled"] and not entry.get("contended"):
                _store(key, entry)
            _say(net, batch, entry, racer.threads, busy)
        chosen = Execution.from_name(entry["choice"])
        if settings.compile == "on":
            return replace(chosen, compile=True)
        eager_run = run_steps * entry["step"]
        budgeted_run = max_seconds / MEASURING_SHARE if max_seconds is not None else math.inf
        if not may_compile or min(eager_run, budgeted_run) < COMPILE_WORTH_TRYING:
            return chosen
        if "compile" not in entry:
            compiled = racer.compile_timing(chosen)
            if compiled is None:
                return chosen
            entry["compile"] = compiled
            busy = machine_busy() or key not in read_cache()    # stored only with the eager choice
            if not busy:
                _store(key, entry)
            _say_compile(compiled, busy)
        compiled = entry["compile"]
        with_compile = compiled["compile_seconds"] + run_steps * compiled["step"]
        return replace(chosen, compile=with_compile * GAIN < run_steps * compiled["eager_step"])


def machine_busy() -> bool:
    """Whether other work was competing for the cores while we measured: the last minute's load
    average above the cores plus one (the measuring itself keeps up to the cores busy). What was
    measured then serves this run; the next run measures again."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return hasattr(os, "getloadavg") and os.getloadavg()[0] > cores + 1


def _store(key: str, entry: dict) -> None:
    cache = read_cache()
    cache[key] = entry
    write_cache(cache)


def _candidates(net: nn.Module, settings: Settings) -> list[Execution]:
    """The precision and layout candidates, the default (fp32 where allowed, contiguous) first, at
    the thread count --threads fixes (0: torch's)."""
    precisions = [False, True] if settings.bf16 == "auto" and bf16_capable_cpu() else [settings.bf16 == "on"]
    convolutional = has_convolutions(net)
    layouts = [False, True] if settings.channels_last == "auto" and convolutional else [settings.channels_last == "on"]
    return [Execution(bf16, channels_last, settings.threads) for bf16 in precisions for channels_last in layouts]


def _thread_options(settings: Settings) -> list[int]:
    """Thread counts to try: the one fixed by --threads or OMP_NUM_THREADS, else torch's and half of it."""
    if settings.threads or os.environ.get("OMP_NUM_THREADS"):
        return [settings.threads]
    threads = torch.get_num_threads()
    return [0, threads // 2] if threads > 1 else [0]


class _Racer:
    """Times training steps of copies of a network, each as Trainer.step runs them."""

    def __init__(self, net: nn.Module, batch: torch.Tensor, make_optimizer):
        self.net, self.batch, self.make_optimizer = net, batch, make_optimizer
        self.threads = torch.get_num_threads()
        self.steps_per_call = 1
        self._steps: dict[Execution, Callable[[], None]] = {}

    def step_seconds(self, execution: Execution) -> float:
        """One step's time after a warm-up step (the first builds the kernels); sets how many steps
        each timed call takes."""
        step = self._step(execution)
        step()
        start = time.perf_counter()
        step()
        seconds = time.perf_counter() - start
        self.steps_per_call = max(1, min(10, round(ROUND_SECONDS / max(seconds, 1e-6))))
        return seconds

    def eager_choice(self, candidates: list[Execution], thread_options: list[int],
                     deadline: float = math.inf) -> dict | None:
        """The cache entry for the fastest eager execution (seconds per step of the candidates, and
        of the thread counts tried for the best of them), or None where the timings were implausible.
        Rounds beyond the first few stop at deadline (a time.perf_counter() value)."""
        timing = self._race(candidates, deadline)
        if timing is None:
            return None
        best = min(candidates, key=lambda c: timing.seconds[c.name])
        fp32 = [c for c in candidates if not c.bf16]
        if best.bf16 and fp32:       # bf16 must beat the best fp32 by GAIN
            best_fp32 = min(fp32, key=lambda c: timing.seconds[c.name])
            if timing.ratio(best_fp32.name, best.name) < GAIN:
                best = best_fp32
        entry = {"seconds": self._per_step(timing), "rounds": timing.rounds, "settled": timing.settled}
        step = entry["seconds"][best.name]
        if len(thread_options) > 1 and time.perf_counter() < deadline:
            fewer = replace(best, threads=thread_options[1])
            timing = self._race([best, fewer], deadline)
            if timing is None:
                return None
            entry["thread_seconds"] = self._per_step(timing)
            entry["rounds"] += timing.rounds
            entry["settled"] = entry["settled"] and timing.settled
            gain = timing.ratio(best.name, fewer.name)
            entry["contended"] = gain >= CONTENDED
            if gain >= GAIN:
                step = step * timing.ratio(fewer.name, best.name)
                best = fewer
        return {"choice": best.name, "step": round(step, 6), **entry}

    def _per_step(self, timing: Medians) -> dict[str, float]:
        return {name: round(s / self.steps_per_call, 6) for name, s in timing.seconds.items()}

    def compile_timing(self, eager: Execution) -> dict | None:
        """Seconds to compile the eager winner with torch.compile, and step times compiled and eager
        (raced); None where compiling fails (no C++ compiler, say) or the timings were implausible."""
        compiled = replace(eager, compile=True)
        start = time.perf_counter()
        try:
            self._step(compiled)()
        except Exception:            # noqa: BLE001 - inductor's failures have many types; eager it is
            return None
        compile_seconds = time.perf_counter() - start
        timing = self._race([eager, compiled])
        if timing is None:
            return None
        return {"compile_seconds": round(compile_seconds, 2),
                "step": round(timing.seconds[compiled.name] / self.steps_per_call, 6),
                "eager_step": round(timing.seconds[eager.name] / self.steps_per_call, 6)}

    def _race(self, candidates: list[Execution], deadline: float = math.inf) -> Medians | None:
        calls = {c.name: self._calls(c) for c in candidates}
        left = deadline - time.perf_counter()
        return timed_medians(calls, warmup=1, max_seconds=max(left, 0.0) if math.isfinite(left) else None,
                             min_rounds=MIN_ROUNDS)

    def _calls(self, execution: Execution) -> Callable[[], None]:
        step, n = self._step(execution), self.steps_per_call

        def run():
            for _ in range(n):
                step()
        return run

    def _step(self, execution: Execution) -> Callable[[], None]:
        if execution not in self._steps:
            self._steps[execution] = _training_step(self.net, self.batch, execution, self.make_optimizer,
                                                    execution.threads or self.threads)
        return self._steps[execution]


def _training_step(net: nn.Module, batch: torch.Tensor, execution: Execution, make_optimizer,
                   threads: int) -> Callable[[], None]:
    """One of Trainer.step's steps on a copy of net: float conversion and layout of the batch,
    forward and loss (log-sum-exp of the outputs, a stand-in for any loss), backward, optimiser step."""
    net = copy.deepcopy(net).cpu().train()
    for p in net.parameters():
        p.grad = None
    if execution.channels_last:
        net = net.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(net)
    model = torch.compile(net) if execution.compile else net
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if execution.bf16 else contextlib.nullcontext

    def step():
        torch.set_num_threads(threads)
        x = batch.float()
        if execution.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast():
            loss = model(x).float().logsumexp(1).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


@contextlib.contextmanager
def _kept_threads():
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _say(net: nn.Module, batch: torch.Tensor, entry: dict, threads: int, busy: bool) -> None:
    from imgcls.progress import console
    seconds, choice = entry["seconds"], entry["choice"]
    default = next(iter(seconds))
    said = f"{choice}"
    if len(seconds) > 1:
        others = ", ".join(f"{name} {seconds[default] / s:.2f}x" for name, s in seconds.items() if name != default)
        said += f" ({others} {default}'s speed)"
    if "thread_seconds" in entry:
        (many, n_many), (few, n_few) = entry["thread_seconds"].items()
        said += f"; {Execution.from_name(few).threads} thread(s) at {n_many / n_few:.2f}x the speed of {threads}"
    shape = "x".join(map(str, batch.shape[1:]))
    console.print(f"fast path: training {network_key(net)} on batches of {len(batch)} x {shape}: {said} (medians of "
                  f"{entry['rounds']} rounds; {_kept(busy or entry.get('contended', False), entry['settled'])})",
                  highlight=False, soft_wrap=True)


def _say_compile(compiled: dict, busy: bool) -> None:
    from imgcls.progress import console
    gain = compiled["eager_step"] / compiled["step"]
    console.print(f"fast path: torch.compile takes {compiled['compile_seconds']:.0f} s here and then steps "
                  f"{gain:.2f}x as fast ({_kept(busy)})", highlight=False, soft_wrap=True)


def _kept(busy: bool, settled: bool = True) -> str:
    if busy:
        return "measured while other work kept the machine busy: for this run only, measured again next time"
    if not settled:
        return "a brief race whose rounds still disagreed: for this run only, measured again next time"
    return f"cached in {cache_path()}"
