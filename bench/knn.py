"""Exact kNN (k=5) on Fashion-MNIST: imgcls vs scikit-learn vs faiss, L2 and L1, on the CPU.

10,000 test queries against 60,000 training images (784 uint8 pixels each). For every library
and metric: fit and predict wall time (median over repeats; each repeat fits a fresh model, so
predict includes any lazy index preparation), queries per second, test accuracy, the time
ratios imgcls/faiss and sklearn/imgcls, and how often imgcls's predictions equal sklearn's.

The floor: the machine's int8 GEMM peak, measured in the same run with torch._int_mm on large
square matrices (median of repeats, before and after the searches, at torch's thread count),
and the time that peak needs for the search's 2 x queries x 60,000 x 784 operations. Every
search is shown as a multiple of that floor (the aim for imgcls: within 1.5x for L1 and L2), and
so is oneDNN's own int8 GEMM of the search's skinny shape (queries x 784 times 784 x 60,000, in
chunks of 2,048 queries, with nothing else: no distances, no k best).

scikit-learn's brute-force L1 is slow (minutes for 10,000 queries), so by default it is timed
on the first 2,000 queries and its time extrapolated linearly to 10,000; the table says so.

    .venv/bin/python bench/knn.py --json /tmp/knn_bench.json
    .venv/bin/python bench/knn.py --quick        # 2,000 queries, one repeat: a check in a minute
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

os.environ.setdefault("IMGCLS_PROGRESS", "0")

import faiss  # noqa: E402
import numpy as np  # noqa: E402
import sklearn  # noqa: E402
import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from sklearn.neighbors import KNeighborsClassifier  # noqa: E402
from threadpoolctl import threadpool_info  # noqa: E402

from imgcls import fastpath, kernels  # noqa: E402
from imgcls.data import DataOptions, load_dataset  # noqa: E402
from imgcls.models import create_model  # noqa: E402
from imgcls.models.distance import ExactSearch, _int8_gemm_works  # noqa: E402
from machine import banner  # noqa: E402  (bench/machine.py: the CPU and its flags)

K = 5
SK_DEFAULT_QUERIES = {"l2": 10_000, "l1": 2_000}


def timed(repeats: int, fit, predict) -> dict:
    """Run fit() then predict(fitted) `repeats` times; median times and the last predictions."""
    fit_times, predict_times = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        fitted = fit()
        fit_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        predictions = predict(fitted)
        predict_times.append(time.perf_counter() - start)
    return {"fit_s": statistics.median(fit_times), "predict_s": statistics.median(predict_times),
            "predict_all_s": predict_times, "predictions": np.asarray(predictions), "fitted": fitted}


def bench_imgcls(train, test, metric: str, repeats: int) -> dict:
    result = timed(repeats, lambda: create_model("knn", k=K, metric=metric).fit(train),
                   lambda model: model.predict(test.images))
    chosen = ExactSearch(train.images, metric)._chosen_engine()
    return result | {"library": "imgcls", "input": f"uint8 tensor; {chosen.name}", "engine": chosen.name,
                     "plan": getattr(chosen, "plan", None)}


def int8_peak(size: int, repeats: int) -> list[float]:
    """Operations per second of torch._int_mm on two size x size int8 matrices, per repeat."""
    run, ops = fastpath.int8_gemm_run(size)
    run()
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        rates.append(ops / (time.perf_counter() - start))
    return rates


def skinny_int8_gemm(train, test, repeats: int) -> float:
    """Median seconds of oneDNN's int8 GEMM (torch._int_mm) of the search's shape: the queries,
    2,048 at a time, against all the training rows, centred to int8; products only."""
    reference = torch.bitwise_xor(train.images.reshape(len(train), -1), 128).view(torch.int8).T.contiguous()
    queries = torch.bitwise_xor(test.images.reshape(len(test), -1), 128).view(torch.int8)
    chunks = queries.split(2048)
    torch._int_mm(chunks[0], reference)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for chunk in chunks:
            torch._int_mm(chunk.contiguous(), reference)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_sklearn(train, test, metric: str, repeats: int, n_queries: int, dtype: str) -> dict:
    x_train = train.images.reshape(len(train), -1).numpy()
    x_test = test.images[:n_queries].reshape(n_queries, -1).numpy()
    y_train = train.labels.numpy()
    p = {"l2": 2, "l1": 1}[metric]
    result = timed(repeats, lambda: KNeighborsClassifier(n_neighbors=K, algorithm="brute", p=p)
                   .fit(x_train.astype(dtype), y_train),
                   lambda model: model.predict(x_test.astype(dtype)))
    return result | {"library": "sklearn", "input": f"{dtype} array"}


def bench_faiss(train, test, metric: str, repeats: int) -> dict:
    x_train = train.images.reshape(len(train), -1).numpy()
    x_test = test.images.reshape(len(test), -1).numpy()
    y_train = train.labels.numpy()
    n_classes = train.num_classes

    def fit():
        d = x_train.shape[1]
        index = faiss.IndexFlatL2(d) if metric == "l2" else faiss.IndexFlat(d, faiss.METRIC_L1)
        index.add(x_train.astype(np.float32))
        return index

    def predict(index):
        _, neighbours = index.search(x_test.astype(np.float32), K)
        votes = (y_train[neighbours][:, :, None] == np.arange(n_classes)).sum(1)
        return votes.argmax(1)  # ties go to the lowest label, as in sklearn

    return timed(repeats, fit, predict) | {"library": "faiss", "input": "float32 array"}


def vote_tied(model, images) -> np.ndarray:
    """Queries whose k=5 vote (over imgcls's exact neighbours) has two or more top classes."""
    _, neighbours = model.kneighbors(images)
    counts = np.stack([np.bincount(row, minlength=len(model.class_names_))
                       for row in model.labels_.numpy()[neighbours]])
    return (counts == counts.max(1, keepdims=True)).sum(1) > 1


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg()) + " (1, 5, 15 min)"


def environment() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    flags = next((line.split(":", 1)[1].split() for line in open("/proc/cpuinfo") if line.startswith("flags")), [])
    return {"cpu": cpu, "logical_cpus": os.cpu_count(),
            "cpu_features": [f for f in ("avx2", "avx512f", "avx512_vnni", "amx_int8") if f in flags],
            "python": platform.python_version(), "torch": torch.__version__, "faiss": faiss.__version__,
            "sklearn": sklearn.__version__, "numpy": np.__version__,
            "torch_threads": torch.get_num_threads(), "faiss_omp_threads": faiss.omp_get_max_threads(),
            "threadpools": sorted({f"{p['prefix']}={p['num_threads']}" for p in threadpool_info()}),
            "imgcls_l2_uint8_int8_gemm": _int8_gemm_works(), "imgcls_kernel_built": kernels.built(),
            "imgcls_kernel_isa": kernels.ISA_NAMES[kernels.isa_level()]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of imgcls and faiss (median; default 3)")
    parser.add_argument("--sk-repeats", type=int, default=1, help="timed runs of sklearn (default 1)")
    parser.add_argument("--sk-queries", type=int, default=None, metavar="N",
                        help="time sklearn on the first N test queries and extrapolate linearly "
                             "(default: all 10000 for L2, 2000 for L1)")
    parser.add_argument("--sk-dtype", choices=["float32", "float64", "uint8"], default="float32",
                        help="array dtype given to sklearn (default float32; uint8 is ~3x slower, "
                             "as sklearn then falls back to float64 pairwise distances)")
    parser.add_argument("--metrics", nargs="+", choices=["l2", "l1"], default=["l2", "l1"])
    parser.add_argument("--queries", type=int, default=10_000, help="test queries (default all 10000)")
    parser.add_argument("--peak-size", type=int, default=4096, help="side of the square int8 GEMM that measures "
                        "the peak (default 4096)")
    parser.add_argument("--peak-repeats", type=int, default=5, help="timed int8 GEMMs before and after the searches")
    parser.add_argument("--quick", action="store_true", help="2000 queries, one repeat, sklearn on 500: a fast check")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON here")
    args = parser.parse_args()
    if args.quick:
        args.queries, args.repeats, args.sk_queries = min(args.queries, 2000), 1, args.sk_queries or 500

    console = Console(width=160)
    env = environment()
    console.print(banner())
    console.print(f"torch {env['torch']} ({env['torch_threads']} threads), faiss {env['faiss']} "
                  f"({env['faiss_omp_threads']} OpenMP threads), sklearn {env['sklearn']}, numpy {env['numpy']}")
    console.print(f"thread pools: {', '.join(env['threadpools'])}; "
                  f"imgcls uint8 kernel: built {env['imgcls_kernel_built']}, {env['imgcls_kernel_isa']}; "
                  f"oneDNN int8 GEMM exact: {env['imgcls_l2_uint8_int8_gemm']}")

    data = load_dataset("fashion-mnist", DataOptions(val_fraction=0))
    train, test = data.train, data.test
    if args.queries < len(test):
        test = type(test)(test.images[:args.queries], test.labels[:args.queries], test.class_names)
    y_test = test.labels.numpy()
    console.print(f"Fashion-MNIST: {len(train)} training images, {len(test)} queries, "
                  f"{train.images[0].numel()} uint8 features, k={K}")
    console.print(f"load average before: {load()}")
    peak_rates = int8_peak(args.peak_size, args.peak_repeats)
    skinny_s = skinny_int8_gemm(train, test, args.repeats)

    rows, notes = [], []
    for metric in args.metrics:
        n_sk = min(args.sk_queries or SK_DEFAULT_QUERIES[metric], len(test))
        console.print(f"{metric.upper()}: imgcls ...", end=" ")
        ours = bench_imgcls(train, test, metric, args.repeats)
        console.print("faiss ...", end=" ")
        theirs = bench_faiss(train, test, metric, args.repeats)
        console.print(f"sklearn ({n_sk} queries) ...")
        sk = bench_sklearn(train, test, metric, args.sk_repeats, n_sk, args.sk_dtype)

        sk["extrapolated_from"] = n_sk if n_sk < len(test) else None
        sk["measured_predict_s"] = sk["predict_s"]
        sk["predict_s"] *= len(test) / n_sk
        tied = vote_tied(ours["fitted"], test.images[:n_sk])
        same = ours["predictions"][:n_sk] == sk["predictions"]
        sk["agreement"] = {"queries": n_sk, "agree": float(same.mean()), "vote_tied": int(tied.sum()),
                           "agree_excluding_vote_tied": float(same[~tied].mean())}
        ours["ratio"] = ("imgcls/faiss", ours["predict_s"] / theirs["predict_s"])
        sk["ratio"] = ("sklearn/imgcls", sk["predict_s"] / ours["predict_s"])
        for r in (ours, theirs, sk):
            labels = y_test[:len(r["predictions"])]
            r |= {"metric": metric, "queries_timed": len(r["predictions"]),
                  "accuracy": float((r["predictions"] == labels).mean()), "qps": len(test) / r["predict_s"]}
            ratio = f"{r['ratio'][0]} {r['ratio'][1]:.2f}x" if "ratio" in r else ""
            agreement = ""
            if "agreement" in r:
                a = r["agreement"]
                agreement = (f"{a['agree']:.2%} of {a['queries']}; {a['agree_excluding_vote_tied']:.2%} "
                             f"excl. {a['vote_tied']} vote-tied")
            star = " *" if r.get("extrapolated_from") else ""
            accuracy = f"{r['accuracy']:.2%}" + (f" (first {r['queries_timed']})" if star else "")
            r["cells"] = [metric.upper(), r["library"], r["input"], f"{r['fit_s']:.3f}",
                          f"{r['predict_s']:.2f}{star}", f"{r['qps']:,.0f}{star}", accuracy, ratio, agreement]
            rows.append({key: value for key, value in r.items() if key not in ("predictions", "fitted")})
        if sk["extrapolated_from"]:
            notes.append(f"* sklearn {metric.upper()}: timed on the first {n_sk} queries, extrapolated linearly "
                         f"x{len(test) / n_sk:g} to {len(test)} (measured {sk['measured_predict_s']:.2f} s)")

    peak_rates += int8_peak(args.peak_size, args.peak_repeats)
    peak = statistics.median(peak_rates)
    ops = 2.0 * len(test) * len(train) * train.images[0].numel()
    floor_s = ops / peak
    table = Table(title=f"Exact kNN, k={K}: predict wall time for {len(test)} queries (median)")
    for column in ("metric", "library", "input", "fit s", "predict s", "queries/s", "accuracy", "ratio",
                   "agrees with imgcls", "x floor"):
        table.add_column(column, justify="left" if column in ("metric", "library", "input") else "right")
    for n, r in enumerate(rows):
        r["x_floor"] = r["predict_s"] / floor_s
        table.add_row(*r.pop("cells"), f"{r['x_floor']:.2f}x", end_section=n % 3 == 2)
    console.print(table)
    for note in notes:
        console.print(note)
    console.print(f"int8 GEMM peak: {peak / 1e9:,.0f} GOP/s (torch._int_mm, {args.peak_size} x {args.peak_size}, "
                  f"{torch.get_num_threads()} threads; median of {len(peak_rates)}, half before and half after the "
                  f"searches: {min(peak_rates) / 1e9:,.0f} to {max(peak_rates) / 1e9:,.0f})")
    console.print(f"floor: {ops / 1e9:,.0f} G operations (2 x {len(test)} x {len(train)} x "
                  f"{train.images[0].numel()}) at that peak take {floor_s:.3f} s")
    console.print(f"oneDNN's int8 GEMM of the search's skinny shape ({len(test)} x {train.images[0].numel()} times "
                  f"{train.images[0].numel()} x {len(train)}, 2048 queries at a time, products only): "
                  f"{skinny_s:.3f} s, {skinny_s / floor_s:.2f}x the floor")
    for r in rows:
        if r["library"] == "imgcls":
            aim = "within" if r["x_floor"] <= 1.5 else "OUTSIDE"
            console.print(f"imgcls {r['metric'].upper()}: {r['predict_s']:.3f} s = {r['x_floor']:.2f}x the floor "
                          f"({aim} the 1.5x aim); {r['engine']}" + (f", {r['plan']}" if r.get("plan") else ""))
    console.print(f"load average after: {load()}")
    console.print("Vote ties: imgcls picks the tied class of the nearest neighbour; sklearn and the faiss vote "
                  "here pick the lowest label.\nimgcls fit only stores the data; its search index is built "
                  "lazily inside predict (each repeat refits).")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": env, "args": vars(args), "k": K, "n_train": len(train),
                       "n_queries": len(test), "int8_peak_ops": peak, "int8_peak_samples": peak_rates,
                       "floor_s": floor_s, "skinny_int8_gemm_s": skinny_s, "results": rows}, f, indent=2)
        console.print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
