"""Compiled kernels: exact uint8 k-nearest-neighbour search (knn.cpp), built at install.

setup.py compiles knn.cpp with the machine's C++ compiler into the extension `_knn`; its
functions are plain C, called through ctypes (which releases the GIL). The kernel picks its
instruction set when called: AVX-512 BW + VNNI (L1 and L2) or AVX2 (L1). Where it was not built
or the CPU has neither, `knn_kernel(metric)` is None and callers use their portable path.

Distances are exact integers: L1 is a sum of absolute differences, L2 the squared Euclidean
distance, and the k best per query come out ordered by (distance, index).
"""

from __future__ import annotations

import ctypes
import functools

import numpy as np
import torch

L1, L2 = 1, 2
METRIC_CODES = {"l1": L1, "l2": L2}
ISA_NAMES = {2: "AVX-512 (BW, VNNI)", 1: "AVX2", 0: "none"}
MAX_DIM = 65_536          # L2's int32 dot products stay exact below this many bytes per row


@functools.cache
def _library() -> ctypes.CDLL | None:
    try:
        from imgcls.kernels import _knn
    except ImportError:
        return None
    lib = ctypes.CDLL(_knn.__file__)
    p, i64, c_int = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    lib.imgcls_knn_u8.argtypes = [p, i64, p, i64, i64, c_int, p, p, p, c_int, p, p, c_int, c_int]
    lib.imgcls_knn_u8.restype = c_int
    lib.imgcls_knn_pack.argtypes = [p, i64, i64, i64, i64, c_int, p, p, p]
    lib.imgcls_knn_pack.restype = None
    lib.imgcls_knn_isa.restype = c_int
    return lib


def built() -> bool:
    """Whether the kernel was compiled at install."""
    return _library() is not None


def isa_level() -> int:
    """2: AVX-512 BW + VNNI (L1 and L2); 1: AVX2 (L1 only); 0: no kernel for this CPU (or not built)."""
    lib = _library()
    return lib.imgcls_knn_isa() if lib is not None else 0


def knn_kernel(metric: str, dim: int, max_level: int = 2) -> UInt8KNN | None:
    """The kernel for this metric and row length on this CPU, or None where there is none."""
    level = min(isa_level(), max_level)
    if dim > MAX_DIM or level < (2 if metric == "l2" else 1):
        return None
    return UInt8KNN(metric, max_level=level)


class UInt8KNN:
    """Exact k nearest uint8 reference rows of uint8 queries: `prepare(reference)`, then `search`."""

    def __init__(self, metric: str, max_level: int = 2):
        self.metric, self.code, self.max_level = metric, METRIC_CODES[metric], max_level
        self.isa = ISA_NAMES[max_level]

    def prepare(self, reference: torch.Tensor) -> dict:
        """The reference rows padded to 64-byte rows (L2: centred on 128, as int8), and their norms."""
        stride = -(-reference[0].numel() // 64) * 64
        rows, norms, _ = _packed(reference, stride, centre=self.metric == "l2", norms=self.metric == "l2")
        return {"rows": rows, "count": len(reference), "stride": stride, "norms": norms}

    def search(self, prepared: dict, queries: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(distances int64 (Q, k), indices int64 (Q, k)), nearest first; L2 distances squared."""
        k = min(k, prepared["count"])
        padded, query_norms, query_sums = _packed(queries, prepared["stride"], centre=False,
                                                  norms=self.metric == "l2")
        dist = np.empty((len(queries), k), np.int64)
        index = np.empty((len(queries), k), np.int64)
        code = _library().imgcls_knn_u8(
            padded.ctypes.data, len(queries), prepared["rows"].ctypes.data, prepared["count"], prepared["stride"],
            self.code, query_norms.ctypes.data, query_sums.ctypes.data, prepared["norms"].ctypes.data, k,
            dist.ctypes.data, index.ctypes.data, torch.get_num_threads(), self.max_level)
        if code != 0:
            raise RuntimeError(f"the uint8 kNN kernel refused the call ({self.metric}, isa {self.isa})")
        return dist, index


def _packed(rows: torch.Tensor, stride: int, centre: bool, norms: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows zero-padded to `stride` bytes and to a multiple of 4 rows (the kernel's tile height),
    XOR 0x80 if centre; with norms, each row's sum of squares and sum (else one-element dummies)."""
    flat = np.ascontiguousarray(rows.reshape(len(rows), -1).numpy())
    out = np.empty((-(-len(flat) // 4) * 4, stride), np.uint8)
    sums = np.empty(len(out), np.int64) if norms else np.zeros(1, np.int64)
    squares = np.empty(len(out), np.int64) if norms else np.zeros(1, np.int64)
    _library().imgcls_knn_pack(flat.ctypes.data, len(flat), flat.shape[1], len(out), stride, int(centre),
                               out.ctypes.data, squares.ctypes.data if norms else None,
                               sums.ctypes.data if norms else None)
    return out, squares, sums
