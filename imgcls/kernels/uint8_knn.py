"""The uint8 kNN kernel's plans, its ctypes binding and the search (see imgcls.kernels)."""

from __future__ import annotations

import ctypes
import importlib
import functools
from dataclasses import asdict, dataclass

import numpy as np
import torch

L1, L2 = 1, 2
METRIC_CODES = {"l1": L1, "l2": L2}
ISA_NAMES = {2: "AVX-512 (BW, VNNI)", 1: "AVX2", 0: "none"}
# L2 lanes hold ||q - t||^2 - ||q||^2 in int32: exact up to 33,025 bytes a row (65,025 x 33,025 < 2^31).
MAX_DIM = {"l2": 33_024, "l1": 2**24}
VECTOR_BYTES = {2: 64, 1: 32}
CHUNK = {"l1": 8, "l2": 4}      # bytes of a row per lane and step: psadbw sums 8, vpdpbusd 4
ORDERS = ("refs inner", "queries inner")
# Blocks to try, in bytes of the rows they hold: from well inside a small L2 to most of a 2 MiB
# L2 (reference tiles, swept by each query tile) or of any L2 (query tiles, swept by each
# reference tile). Which size suits a CPU is measured, not read from its cache sizes.
BLOCK_BYTES = {"refs inner": (128 << 10, 256 << 10, 512 << 10, 1 << 20, 1536 << 10),
               "queries inner": (64 << 10, 128 << 10, 256 << 10, 512 << 10, 1 << 20)}


@functools.cache
def _library() -> ctypes.CDLL | None:
    try:
        _knn = importlib.import_module("imgcls.kernels._knn")     # the compiled extension, a leaf
    except ImportError:
        return None
    lib = ctypes.CDLL(_knn.__file__)
    p, i64, c_int = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    lib.imgcls_knn_search.argtypes = [c_int, c_int, c_int, c_int, c_int, i64, p, i64, p, i64, i64, p, p, c_int, p, p,
                                      c_int]
    lib.imgcls_knn_search.restype = c_int
    lib.imgcls_knn_pack.argtypes = [p, i64, i64, i64, i64, i64, c_int, p, c_int]
    lib.imgcls_knn_pack.restype = None
    lib.imgcls_knn_stats.argtypes = [p, i64, i64, p, p, c_int]
    lib.imgcls_knn_stats.restype = None
    lib.imgcls_knn_bias.argtypes = [c_int, p, p, i64, i64, p]
    lib.imgcls_knn_bias.restype = None
    lib.imgcls_knn_shapes.argtypes = [c_int, c_int, p, c_int]
    lib.imgcls_knn_shapes.restype = c_int
    lib.imgcls_knn_isa.restype = c_int
    return lib


def built() -> bool:
    """Whether the kernel was compiled at install."""
    return _library() is not None


def isa_level() -> int:
    """2: AVX-512 BW + VNNI (L1 and L2); 1: AVX2 (L1 only); 0: no kernel for this CPU (or not built)."""
    lib = _library()
    return lib.imgcls_knn_isa() if lib is not None else 0


@functools.cache
def shapes(metric: str, level: int) -> tuple[tuple[int, int], ...]:
    """The register tiles (MR, NR) compiled for this metric at this instruction-set level."""
    lib = _library()
    if lib is None:
        return ()
    out = np.zeros(64, np.int32)
    count = lib.imgcls_knn_shapes(METRIC_CODES[metric], level, out.ctypes.data, 32)
    return tuple((int(out[2 * n]), int(out[2 * n + 1])) for n in range(min(count, 32)))


@dataclass(frozen=True)
class Plan:
    """How the kernel cuts one search: every plan gives the same neighbours, at its own speed.

    level: 2 (AVX-512) or 1 (AVX2); mr x nr: the register tile, mr queries by nr groups of
    references (a group: one vector's lanes, 16 references for L2 and 8 for L1 with AVX-512, 4
    for L1 with AVX2); order: "refs inner" (each query tile sweeps a block of `block` reference
    tiles) or "queries inner" (each reference tile sweeps a block of `block` query tiles).
    """

    level: int
    mr: int
    nr: int
    order: str
    block: int

    def lanes(self, metric: str) -> int:
        return VECTOR_BYTES[self.level] // CHUNK[metric]

    def steps(self, metric: str, dim: int) -> int:
        return -(-dim // CHUNK[metric])

    def ref_tile_bytes(self, metric: str, dim: int) -> int:
        return self.steps(metric, dim) * self.nr * VECTOR_BYTES[self.level]

    def query_tile_bytes(self, metric: str, dim: int) -> int:
        return self.steps(metric, dim) * self.mr * CHUNK[metric]

    def block_bytes(self, metric: str, dim: int) -> int:
        """The bytes of rows a block holds: reference tiles (refs inner) or query tiles (queries inner)."""
        tile = self.ref_tile_bytes(metric, dim) if self.order == "refs inner" else self.query_tile_bytes(metric, dim)
        return self.block * tile

    def describe(self, metric: str, dim: int) -> str:
        """e.g. "AVX-512 6x4 tiles (6 queries x 64 references), blocks of 5 reference tiles (245 KiB)"."""
        isa = ISA_NAMES[self.level].split(" (")[0]
        rows = "reference" if self.order == "refs inner" else "query"
        return (f"{isa} {self.mr}x{self.nr} tiles ({self.mr} queries x {self.nr * self.lanes(metric)} references), "
                f"blocks of {self.block} {rows} tiles ({self.block_bytes(metric, dim) >> 10} KiB)")

    def as_dict(self) -> dict:
        return asdict(self)


def plans(metric: str, dim: int, max_level: int = 2) -> list[Plan]:
    """Every plan this build and CPU can run for rows of dim bytes (none where there is no kernel)."""
    if dim > MAX_DIM[metric]:
        return []
    found = []
    for level in range(min(isa_level(), max_level), 0, -1):
        for mr, nr in shapes(metric, level):
            for order in ORDERS:
                tile = Plan(level, mr, nr, order, 1).block_bytes(metric, dim)
                for size in BLOCK_BYTES[order]:
                    plan = Plan(level, mr, nr, order, max(1, round(size / tile)))
                    if plan not in found:
                        found.append(plan)
    return found


@dataclass
class Prepared:
    """Reference rows packed for a plan's tiles (a search with another mr, order or block may share them)."""
    rows: np.ndarray
    bias: np.ndarray
    count: int
    dim: int
    level: int
    nr: int
    tiles: int


class UInt8KNN:
    """Exact k nearest uint8 reference rows of uint8 queries: `prepare(reference)`, then `search`."""

    def __init__(self, metric: str, plan: Plan):
        self.metric, self.code, self.plan = metric, METRIC_CODES[metric], plan
        self.isa = ISA_NAMES[plan.level]

    def prepare(self, reference: torch.Tensor) -> Prepared:
        """The reference rows packed in tiles of the plan's nr groups, and their biases."""
        rows = _flat(reference)
        lanes = self.plan.lanes(self.metric)
        group = self.plan.nr * lanes
        tiles = -(-len(rows) // group)
        packed = _pack(rows, group, CHUNK[self.metric], tiles, centre=False)
        squares, sums = _stats(rows) if self.metric == "l2" else (np.zeros(1, np.int64), np.zeros(1, np.int64))
        bias = np.empty(tiles * group, np.int32 if self.metric == "l2" else np.int64)
        _library().imgcls_knn_bias(self.code, squares.ctypes.data, sums.ctypes.data, len(rows), len(bias),
                                   bias.ctypes.data)
        return Prepared(packed, bias, len(rows), rows.shape[1], self.plan.level, self.plan.nr, tiles)

    def search(self, prepared: Prepared, queries: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(distances int64 (Q, k), indices int64 (Q, k)), nearest first; L2 distances squared."""
        plan = self.plan
        if (prepared.level, prepared.nr) != (plan.level, plan.nr):
            raise ValueError(f"rows packed for level {prepared.level}, nr {prepared.nr}; this plan is {plan}")
        k = min(k, prepared.count)
        rows = _flat(queries)
        packed = _pack(rows, plan.mr, CHUNK[self.metric], -(-len(rows) // plan.mr), centre=self.metric == "l2")
        norms = _stats(rows)[0] if self.metric == "l2" else np.zeros(1, np.int64)
        dist = np.empty((len(rows), k), np.int64)
        index = np.empty((len(rows), k), np.int64)
        code = _library().imgcls_knn_search(
            self.code, plan.level, plan.mr, plan.nr, ORDERS.index(plan.order), plan.block, packed.ctypes.data,
            len(rows), prepared.rows.ctypes.data, prepared.tiles, plan.steps(self.metric, prepared.dim),
            norms.ctypes.data, prepared.bias.ctypes.data, k, dist.ctypes.data, index.ctypes.data,
            torch.get_num_threads())
        if code != 0:
            raise RuntimeError(f"the uint8 kNN kernel refused the call ({self.metric}, {plan})")
        return dist, index


def _flat(rows: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(rows.reshape(len(rows), -1).numpy())


def _pack(rows: np.ndarray, tile_rows: int, chunk: int, tiles: int, centre: bool) -> np.ndarray:
    """Rows in tiles of tile_rows: per step of chunk bytes, each row's chunk in turn (zeros past the
    data); XOR 0x80 if centre (x - 128 as int8)."""
    steps = -(-rows.shape[1] // chunk)
    out = np.empty(tiles * steps * tile_rows * chunk, np.uint8)
    _library().imgcls_knn_pack(rows.ctypes.data, len(rows), rows.shape[1], tile_rows, chunk, tiles, int(centre),
                               out.ctypes.data, torch.get_num_threads())
    return out


def _stats(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's sum of squares and sum of bytes, exactly in int64."""
    squares, sums = np.empty(len(rows), np.int64), np.empty(len(rows), np.int64)
    _library().imgcls_knn_stats(rows.ctypes.data, len(rows), rows.shape[1], squares.ctypes.data, sums.ctypes.data,
                                torch.get_num_threads())
    return squares, sums
