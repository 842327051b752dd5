"""Approximate (HNSW) against exact similarity search on Fashion-MNIST, in one run.

The 60,000 training images are indexed as raw pixels (784 dimensions, L2); the 10,000 test
images are the queries. Exact search (imgcls's int8-GEMM scan, and faiss's IndexFlatL2 as a
reference) gives the true 10 nearest neighbours; each HNSW setting (M links per node,
ef_search candidates per query) is timed against them: build time, queries per second over
all 10,000 queries, and recall@10 (the share of the true 10 nearest that it returns). Every
search goes through `ImageIndex.nearest`, the path `imgcls search` takes (HNSW answers are
re-ranked by exact distance there); the last column is faiss's graph search alone, without that
re-rank. Medians of --repeats timed passes. OMP_NUM_THREADS=1 measures one core.

    .venv/bin/python bench/ann.py [--train 60000] [--queries 10000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("IMGCLS_PROGRESS", "0")

import faiss  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from imgcls.data import DataOptions, load_dataset  # noqa: E402
from imgcls.similarity import ImageIndex  # noqa: E402
from machine import banner  # noqa: E402  (bench/machine.py: the CPU and its flags)

K = 10
SETTINGS = [(16, [16, 32, 64, 128]), (32, [16, 32, 64, 128, 256])]
EF_CONSTRUCTION = 200


def timed(fn, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def recall(found: torch.Tensor, truth: torch.Tensor) -> float:
    hits = sum(len(set(f) & set(t)) for f, t in zip(found.tolist(), truth.tolist()))
    return hits / truth.numel()


def build(kind: str, train, m: int = 32) -> tuple[float, ImageIndex]:
    start = time.perf_counter()
    index = ImageIndex("pixels", kind, m=m, ef_construction=EF_CONSTRUCTION)
    index.add(train, [str(i) for i in range(len(train))], "train")
    return time.perf_counter() - start, index


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=60_000)
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(banner())
    splits = load_dataset("fashion-mnist", DataOptions(val_fraction=0))
    train, test = splits.train.subset(range(min(args.train, len(splits.train)))), splits.test.images[:args.queries]
    console = Console(width=150)
    console.print(f"Fashion-MNIST pixels: {len(train):,} indexed, {len(test):,} queries, k={K}; "
                  f"torch {torch.__version__} ({torch.get_num_threads()} threads), faiss {faiss.__version__} "
                  f"({faiss.omp_get_max_threads()} threads), "
                  f"{os.cpu_count()} CPUs; medians of {args.repeats}", highlight=False)

    table = Table(title=f"recall@{K} against exact search, and speed", title_justify="left")
    for column in ("search", "build", "queries/s", "speed-up vs exact", f"recall@{K}", "faiss search alone"):
        table.add_column(column, justify="left" if column == "search" else "right")

    build_s, exact = build("exact", train)
    exact_s, (_, truth) = timed(lambda: exact.nearest(test, K), args.repeats)
    table.add_row("exact (imgcls, int8 GEMM + exact re-rank)", f"{build_s:.1f} s", f"{len(test) / exact_s:,.0f}",
                  "1.0x", "1.000", "")

    flat = faiss.IndexFlatL2(train.images[0].numel())
    flat.add(np.ascontiguousarray(train.images.reshape(len(train), -1).numpy(), dtype=np.float32))
    queries32 = np.ascontiguousarray(test.reshape(len(test), -1).numpy(), dtype=np.float32)
    flat_s, (_, flat_ids) = timed(lambda: flat.search(queries32, K), args.repeats)
    table.add_row("exact (faiss IndexFlatL2, float32)", "-", f"{len(test) / flat_s:,.0f}",
                  f"{exact_s / flat_s:.1f}x", f"{recall(torch.from_numpy(flat_ids), truth):.3f}", "")
    table.add_section()

    for m, efs in SETTINGS:
        build_s, hnsw = build("hnsw", train, m)
        for ef in efs:
            hnsw.ef_search = ef
            seconds, (_, found) = timed(lambda: hnsw.nearest(test, K), args.repeats)
            alone_s, _ = timed(lambda: hnsw._search.search(queries32, K), args.repeats)   # efSearch set above
            table.add_row(f"HNSW M={m}, ef_search={ef}", f"{build_s:.1f} s", f"{len(test) / seconds:,.0f}",
                          f"{exact_s / seconds:.1f}x", f"{recall(found, truth):.3f}", f"{len(test) / alone_s:,.0f}/s")
        table.add_section()
    console.print(table)
    console.print(f"HNSW built with ef_construction={EF_CONSTRUCTION}; recall counts shared neighbours "
                  "(ties at equal distance may differ)", highlight=False)


if __name__ == "__main__":
    main()
