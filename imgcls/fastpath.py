"""Fast paths measured, not guessed: each answer is timed once on this CPU, then cached.

- `bf16_is_faster`: whether bf16 autocast (with channels_last for convolutional networks) beats
  fp32 for this network;
- `fp32_channels_last_is_faster`: whether, in fp32, a convolutional network runs faster in
  channels_last (oneDNN's kernels for it: EfficientNet-Lite0's depthwise convolutions train
  2.5x faster on an AMD EPYC; small convolutions can lose);
- `fastest`: which of several exact implementations of the same work is quickest (the kNN
  engines use it);
- `measured_once`, `interleaved_times` and `int8_gemm_run`: the pieces for a measurement of
  one's own, cached the same way (the kNN kernel's plan, imgcls/kernels/tuning.py).

A CPU flag is a guess: AMX-capable Intel CPUs and AMD EPYC CPUs with AVX-512 bf16 (no AMX) both
run bf16 matrix work natively, but how much faster a given network gets differs, and on a CPU
without either bf16 loses. So on a CPU that has AMX or AVX-512 bf16, `--bf16 auto` times a few
forward (and, for training, backward) passes of a copy of the actual network on a batch of the
actual input in both precisions, and takes bf16 where it is at least MIN_GAIN times as fast as
the faster fp32 layout (contiguous, or channels_last for convolutional networks, which fp32
takes where it is MIN_GAIN times as fast as contiguous). The answers are cached per CPU model,
torch version, thread count, network (and how much of it trains) and input shape, in
fast_paths.json in cache_dir() ($IMGCLS_CACHE, else $XDG_CACHE_HOME/imgcls, else ~/.cache/imgcls),
so the measurement runs once.
"""

from __future__ import annotations

import contextlib
import copy
import json
import platform
import re
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from imgcls.storage import cache_dir, write_text

MIN_GAIN = 1.15          # bf16 must beat fp32 by this much: a tie is not worth its rounding
MEASURE_BATCH = 64     # near a training batch: bf16 gains grow with the matrix sizes...
MEASURE_BYTES = 2**23  # ...but fewer rows of large images (8 MB of float input: 13 at 224 px), so a
                       # fine-tuned EfficientNet is measured in seconds, not minutes
TIMED_STEPS = 3
RACE_ROUNDS = 5


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


def bf16_is_faster(net: nn.Module, example: torch.Tensor, train: bool, channels_last: bool) -> bool:
    """The cached or freshly measured answer for this network and input on this CPU."""
    return bool(_measured(net, example, train, channels_last)["bf16"])


def fp32_channels_last_is_faster(net: nn.Module, example: torch.Tensor, train: bool) -> bool:
    """Whether fp32 runs this convolutional network faster in channels_last than contiguous, on this
    CPU (measured with bf16_is_faster's question, and cached with it)."""
    return bool(_measured(net, example, train, channels_last=True, bf16=bf16_capable_cpu())["fp32_channels_last"])


def _measured(net: nn.Module, example: torch.Tensor, train: bool, channels_last: bool, bf16: bool = True) -> dict:
    """The cache's entry for this network and input, measured now where it is missing."""
    key = _key(net, example, train, channels_last)
    cache = _read_cache()
    if "fp32_channels_last" not in cache.get(key, {}):
        found = measure(net, example, train, channels_last, bf16)
        gain, layout = found["gain"], found["fp32_channels_last"]
        cache[key] = {"gain": round(gain, 3), "bf16": gain >= MIN_GAIN, "fp32_channels_last": layout}
        _write_cache(cache)
        from imgcls.progress import console
        fp32 = "fp32" + (" + channels_last" if layout else "")
        choice = "bf16 autocast" + (" + channels_last" if channels_last else "") if gain >= MIN_GAIN else fp32
        bf16_text = f"bf16 measured at {gain:.2f}x {fp32}'s speed" if bf16 else f"{fp32} measured fastest"
        console.print(f"fast path: {choice} ({'training' if train else 'inference'}: {bf16_text} for this network "
                      f"on this CPU; cached in {cache_path()})", highlight=False, soft_wrap=True)
    return cache[key]


def fastest(what: str, candidates: dict[str, Callable[[], object]], key: str) -> str:
    """The name of the quickest candidate (name -> a callable that does the same work once).

    Each runs once to warm up; then RACE_ROUNDS rounds run them in turn (so a burst of other work
    on the machine hits all of them alike) and each one's best time counts. The answer is cached
    under key (with the CPU model, torch version and thread count) and said once when measured.
    """
    full_key = "|".join([cpu_model(), torch.__version__, f"{torch.get_num_threads()} threads", key])
    cache = _read_cache()
    if cache.get(full_key, {}).get("choice") not in candidates:
        seconds = race(candidates)
        winner = min(seconds, key=seconds.get)
        cache[full_key] = {"choice": winner, "seconds": {name: round(s, 6) for name, s in seconds.items()}}
        _write_cache(cache)
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
    full_key = "|".join([cpu_model(), torch.__version__, f"{torch.get_num_threads()} threads", key])
    cache = _read_cache()
    if full_key in cache and valid(cache[full_key]):
        return cache[full_key]
    answer, summary, keep = measure()
    if keep:
        cache = _read_cache()
        cache[full_key] = answer
        _write_cache(cache)
    from imgcls.progress import console
    where = f"cached in {cache_path()}" if keep else "not cached: it will be measured again"
    console.print(f"fast path: {what}: {summary} (measured on this CPU; {where})", highlight=False, soft_wrap=True)
    return answer


def measure_gain(net: nn.Module, example: torch.Tensor, train: bool, channels_last: bool) -> float:
    """fp32 time / bf16 time of a few steps on a copy of net (see measure)."""
    return measure(net, example, train, channels_last)["gain"]


def measure(net: nn.Module, example: torch.Tensor, train: bool, channels_last: bool, bf16: bool = True) -> dict:
    """A few steps on copies of net (the original and the random number generators are left as
    they were, so a measured run trains exactly like a cached one): in fp32, contiguous and (for
    channels_last networks) channels_last, the latter kept where MIN_GAIN times as fast; and with
    bf16, bf16 autocast (channels_last as asked). {"gain": the faster fp32's time / bf16's
    (0 without bf16), "fp32_channels_last": whether fp32 took channels_last}."""
    per_image = 4 * max(1, example[0].numel()) if len(example) else 1
    batch = example[:max(8, min(MEASURE_BATCH, MEASURE_BYTES // per_image))].float()
    with torch.random.fork_rng(devices=[]):
        fp32 = _seconds(copy.deepcopy(net), batch, train, bf16=False, channels_last=False)
        layout = False
        if channels_last:
            fp32_cl = _seconds(copy.deepcopy(net), batch, train, bf16=False, channels_last=True)
            layout = fp32 / max(fp32_cl, 1e-9) >= MIN_GAIN
            fp32 = fp32_cl if layout else fp32
        if not bf16:
            return {"gain": 0.0, "fp32_channels_last": layout}
        bf16_seconds = _seconds(copy.deepcopy(net), batch, train, bf16=True, channels_last=channels_last)
    return {"gain": fp32 / max(bf16_seconds, 1e-9), "fp32_channels_last": layout}


def _seconds(net: nn.Module, batch: torch.Tensor, train: bool, *, bf16: bool, channels_last: bool) -> float:
    net = net.cpu().train(train)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
        batch = batch.contiguous(memory_format=torch.channels_last)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    best = float("inf")
    for step in range(TIMED_STEPS + 1):          # the first step warms up (allocations, kernel choice)
        start = time.perf_counter()
        with torch.set_grad_enabled(train), autocast:
            out = net(batch).float()
        if train:
            out.square().mean().backward()
        if step:
            best = min(best, time.perf_counter() - start)
    return best


def cache_path() -> Path:
    return cache_dir() / "fast_paths.json"


def _key(net: nn.Module, example: torch.Tensor, train: bool, channels_last: bool) -> str:
    parameters = sum(p.numel() for p in net.parameters())
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad) if train else parameters
    body = getattr(net, "body", net)
    # A frozen part (a fine-tune's first stage) trains without its backward pass: another question.
    size = f"{parameters}" if trainable == parameters else f"{parameters} ({trainable} trained)"
    return "|".join([cpu_model(), torch.__version__, f"{torch.get_num_threads()} threads",
                     f"{type(body).__name__}:{size}", "x".join(map(str, example.shape[1:])),
                     "train" if train else "infer", "channels_last" if channels_last else "contiguous"])


def _read_cache() -> dict:
    try:
        return json.loads(cache_path().read_text())
    except (OSError, ValueError):
        return {}


def _write_cache(cache: dict) -> None:
    try:
        write_text(cache_path(), json.dumps(cache, indent=1, sort_keys=True))
    except OSError:
        pass        # an unwritable cache only means measuring again next time
