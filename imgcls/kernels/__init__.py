"""Compiled kernels: exact uint8 k-nearest-neighbour search (knn.cpp), built at install.

setup.py compiles knn.cpp with the machine's C++ compiler into the extension `_knn`; its
functions are plain C, called through ctypes (which releases the GIL). The kernel comes in
AVX-512 BW + VNNI (L1 and L2) and AVX2 (L1) versions. Where it was not built or the CPU has
neither, `knn_kernel(metric, reference)` is None and callers use their portable path.

How the kernel cuts the work is a `Plan`: the register tile (MR queries x NR groups of
references), the loop order and the block size. The fastest plan depends on the CPU (its
registers, load ports and cache sizes), so `knn_kernel` measures candidates on a slice of the
actual rows at first use and caches the winner with the other fast paths (see tuning.py).

Distances are exact integers whatever the plan: L1 is a sum of absolute differences, L2 the
squared Euclidean distance, and the k best per query come out ordered by (distance, index).
"""

from __future__ import annotations

import torch

from imgcls.kernels.tuning import tuned_plan
from imgcls.kernels.uint8_knn import (ISA_NAMES, MAX_DIM, METRIC_CODES, Plan, Prepared, UInt8KNN, built,
                                      isa_level, plans, shapes)

__all__ = ["ISA_NAMES", "MAX_DIM", "METRIC_CODES", "Plan", "Prepared", "UInt8KNN", "built", "isa_level",
           "knn_kernel", "plans", "shapes"]


def knn_kernel(metric: str, reference: torch.Tensor, max_level: int = 2) -> UInt8KNN | None:
    """The kernel for this metric with the plan measured fastest for rows like these on this
    CPU (measured at first use, then cached), or None where there is no kernel."""
    if not plans(metric, reference[0].numel(), max_level):
        return None
    return UInt8KNN(metric, tuned_plan(metric, reference, max_level))
