"""Tuning kNN by 5-fold cross-validation on Fashion-MNIST: imgcls vs scikit-learn's GridSearchCV.

The sweep is k in {1, 3, 5, 7, 9, 11, 15} x {L1, L2} over the same StratifiedKFold(5, shuffle=True,
random_state=0) folds of the training images; each side then refits the best combination on all
of them and predicts the 10,000 test images once. Wall time covers all of that, in one run; CPU time (all threads of the process) is printed too,
as it is less sensitive to other work on the machine.

imgcls searches the neighbours once per fold and metric for the largest k and derives every
smaller k from that sorted list; GridSearchCV refits and searches again for each k. scikit-learn's
brute-force L1 is very slow (about 187 s per 10,000 queries against 60,000 images), so the
training images are a stratified subset of --train N (default 10,000) so the bench finishes in
minutes; the output says so.

    .venv/bin/python bench/tune_knn.py [--train 10000] [--skip-sklearn]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("IMGCLS_PROGRESS", "0")

import sklearn  # noqa: E402
import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from sklearn.model_selection import GridSearchCV, StratifiedKFold  # noqa: E402
from sklearn.neighbors import KNeighborsClassifier  # noqa: E402

from imgcls.data import DataOptions, load_dataset  # noqa: E402
from imgcls.data.splits import stratified_split  # noqa: E402
from imgcls.models import create_model  # noqa: E402
from imgcls.tuning import knn_cross_validation, summarise  # noqa: E402

KS = [1, 3, 5, 7, 9, 11, 15]
FOLDS, SEED = 5, 0


def run_imgcls(train, test) -> dict:
    start, cpu = time.perf_counter(), time.process_time()
    summary = summarise(knn_cross_validation(train, KS, ["l1", "l2"], FOLDS, SEED))
    best = summary[0]
    model = create_model("knn", k=best["k"], metric=best["metric"]).fit(train)
    accuracy = model.score(test)
    return {"seconds": time.perf_counter() - start, "cpu": time.process_time() - cpu, "k": best["k"],
            "metric": best["metric"], "cv": best["mean"],
            "test": accuracy, "means": {(s["metric"], s["k"]): s["mean"] for s in summary}}


def run_sklearn(train, test) -> dict:
    X, y = train.images.reshape(len(train), -1).numpy(), train.labels.numpy()
    start, cpu = time.perf_counter(), time.process_time()
    search = GridSearchCV(KNeighborsClassifier(algorithm="brute"), {"n_neighbors": KS, "p": [1, 2]},
                          cv=StratifiedKFold(FOLDS, shuffle=True, random_state=SEED), n_jobs=1).fit(X, y)
    accuracy = search.score(test.images.reshape(len(test), -1).numpy(), test.labels.numpy())
    params = search.cv_results_["params"]
    means = {({1: "l1", 2: "l2"}[p["p"]], p["n_neighbors"]): m
             for p, m in zip(params, search.cv_results_["mean_test_score"])}
    return {"seconds": time.perf_counter() - start, "cpu": time.process_time() - cpu,
            "k": search.best_params_["n_neighbors"],
            "metric": {1: "l1", 2: "l2"}[search.best_params_["p"]], "cv": search.best_score_, "test": accuracy,
            "means": means}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=10_000, metavar="N",
                        help="stratified subset of the 60,000 training images to tune on (default: 10,000)")
    parser.add_argument("--skip-sklearn", action="store_true", help="time imgcls only")
    args = parser.parse_args()
    splits = load_dataset("fashion-mnist", DataOptions(val_fraction=0))
    train, test = splits.train, splits.test
    if args.train < len(train):
        _, kept = stratified_split(train.labels.numpy(), args.train / len(train), SEED)
        train = train.subset(kept)
    console = Console()
    subset = f"SUBSET of {len(train):,} of the {len(splits.train):,} training images (stratified, --train)" \
        if len(train) < len(splits.train) else f"all {len(train):,} training images"
    console.print(f"Fashion-MNIST, {FOLDS}-fold CV of k in {KS} x {{L1, L2}} on a {subset}; "
                  f"refit best, test on {len(test):,} images", highlight=False)
    console.print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), scikit-learn {sklearn.__version__}, "
                  f"{os.cpu_count()} CPUs", highlight=False)
    results = {"imgcls": run_imgcls(train, test)}
    console.print(f"imgcls done in {results['imgcls']['seconds']:.1f} s", highlight=False)
    if not args.skip_sklearn:
        results["scikit-learn GridSearchCV"] = run_sklearn(train, test)
    table = Table(title="tuning kNN: wall time of CV sweep + refit + test prediction", title_justify="left")
    for column in ("library", "wall time", "CPU time", "chosen k", "metric", "CV accuracy", "test accuracy"):
        table.add_column(column, justify="left" if column == "library" else "right")
    for name, r in results.items():
        table.add_row(name, f"{r['seconds']:.1f} s", f"{r['cpu']:.1f} s", str(r["k"]), r["metric"], f"{r['cv']:.4f}", f"{r['test']:.4f}")
    console.print(table)
    if len(results) == 2:
        ours, theirs = results.values()
        gaps = [abs(ours["means"][key] - theirs["means"][key]) for key in theirs["means"]]
        console.print(f"speed-up {theirs['seconds'] / ours['seconds']:.1f}x; CV mean accuracies of the 14 "
                      f"combinations differ by at most {max(gaps):.4f} (vote/distance tie-breaking)", highlight=False)


if __name__ == "__main__":
    main()
