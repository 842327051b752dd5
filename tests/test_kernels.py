"""The compiled uint8 kNN kernel against exact references (numpy, scikit-learn), at every
instruction-set level this CPU runs and with every plan (tile shape, loop order, block size),
the measurement that picks the plan, and the engine choice around it."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from sklearn.neighbors import NearestNeighbors

from imgcls import fastpath, kernels
from imgcls.kernels import tuning
from imgcls.models import distance
from imgcls.models.distance import ExactSearch

LEVELS = [(metric, level) for metric in ("l1", "l2") for level in (1, 2) if not (metric == "l2" and level < 2)]


def kernel_or_skip(metric, dim, level):
    plans = [plan for plan in kernels.plans(metric, dim, max_level=level) if plan.level == level]
    if not plans:
        pytest.skip(f"no {metric} kernel at level {level} on this machine")
    return kernels.UInt8KNN(metric, plans[0])


def every_plan(metric, dim):
    """kernels.plans, and each tile shape and loop order with blocks of 1 and 3 tiles too, so that
    small data still crosses block boundaries (and blocks end inside the data)."""
    plans = kernels.plans(metric, dim)
    small = {dataclasses.replace(plan, block=block) for plan in plans for block in (1, 3)}
    return plans + sorted(small - set(plans), key=str)


def exact_order(queries, reference, metric, k):
    """(distances, indices) of the k nearest by brute force in int64, ties broken by index."""
    diff = queries[:, None, :].astype(np.int64) - reference[None].astype(np.int64)
    dist = np.abs(diff).sum(-1) if metric == "l1" else np.square(diff).sum(-1)
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(dist, order, 1), order


def test_kernel_is_built_wherever_a_compiler_is():
    if shutil.which("g++") or shutil.which("c++"):
        assert kernels.built(), "setup.py should have compiled imgcls/kernels/knn.cpp"


@pytest.mark.parametrize("metric,level", LEVELS)
def test_ties_come_in_index_order(metric, level):
    # Values 0..2 over 23 bytes: distances collide all the time, so the order among equals matters.
    rng = np.random.default_rng(0)
    reference = rng.integers(0, 3, (203, 23), dtype=np.uint8)
    queries = rng.integers(0, 3, (37, 23), dtype=np.uint8)
    kernel = kernel_or_skip(metric, 23, level)
    dist, idx = kernel.search(kernel.prepare(torch.from_numpy(reference)), torch.from_numpy(queries), 9)
    want_dist, want_idx = exact_order(queries, reference, metric, 9)
    np.testing.assert_array_equal(dist, want_dist)
    np.testing.assert_array_equal(idx, want_idx)


@pytest.mark.parametrize("metric,level", LEVELS)
@pytest.mark.parametrize("dim", [64, 3 * 32 * 32])
def test_full_range_pixels_match_sklearn(metric, level, dim):
    # Extreme bytes (0 and 255 mixed in) reach the largest sums the accumulators must hold.
    rng = np.random.default_rng(dim)
    reference = rng.integers(0, 256, (130, dim), dtype=np.uint8)
    reference[:5] = 255
    queries = rng.integers(0, 256, (21, dim), dtype=np.uint8)
    queries[:3] = 0
    kernel = kernel_or_skip(metric, dim, level)
    dist, idx = kernel.search(kernel.prepare(torch.from_numpy(reference)), torch.from_numpy(queries), 5)
    sk = NearestNeighbors(n_neighbors=5, algorithm="brute", p=1 if metric == "l1" else 2)
    sk_dist, sk_idx = sk.fit(reference.astype(np.float64)).kneighbors(queries.astype(np.float64), 6)
    np.testing.assert_allclose(dist if metric == "l1" else np.sqrt(dist), sk_dist[:, :5], rtol=1e-12)
    untied = (np.diff(sk_dist, axis=1) > 0).all(1)       # sklearn's order among equal distances is arbitrary
    assert untied.sum() > 10
    np.testing.assert_array_equal(idx[untied], sk_idx[untied, :5])
    want_dist, want_idx = exact_order(queries, reference, metric, 5)
    np.testing.assert_array_equal(dist, want_dist)
    np.testing.assert_array_equal(idx, want_idx)


def test_k_beyond_the_reference_and_one_query():
    kernel = kernel_or_skip("l1", 10, 1)
    reference = torch.arange(30, dtype=torch.uint8).reshape(3, 10)
    dist, idx = kernel.search(kernel.prepare(reference), reference[1:2], 8)
    assert idx.tolist() == [[1, 0, 2]] and dist.tolist() == [[0, 100, 100]]


@pytest.mark.parametrize("metric", ["l1", "l2"])
@pytest.mark.parametrize("shape", [(517, 45, 101, 3), (203, 37, 23, 256), (70, 9, 784, 256)],
                         ids=["ties", "odd-dim", "pixels"])
def test_every_plan_gives_the_exact_neighbours(metric, shape):
    # Reference and query counts that fill no tile evenly, rows whose length is no multiple of the
    # vector or the step (101, 23), values 0..2 so that distances tie all the time (k > 1 must keep
    # the earlier index first), and full-range bytes with the extremes the accumulators must hold.
    n_ref, n_query, dim, high = shape
    rng = np.random.default_rng(n_ref)
    reference = rng.integers(0, high, (n_ref, dim), dtype=np.uint8)
    queries = rng.integers(0, high, (n_query, dim), dtype=np.uint8)
    reference[:3], queries[:2] = high - 1, 0
    want_dist, want_idx = exact_order(queries, reference, metric, 7)
    plans = every_plan(metric, dim)
    if not plans:
        pytest.skip(f"no {metric} kernel on this machine")
    assert len({(plan.level, plan.mr, plan.nr) for plan in plans}) >= 4
    prepared = {}
    for plan in plans:
        kernel = kernels.UInt8KNN(metric, plan)
        if (plan.level, plan.nr) not in prepared:
            prepared[plan.level, plan.nr] = kernel.prepare(torch.from_numpy(reference))
        dist, idx = kernel.search(prepared[plan.level, plan.nr], torch.from_numpy(queries), 7)
        np.testing.assert_array_equal(idx, want_idx, err_msg=str(plan))
        np.testing.assert_array_equal(dist, want_dist, err_msg=str(plan))


def test_rows_too_long_for_int32_l2_lanes_get_no_kernel():
    assert kernels.plans("l2", kernels.MAX_DIM["l2"] + 1) == []
    reference = torch.zeros(4, kernels.MAX_DIM["l2"] + 1, dtype=torch.uint8)
    assert kernels.knn_kernel("l2", reference) is None


@pytest.mark.parametrize("metric", ["l1", "l2"])
def test_every_engine_gives_the_same_answer(metric, monkeypatch):
    rng = np.random.default_rng(5)
    reference = torch.from_numpy(rng.integers(0, 256, (500, 49), dtype=np.uint8))
    queries = torch.from_numpy(rng.integers(0, 256, (90, 49), dtype=np.uint8))
    answers = {}
    for name, engine in {
        "chosen": distance.choose_engine(reference, metric),
        "faiss or GEMM": distance.CandidateSearch(reference, metric, distance.faiss_l1_candidates if metric == "l1"
                                                  else distance.float_l2_candidates),
        "float": distance.choose_engine(reference.float(), metric),
    }.items():
        search = ExactSearch(reference if name != "float" else reference.float(), metric)
        search._engine = engine
        answers[name] = search.search(queries if name != "float" else queries.float(), 6)
    for name, (dist, idx) in answers.items():
        torch.testing.assert_close(idx, answers["chosen"][1], msg=name)
        torch.testing.assert_close(dist, answers["chosen"][0], msg=name)


def test_without_the_kernel_l1_falls_back_to_faiss_and_says_so(monkeypatch, capsys):
    monkeypatch.setattr(kernels, "knn_kernel", lambda *a, **k: None)
    monkeypatch.setattr(distance, "_SAID_MISSING", False)
    reference = torch.from_numpy(np.random.default_rng(6).integers(0, 256, (80, 16), dtype=np.uint8))
    search = ExactSearch(reference, "l1")
    assert search.engine == "faiss"
    dist, idx = search.search(reference[:5], 2)
    assert idx[:, 0].tolist() == [0, 1, 2, 3, 4] and dist[:, 0].tolist() == [0, 0, 0, 0, 0]
    assert "uint8 L1 kernel" in capsys.readouterr().err
    ExactSearch(reference, "l1").engine
    assert capsys.readouterr().err == ""          # said once per process


def test_l2_engines_race_once_and_the_answer_is_cached(monkeypatch, tmp_path, capsys):
    if not kernels.plans("l2", 49) or not distance._int8_gemm_works():
        pytest.skip("this machine has only one exact L2 engine for uint8")
    monkeypatch.setenv("IMGCLS_CACHE", str(tmp_path))
    reference = torch.from_numpy(np.random.default_rng(7).integers(0, 256, (300, 49), dtype=np.uint8))
    first = ExactSearch(reference, "l2").engine
    assert first in ("int8 GEMM", f"kernel ({kernels.ISA_NAMES[2]})")
    assert "fast path: exact L2 kNN" in capsys.readouterr().err
    monkeypatch.setattr(fastpath, "race", lambda candidates: pytest.fail("measured twice"))
    assert ExactSearch(reference, "l2").engine == first


def test_fastest_picks_the_quicker_and_keeps_the_answer(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("IMGCLS_CACHE", str(tmp_path))
    times = {"slow": 2.0, "quick": 0.5}
    monkeypatch.setattr(fastpath, "race", lambda candidates: {name: run() for name, run in candidates.items()})
    candidates = {name: (lambda name=name: times[name]) for name in times}
    assert fastpath.fastest("a job", candidates, key="job") == "quick"
    assert "a job: quick (4.00x faster than slow" in capsys.readouterr().err
    times["slow"] = 0.1
    assert fastpath.fastest("a job", candidates, key="job") == "quick"       # cached, not measured again
    assert fastpath.fastest("a job", {"other": lambda: 1.0}, key="job") == "other"   # a stale answer is redone


def test_the_plan_is_measured_once_said_and_cached(monkeypatch, tmp_path, capsys):
    if not kernels.plans("l1", 49):
        pytest.skip("no kernel on this machine")
    monkeypatch.setenv("IMGCLS_CACHE", str(tmp_path))
    reference = torch.from_numpy(np.random.default_rng(8).integers(0, 256, (300, 49), dtype=np.uint8))
    kernel = kernels.knn_kernel("l1", reference)
    assert kernel.plan in kernels.plans("l1", 49)
    said = capsys.readouterr().err
    assert "fast path: exact L1 kNN kernel on uint8 rows of 49: " in said and "cached in" in said
    monkeypatch.setattr(tuning, "measure", lambda *a: pytest.fail("measured twice"))
    assert kernels.knn_kernel("l1", reference).plan == kernel.plan
    assert capsys.readouterr().err == ""
    # the search over it is exact
    dist, idx = ExactSearch(reference, "l1").search(reference[:20], 3)
    want_dist, want_idx = exact_order(reference[:20].numpy(), reference.numpy(), "l1", 3)
    np.testing.assert_array_equal(idx.numpy(), want_idx)


@pytest.fixture
def stopwatch(monkeypatch, tmp_path):
    """Three candidate plans whose times the test sets (seconds per run, or a list for successive
    final rounds), the int8 GEMM at 1 s a run, and an empty cache of the test's own."""
    monkeypatch.setenv("IMGCLS_CACHE", str(tmp_path))
    shapes = kernels.shapes("l2", 2)
    if kernels.isa_level() < 2 or len(shapes) < 3:
        pytest.skip("no L2 kernel on this machine")
    plans = [kernels.Plan(2, mr, nr, "refs inner", 4) for mr, nr in shapes[:3]]
    monkeypatch.setattr(tuning, "plans", lambda metric, dim, max_level: plans)
    stopwatch.seconds, stopwatch.finals = {}, {}

    def interleaved_times(candidates, rounds, warm_up=True):
        out = {}
        for name in candidates:
            if name == "int8 GEMM":
                out[name] = [1.0] * rounds
            elif rounds == tuning.FINAL_ROUNDS and name in stopwatch.finals and stopwatch.finals[name]:
                out[name] = [stopwatch.finals[name].pop(0)] * rounds
            else:
                out[name] = [stopwatch.seconds[name]] * rounds
        return out
    monkeypatch.setattr(fastpath, "interleaved_times", interleaved_times)
    stopwatch.plans = plans
    return stopwatch


def slice_ops(reference):
    return 2.0 * min(len(reference), tuning.SLICE_QUERIES) * min(len(reference), tuning.SLICE_REFERENCES) * 49


def test_a_plan_faster_than_the_int8_peak_allows_is_timed_again_and_dropped(stopwatch, capsys):
    reference = torch.from_numpy(np.random.default_rng(9).integers(0, 256, (200, 49), dtype=np.uint8))
    peak = 2.0 * tuning.PEAK_SIZE ** 3          # operations per second: the fake GEMM takes 1 s
    impossible = slice_ops(reference) / (tuning.PLAUSIBLE["l2"] * peak) / 10
    broken, good, slow = stopwatch.plans
    stopwatch.seconds = {broken: impossible, good: 1e-3, slow: 2e-3}
    assert tuning.tuned_plan("l2", reference) == good
    said = capsys.readouterr().err
    assert "dropped as implausibly fast even when timed again" in said and "not cached" in said
    assert not fastpath.cache_path().exists()
    # implausible once, then plausible: measured again, kept, and cached
    stopwatch.finals = {broken: [impossible, 5e-4]}
    assert tuning.tuned_plan("l2", reference) == broken
    cached = json.loads(fastpath.cache_path().read_text())
    assert [answer["plan"] for answer in cached.values()] == [broken.as_dict()]
    assert "cached in" in capsys.readouterr().err
