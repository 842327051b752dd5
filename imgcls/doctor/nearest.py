"""Exact nearest neighbours of many vectors among themselves, a block at a time: the doctor's
near-duplicate search on datasets larger than memory.

A streamed dataset's vectors (pixels, or a network's embeddings) are written to a file as its
images are decoded (`Rows` with a folder), then searched one block of rows against every other
block with ExactSearch, keeping each row's k best on the fly. ExactSearch's distances are exact
and its answers sorted by (distance, index), so merging the blocks' answers in that order gives
exactly what one search over all the rows gives; only a block of rows, not the dataset, is ever
in memory (with the searcher's own copy of it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from imgcls.models.distance import ExactSearch

BLOCK_BYTES = 256 * 2**20      # rows of a spilled file searched at once


class Rows:
    """Vectors of one width appended a batch at a time: in memory, or (with a folder) in a file
    there, read back a block at a time."""

    def __init__(self, folder: Path | None = None, block_bytes: int | None = None):
        self.path = Path(folder) / "rows.bin" if folder is not None else None
        self.block_bytes = block_bytes or BLOCK_BYTES
        self._parts: list[torch.Tensor] = []
        self._count, self._width, self._dtype = 0, None, None

    def __len__(self) -> int:
        return self._count

    def append(self, rows: torch.Tensor) -> None:
        rows = rows.reshape(len(rows), -1).contiguous()
        if not len(rows):
            return
        self._width, self._dtype = rows.shape[1], rows.dtype
        if self.path is None:
            self._parts.append(rows)
        else:
            with open(self.path, "ab") as f:
                f.write(rows.numpy().tobytes())
        self._count += len(rows)

    @property
    def block_rows(self) -> int:
        """Rows searched at once: all of them in memory; as many as block_bytes hold in a file."""
        if self.path is None or not self._count:
            return max(self._count, 1)
        return max(1, self.block_bytes // (self._width * self._dtype.itemsize))

    def block(self, start: int, stop: int) -> torch.Tensor:
        if self.path is None:
            if len(self._parts) > 1:
                self._parts = [torch.cat(self._parts)]
            return self._parts[0][start:stop]
        dtype = torch.empty(0, dtype=self._dtype).numpy().dtype
        count = (min(stop, self._count) - start) * self._width
        rows = np.fromfile(self.path, dtype=dtype, count=count, offset=start * self._width * dtype.itemsize)
        return torch.from_numpy(rows.reshape(-1, self._width))


def nearest_among(rows: Rows | torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(distances float64 (n, k), indices int64 (n, k)) of each row's k nearest rows (itself
    included), L2, nearest first, ties by index: ExactSearch(rows).search(rows, k), block by block."""
    if isinstance(rows, torch.Tensor):
        whole = Rows()
        whole.append(rows)
        rows = whole
    n, size = len(rows), rows.block_rows
    k = min(k, n)
    if size >= n:
        everything = rows.block(0, n)
        return ExactSearch(everything, "l2").search(everything, k, progress=None)
    best_d = torch.full((n, k), float("inf"), dtype=torch.float64)
    best_i = torch.full((n, k), n, dtype=torch.int64)       # n: after every real index in a tie
    for ref_start in range(0, n, size):
        reference = rows.block(ref_start, ref_start + size)
        search = ExactSearch(reference, "l2")
        for start in range(0, n, size):
            queries = reference if start == ref_start else rows.block(start, start + size)
            d, i = search.search(queries, min(k, len(reference)), progress=None)
            stop = start + len(queries)
            best_d[start:stop], best_i[start:stop] = _merge(best_d[start:stop], best_i[start:stop], d,
                                                             i + ref_start, k)
    return best_d, best_i


def _merge(d1: torch.Tensor, i1: torch.Tensor, d2: torch.Tensor, i2: torch.Tensor, k: int):
    """The k smallest of two answers by (distance, index), as one search over both would order them."""
    d, i = torch.cat([d1, d2], 1), torch.cat([i1, i2], 1)
    by_index = i.argsort(dim=1, stable=True)
    d, i = d.gather(1, by_index), i.gather(1, by_index)
    by_distance = d.argsort(dim=1, stable=True)[:, :k]
    return d.gather(1, by_distance), i.gather(1, by_distance)
