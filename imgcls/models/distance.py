"""Exact nearest-neighbour search: the one distance kernel behind kNN (and later, search indexes).

`ExactSearch(reference, metric).search(queries, k)` returns the k nearest reference rows by L2
or L1 distance, exactly, sorted by (distance, index). It runs in two steps per chunk of queries:

1. candidates: a fast score matrix and a top-(k + margin) selection.
   - L2 on uint8 images: an int8 matrix multiply on oneDNN (VNNI/AMX) whose int32 sums are
     exact, of the pixels centred at 128 (|x - 128| <= 128, so every dot product is below 2^24
     and survives the float32 output exactly); ||t||^2 / 2 - q.t ranks like ||q - t||^2.
   - L2 on floats: the same ranking from one float32 GEMM (addmm).
   - L1: faiss's brute-force search (SIMD, OpenMP over queries).
2. exact re-rank: the candidates' distances are recomputed in float64/int64 from the data, so
   float rounding in step 1 can never reorder the answer.
"""

from __future__ import annotations

import numpy as np
import torch

from imgcls.errors import ImgclsError

METRICS = ("l2", "l1")
_MARGIN = 8          # extra candidates kept for the exact re-rank
_CHUNK = 1024        # queries per chunk: bounds memory at chunk x N float32 scores


class ExactSearch:
    def __init__(self, reference: torch.Tensor, metric: str = "l2"):
        if metric not in METRICS:
            raise ImgclsError(f"unknown metric {metric!r}; valid: {', '.join(METRICS)}")
        self.metric = metric
        self.reference = reference.reshape(len(reference), -1)
        self.is_uint8 = self.reference.dtype == torch.uint8
        self._candidates = {"l1": self._l1_candidates}.get(metric) or (
            self._l2_uint8_candidates if self.is_uint8 and _int8_gemm_works() else self._l2_float_candidates)
        self._prepared = None

    def __len__(self) -> int:
        return len(self.reference)

    def search(self, queries: torch.Tensor, k: int, progress=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(distances float64 (Q, k), indices int64 (Q, k)). L2 distances are Euclidean (not squared)."""
        queries = queries.reshape(len(queries), -1)
        if queries.shape[1] != self.reference.shape[1]:
            raise ImgclsError(f"queries have {queries.shape[1]} features, the reference has {self.reference.shape[1]}")
        k = min(k, len(self.reference))
        distances, indices = [], []
        for start in range(0, len(queries), _CHUNK):
            chunk = queries[start:start + _CHUNK]
            candidates = self._candidates(chunk, min(k + _MARGIN, len(self.reference)))
            d, i = self._rerank(chunk, candidates, k)
            distances.append(d)
            indices.append(i)
            if progress is not None:
                progress(len(chunk))
        return torch.cat(distances), torch.cat(indices)

    # -- step 1: candidates ------------------------------------------------------------------
    def _l2_uint8_candidates(self, chunk: torch.Tensor, m: int) -> torch.Tensor:
        if self._prepared is None:
            centred = (self.reference.to(torch.int16) - 128).to(torch.int8)
            half_norms = centred.to(torch.float32).square().sum(1) / 2
            packed = torch.ops.onednn.qlinear_prepack(centred, [_CHUNK, centred.shape[1]])
            self._prepared = (packed, -half_norms, torch.ones(len(centred)), torch.zeros(len(centred), dtype=torch.long))
        packed, neg_half_norms, scales, zero_points = self._prepared
        # q.(t - 128) with q read as (x - 128) through the zero point, minus ||t - 128||^2 / 2.
        scores = torch.ops.onednn.qlinear_pointwise(chunk.contiguous(), 1.0, 128, packed, scales, zero_points,
                                                    neg_half_norms, 1.0, 0, torch.float32, "none", [], "")
        return scores.topk(m, dim=1).indices

    def _l2_float_candidates(self, chunk: torch.Tensor, m: int) -> torch.Tensor:
        if self._prepared is None:
            ref = self.reference.to(torch.float32)
            self._prepared = (ref, ref.square().sum(1) / 2)
        ref, half_norms = self._prepared
        scores = torch.addmm(half_norms, chunk.to(torch.float32), ref.T, alpha=-1)
        return scores.topk(m, dim=1, largest=False).indices

    def _l1_candidates(self, chunk: torch.Tensor, m: int) -> torch.Tensor:
        import faiss
        if self._prepared is None:
            self._prepared = np.ascontiguousarray(self.reference.numpy(), dtype=np.float32)
        _, idx = faiss.knn(np.ascontiguousarray(chunk.numpy(), dtype=np.float32), self._prepared, m,
                           metric=faiss.METRIC_L1)
        return torch.from_numpy(idx)

    # -- step 2: exact re-rank ---------------------------------------------------------------
    def _rerank(self, chunk: torch.Tensor, candidates: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        wide = torch.int64 if self.is_uint8 else torch.float64
        diff = self.reference[candidates].to(wide) - chunk[:, None, :].to(wide)
        dist = diff.abs().sum(-1) if self.metric == "l1" else diff.square().sum(-1)
        # Sort by distance, then by index: candidates come sorted by index after this argsort pair.
        by_index = candidates.argsort(dim=1)
        candidates, dist = candidates.gather(1, by_index), dist.gather(1, by_index)
        order = dist.argsort(dim=1, stable=True)[:, :k]
        dist = dist.gather(1, order).to(torch.float64)
        return (dist.sqrt() if self.metric == "l2" else dist), candidates.gather(1, order)


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
