"""Exact nearest-neighbour search: the one distance kernel behind kNN, the doctor and search indexes.

`ExactSearch(reference, metric).search(queries, k)` returns the k nearest reference rows by L2
or L1 distance, exactly, sorted by (distance, index). Which engine does the work depends on the
data and the machine, and is chosen at the first search:

- uint8 rows (pixels), where the compiled kernel exists (imgcls.kernels, built at install): one
  blocked pass of exact integer distances with the k best kept on the fly: L1 as sums of
  absolute differences (psadbw), L2 as int8 dot products (vpdpbusd). How it cuts the work
  (tile shape, loop order, block size) is measured on this CPU at the first search and cached.
  For L2 the tuned kernel is then raced once against oneDNN's int8 GEMM, which can be faster on
  CPUs with AMX, and the faster is cached (imgcls.fastpath).
- otherwise, candidates then an exact re-rank, per chunk of queries:
  1. a fast score matrix and a top-(k + margin) selection:
     - L2 on uint8: oneDNN's int8 GEMM of the pixels centred at 128, whose int32 sums are exact
       (|x - 128| <= 128, so every dot product is below 2^24 and survives the float32 output);
       ||t||^2 / 2 - q.t ranks like ||q - t||^2;
     - L2 on floats: the same ranking from one float32 GEMM (addmm);
     - L1: faiss's brute-force search (SIMD, OpenMP over queries);
  2. the candidates' distances recomputed in float64/int64 from the data, so float rounding in
     step 1 can never reorder the answer.
"""

from __future__ import annotations

import numpy as np
import torch

from imgcls import kernels
from imgcls.errors import ImgclsError
from imgcls.fastpath import fastest

METRICS = ("l2", "l1")
_MARGIN = 8          # extra candidates kept for the exact re-rank
_CHUNK = 1024        # queries per chunk: bounds memory at chunk x N float32 scores
_KERNEL_CHUNK = 2048  # queries per kernel call (each call streams the reference once more)
_RACE_REFERENCE, _RACE_QUERIES = 16384, 1024   # the sample the L2 engines race on (about 1 s in all)
_RERANK_BYTES = 64 * 2**20   # differences of the exact re-rank held at once


class ExactSearch:
    def __init__(self, reference: torch.Tensor, metric: str = "l2"):
        if metric not in METRICS:
            raise ImgclsError(f"unknown metric {metric!r}; valid: {', '.join(METRICS)}")
        self.metric = metric
        self.reference = reference.reshape(len(reference), -1)
        self._engine = None

    def __len__(self) -> int:
        return len(self.reference)

    @property
    def engine(self) -> str:
        """What does (or will do) the search: "kernel (AVX-512 (BW, VNNI))", "int8 GEMM", "float GEMM" or "faiss"."""
        return self._chosen_engine().name

    def search(self, queries: torch.Tensor, k: int, progress=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(distances float64 (Q, k), indices int64 (Q, k)). L2 distances are Euclidean (not squared)."""
        queries = queries.reshape(len(queries), -1)
        if queries.shape[1] != self.reference.shape[1]:
            raise ImgclsError(f"queries have {queries.shape[1]} features, the reference has {self.reference.shape[1]}")
        engine = self._chosen_engine()
        k = min(k, len(self.reference))
        distances, indices = [], []
        for start in range(0, len(queries), engine.chunk):
            chunk = queries[start:start + engine.chunk]
            d, i = engine.search(chunk, k)
            distances.append(d)
            indices.append(i)
            if progress is not None:
                progress(len(chunk))
        return torch.cat(distances), torch.cat(indices)

    def _chosen_engine(self):
        if self._engine is None:
            self._engine = choose_engine(self.reference, self.metric)
        return self._engine


def choose_engine(reference: torch.Tensor, metric: str):
    """The fastest exact engine this data and machine allow (see the module docstring)."""
    if reference.dtype != torch.uint8:
        return CandidateSearch(reference, metric, faiss_l1_candidates if metric == "l1" else float_l2_candidates)
    kernel = kernels.knn_kernel(metric, reference)
    if metric == "l1":
        if kernel is None:
            _say_kernel_missing()
            return CandidateSearch(reference, metric, faiss_l1_candidates)
        return KernelSearch(reference, kernel)
    if not _int8_gemm_works():
        return KernelSearch(reference, kernel) if kernel else CandidateSearch(reference, metric, float_l2_candidates)
    if kernel is None:
        return CandidateSearch(reference, metric, int8_l2_candidates)
    engines = {"kernel": lambda ref: KernelSearch(ref, kernel), "int8 GEMM": lambda ref: CandidateSearch(
        ref, metric, int8_l2_candidates)}
    winner = fastest(f"exact L2 kNN on uint8 rows of {reference.shape[1]}", _race(reference, engines),
                     key=f"knn-l2-uint8|{reference.shape[1]}")
    return engines[winner](reference)


def _race(reference: torch.Tensor, engines: dict) -> dict:
    """name -> a callable that runs one timed search of a sample with that engine (prepared beforehand)."""
    sample = reference[:_RACE_REFERENCE]
    queries = sample[:_RACE_QUERIES]
    prepared = {name: make(sample) for name, make in engines.items()}
    for engine in prepared.values():
        engine.search(queries[:4], 1)                   # prepare outside the timing
    return {name: (lambda engine=engine: engine.search(queries, 5)) for name, engine in prepared.items()}


class KernelSearch:
    """Exact integer distances from the compiled uint8 kernel; nothing to re-rank."""

    chunk = _KERNEL_CHUNK

    def __init__(self, reference: torch.Tensor, kernel: kernels.UInt8KNN):
        self.reference, self.kernel, self.prepared = reference, kernel, None
        self.name = f"kernel ({kernel.isa})"
        self.plan = kernel.plan.describe(kernel.metric, reference.shape[1])

    def search(self, chunk: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        if chunk.dtype != torch.uint8:
            raise ImgclsError(f"queries are {chunk.dtype}; this search holds uint8 rows")
        if self.prepared is None:
            self.prepared = self.kernel.prepare(self.reference)
        dist, index = self.kernel.search(self.prepared, chunk, k)
        dist = torch.from_numpy(dist).to(torch.float64)
        return (dist.sqrt() if self.kernel.metric == "l2" else dist), torch.from_numpy(index)


class CandidateSearch:
    """Candidates from a fast score (see the *_candidates functions), then an exact re-rank."""

    chunk = _CHUNK

    def __init__(self, reference: torch.Tensor, metric: str, candidates):
        self.reference, self.metric, self.candidates, self.prepared = reference, metric, candidates, None
        self.name = candidates.engine

    def search(self, chunk: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.prepared is None:
            self.prepared = self.candidates.prepare(self.reference)
        candidates = self.candidates(self.prepared, chunk, min(k + _MARGIN, len(self.reference)))
        return self._rerank(chunk, candidates, k)

    def _rerank(self, chunk: torch.Tensor, candidates: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        wide = torch.int64 if self.reference.dtype == torch.uint8 else torch.float64
        # The differences are queries x candidates x features wide numbers: 23 GB for 1024 photos of
        # 224 px, so a few queries at a time, within _RERANK_BYTES.
        step = max(1, _RERANK_BYTES // (8 * candidates.shape[1] * max(chunk.shape[1], 1)))
        parts = []
        for start in range(0, len(chunk), step):
            diff = self.reference[candidates[start:start + step]].to(wide) - chunk[start:start + step, None, :].to(wide)
            parts.append(diff.abs().sum(-1) if self.metric == "l1" else diff.square().sum(-1))
        dist = torch.cat(parts)
        # Sort by distance, then by index: candidates come sorted by index after this argsort pair.
        by_index = candidates.argsort(dim=1)
        candidates, dist = candidates.gather(1, by_index), dist.gather(1, by_index)
        order = dist.argsort(dim=1, stable=True)[:, :k]
        dist = dist.gather(1, order).to(torch.float64)
        return (dist.sqrt() if self.metric == "l2" else dist), candidates.gather(1, order)


def _candidates(engine: str, prepare):
    """Mark a candidate function with its engine's name and the one-off preparation of the reference."""
    def mark(fn):
        fn.engine, fn.prepare = engine, prepare
        return fn
    return mark


def _prepare_int8(reference: torch.Tensor):
    centred = torch.bitwise_xor(reference, 128).view(torch.int8)     # x - 128, without an int16 copy
    # Exact norms, a few rows at a time: float32 copies of photos' rows would take 8 times the rows.
    rows = max(1, _RERANK_BYTES // (8 * max(centred.shape[1], 1)))
    half_norms = torch.cat([block.to(torch.int64).square().sum(1) for block in centred.split(rows)]
                           ).to(torch.float32) / 2
    packed = torch.ops.onednn.qlinear_prepack(centred, [_CHUNK, centred.shape[1]])
    return packed, -half_norms, torch.ones(len(centred)), torch.zeros(len(centred), dtype=torch.long)


@_candidates("int8 GEMM", _prepare_int8)
def int8_l2_candidates(prepared, chunk: torch.Tensor, m: int) -> torch.Tensor:
    packed, neg_half_norms, scales, zero_points = prepared
    # q.(t - 128) with q read as (x - 128) through the zero point, minus ||t - 128||^2 / 2.
    scores = torch.ops.onednn.qlinear_pointwise(chunk.contiguous(), 1.0, 128, packed, scales, zero_points,
                                                neg_half_norms, 1.0, 0, torch.float32, "none", [], "")
    return scores.topk(m, dim=1).indices


def _prepare_float(reference: torch.Tensor):
    ref = reference.to(torch.float32)
    return ref, ref.square().sum(1) / 2


@_candidates("float GEMM", _prepare_float)
def float_l2_candidates(prepared, chunk: torch.Tensor, m: int) -> torch.Tensor:
    ref, half_norms = prepared
    scores = torch.addmm(half_norms, chunk.to(torch.float32), ref.T, alpha=-1)
    return scores.topk(m, dim=1, largest=False).indices


@_candidates("faiss", lambda reference: np.ascontiguousarray(reference.numpy(), dtype=np.float32))
def faiss_l1_candidates(prepared, chunk: torch.Tensor, m: int) -> torch.Tensor:
    import faiss
    _, idx = faiss.knn(np.ascontiguousarray(chunk.numpy(), dtype=np.float32), prepared, m, metric=faiss.METRIC_L1)
    return torch.from_numpy(idx)


_SAID_MISSING = False


def _say_kernel_missing() -> None:
    global _SAID_MISSING
    if not _SAID_MISSING:
        _SAID_MISSING = True
        from imgcls.progress import console
        why = ("was not built at install (no C++ compiler?); install g++ and re-run `bash scripts/setup`"
               if not kernels.built() else "has no version for this CPU (it needs AVX2)")
        console.print(f"kNN: the compiled uint8 L1 kernel {why}. Using faiss, which is many times slower.",
                      highlight=False, soft_wrap=True)


_INT8_GEMM: bool | None = None


def _int8_gemm_works() -> bool:
    """Whether oneDNN's int8 GEMM exists here and gives exact results (checked once per process)."""
    global _INT8_GEMM
    if _INT8_GEMM is None:
        try:
            gen = torch.Generator().manual_seed(0)
            ref = torch.randint(0, 256, (64, 40), dtype=torch.uint8, generator=gen)
            queries = torch.randint(0, 256, (16, 40), dtype=torch.uint8, generator=gen)
            centred_q, centred_t = queries.float() - 128, ref.float() - 128
            expected = centred_q @ centred_t.T - centred_t.square().sum(1) / 2
            packed = torch.ops.onednn.qlinear_prepack((ref.to(torch.int16) - 128).to(torch.int8), [16, 40])
            got = torch.ops.onednn.qlinear_pointwise(queries, 1.0, 128, packed, torch.ones(64),
                                                     torch.zeros(64, dtype=torch.long), -centred_t.square().sum(1) / 2,
                                                     1.0, 0, torch.float32, "none", [], "")
            _INT8_GEMM = bool(torch.equal(got, expected))
        except (RuntimeError, AttributeError, NotImplementedError):
            _INT8_GEMM = False
    return _INT8_GEMM
