"""The kNN kernel's plan, measured on this CPU at first use (kernels.knn_kernel asks for it).

The candidates are every tile shape compiled for the metric, at every instruction-set level
the CPU runs, in both loop orders, with blocks from 64 KiB to 1.5 MiB (kernels.plans): room for
a 1 MiB or a 2 MiB L2 and any L3, without reading cache sizes. They are too many to time each
well in a second or two, so they are cut down in three rounds on a slice of the actual rows
(2,048 queries, one search call's worth, against up to 4,096 references), each round running
the survivors in turn so that other work on the machine hits all of them alike:

1. every tile shape and loop order at a middle block size (256 KiB), once: the best 3 go on;
2. those at every block size, once: the best 4 go on (these two rounds only screen);
3. the 4, seven times, beside oneDNN's int8 GEMM on 2,048 x 2,048 matrices: the lowest median
   wins.

A guard against a measurement that cannot be right: a plan faster than the int8 GEMM peak
measured beside it allows (PLAUSIBLE: 2x that peak for L2, which runs on the same vpdpbusd
instruction, and 4x for L1, whose psadbw some CPUs issue at twice vpdpbusd's rate; generous,
as oneDNN's OpenMP threads lose more than the kernel's to other work on the machine) is timed
again, and dropped if it still is; then nothing is cached, and the next run measures afresh.
The answer is cached with the other fast paths, per CPU, torch version, thread count, metric,
row length and reference size (up to the slice's), and said once when measured.
"""

from __future__ import annotations

import statistics
import time

import torch

from imgcls import fastpath
from imgcls.kernels.uint8_knn import ISA_NAMES, Plan, UInt8KNN, plans

SLICE_QUERIES = 2048          # one search call's worth (models/distance.py's _KERNEL_CHUNK)
SLICE_REFERENCES = 4096
MIDDLE_BLOCK = 256 << 10
KEEP_SHAPES, KEEP_PLANS = 3, 4
SCREEN_ROUNDS, FINAL_ROUNDS = 1, 7
PLAUSIBLE = {"l2": 2.0, "l1": 4.0}   # most a plan may reach, in multiples of the int8 GEMM peak
PEAK_SIZE = 2048


def tuned_plan(metric: str, reference: torch.Tensor, max_level: int = 2) -> Plan:
    """The fastest plan for searching rows like `reference`'s on this CPU: cached, or measured now."""
    dim = reference[0].numel()
    candidates = plans(metric, dim, max_level)
    size = 1 << (min(len(reference), SLICE_REFERENCES) - 1).bit_length()
    answer = fastpath.measured_once(
        f"exact {metric.upper()} kNN kernel on uint8 rows of {dim}",
        f"knn-{metric}-uint8-plan|{dim}|{size} references|level {max_level}",
        lambda: measure(metric, reference, candidates),
        valid=lambda answer: Plan(**answer["plan"]) in candidates)
    return Plan(**answer["plan"])


def measure(metric: str, reference: torch.Tensor, candidates: list[Plan]) -> tuple[dict, str, bool]:
    """(answer, summary, keep) for fastpath.measured_once: the plan measured fastest, as above."""
    started = time.perf_counter()
    rows = reference.reshape(len(reference), -1)
    dim = rows.shape[1]
    refs = rows[:SLICE_REFERENCES]
    queries = rows[-SLICE_QUERIES:] if len(rows) >= SLICE_REFERENCES + SLICE_QUERIES else rows[:SLICE_QUERIES]
    ops = 2.0 * len(queries) * len(refs) * dim
    runs = _runs(metric, refs, queries, candidates)
    seconds, peak, dropped = _guarded(runs, _shortlist(runs, candidates, metric, dim), ops, PLAUSIBLE[metric])
    if not seconds:       # every finalist implausible: run with one, and measure again next time
        plan = dropped[0]
        return ({"plan": plan.as_dict()}, f"{plan.describe(metric, dim)}; every finalist measured implausibly "
                f"fast against the int8 GEMM peak ({peak / 1e9:.0f} GOP/s)", False)
    plan = min(seconds, key=seconds.get)
    rate = ops / seconds[plan]
    against = f", {rate / peak:.2f}x the int8 GEMM peak measured beside it ({peak / 1e9:.0f} GOP/s)" if peak else ""
    dropped_note = (f"; dropped as implausibly fast even when timed again: "
                    f"{', '.join(p.describe(metric, dim) for p in dropped)}") if dropped else ""
    summary = (f"{plan.describe(metric, dim)}, {rate / 1e9:.0f} GOP/s{against}; {len(candidates)} plans, "
               f"{time.perf_counter() - started:.1f} s{dropped_note}")
    answer = {"plan": plan.as_dict(), "gops": round(rate / 1e9, 1),
              "peak_gops": round(peak / 1e9, 1) if peak else None, "isa": ISA_NAMES[plan.level],
              "finalists": {plan.describe(metric, dim): round(s, 6) for plan, s in seconds.items()}}
    return answer, summary, not dropped


def _shortlist(runs: dict, candidates: list[Plan], metric: str, dim: int) -> list[Plan]:
    """Rounds 1 and 2: the best tile shapes and loop orders at a middle block, then their best blocks."""
    groups = {}
    for plan in candidates:        # the same tile shape and loop order at each block size
        groups.setdefault((plan.level, plan.mr, plan.nr, plan.order), []).append(plan)
    middle = [min(group, key=lambda plan: abs(plan.block_bytes(metric, dim) - MIDDLE_BLOCK))
              for group in groups.values()]
    best = _best(_medians({plan: runs[plan] for plan in middle}, SCREEN_ROUNDS), KEEP_SHAPES)
    second = [plan for shape in best for plan in groups[shape.level, shape.mr, shape.nr, shape.order]]
    return _best(_medians({plan: runs[plan] for plan in second}, SCREEN_ROUNDS), KEEP_PLANS)


def _guarded(runs: dict, finalists: list[Plan], ops: float, plausible: float
             ) -> tuple[dict, float | None, list[Plan]]:
    """Round 3: each finalist's median seconds beside the int8 GEMM, the GEMM's rate, and the
    plans dropped because they stayed faster than `plausible` x that rate when timed again."""
    seconds, peak = _final(runs, finalists)
    dropped = []
    for plan in [plan for plan in finalists if peak and ops / seconds[plan] > plausible * peak]:
        again, peak = _final(runs, [plan])
        if ops / again[plan] > plausible * peak:
            dropped.append(plan)
            del seconds[plan]
        else:
            seconds[plan] = again[plan]
    return seconds, peak, dropped


def _runs(metric: str, refs: torch.Tensor, queries: torch.Tensor, candidates: list[Plan]) -> dict:
    """plan -> a callable that searches the slice once with it (references packed beforehand,
    shared by the plans that pack them alike; queries are packed in the call, as in use)."""
    packed = {}
    runs = {}
    for plan in candidates:
        kernel = UInt8KNN(metric, plan)
        if (plan.level, plan.nr) not in packed:
            packed[plan.level, plan.nr] = kernel.prepare(refs)
        runs[plan] = (lambda kernel=kernel, prepared=packed[plan.level, plan.nr]: kernel.search(prepared, queries, 5))
    return runs


def _medians(runs: dict, rounds: int) -> dict:
    times = fastpath.interleaved_times(runs, rounds, warm_up=False)   # packed beforehand: nothing to warm
    return {plan: statistics.median(t) for plan, t in times.items()}


def _best(seconds: dict, n: int) -> list:
    return sorted(seconds, key=seconds.get)[:n]


def _final(runs: dict, finalists: list[Plan]) -> tuple[dict, float | None]:
    """Median seconds of each finalist over FINAL_ROUNDS rounds beside torch's int8 GEMM, and that
    GEMM's median rate (operations per second; None where torch has no CPU int8 GEMM)."""
    gemm = fastpath.int8_gemm_run(PEAK_SIZE)
    candidates = {plan: runs[plan] for plan in finalists}
    if gemm:
        gemm[0]()                       # warm up (the plans are warm from the earlier rounds)
        candidates["int8 GEMM"] = gemm[0]
    times = fastpath.interleaved_times(candidates, FINAL_ROUNDS, warm_up=False)
    peak = gemm[1] / statistics.median(times.pop("int8 GEMM")) if gemm else None
    return {plan: statistics.median(t) for plan, t in times.items()}, peak
