"""Tuning kNN by 5-fold cross-validation on Fashion-MNIST: imgcls vs scikit-learn's GridSearchCV.

The sweep is k in {1, 3, 5, 7, 9, 11, 15} x {L1, L2} over the same StratifiedKFold(5, shuffle=True,
random_state=0) folds of the training images; each side then refits the best combination on all
of them and predicts the 10,000 test images once. Wall time covers all of that, in one run; CPU time (all threads of the process) is printed too,
as it is less sensitive to other work on the machine.

imgcls searches the neighbours once per fold and metric for the largest k and derives every
smaller k from that sorted list; GridSearchCV refits and searches again for each k. scikit-learn's
brute-force L1 is very slow (scipy's single-threaded cdist), so by default the training images
are a stratified subset of --train N (default 10,000) and the bench finishes in minutes; the
output says so. On all 60,000 images GridSearchCV would take hours: --sklearn one-fold times
one fit per metric and extrapolates (see estimate_sklearn), labelled as an estimate.

    .venv/bin/python bench/tune_knn.py [--train 10000] [--sklearn full|one-fold|skip]
    .venv/bin/python bench/tune_knn.py --train 60000 --sklearn one-fold    # the full set, in minutes
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
from machine import banner  # noqa: E402  (bench/machine.py: the CPU and its flags)

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


def estimate_sklearn(train, test, metric: str) -> dict:
    """GridSearchCV's wall time from one timed fit per metric, for sweeps too slow to run whole.

    Brute-force kNN computes every query-to-reference distance whatever k is, so each of the 70
    fits GridSearchCV makes (14 combinations x 5 folds) costs what one fold's fit and score with
    that metric costs; the refit on all images plus the test prediction is scaled by the number of
    distances it computes. The chosen combination is taken from imgcls's run (the CV accuracies
    agree up to tie-breaking)."""
    X, y = train.images.reshape(len(train), -1).numpy(), train.labels.numpy()
    fit_rows, val_rows = next(StratifiedKFold(FOLDS, shuffle=True, random_state=SEED).split(X, y))
    per_fit = {}
    for p, name in ((1, "l1"), (2, "l2")):
        start = time.perf_counter()
        KNeighborsClassifier(n_neighbors=1, p=p, algorithm="brute").fit(X[fit_rows], y[fit_rows]).score(
            X[val_rows], y[val_rows])
        per_fit[name] = time.perf_counter() - start
    refit = per_fit[metric] * (len(X) * len(test)) / (len(fit_rows) * len(val_rows))
    seconds = FOLDS * len(KS) * (per_fit["l1"] + per_fit["l2"]) + refit
    return {"seconds": seconds, "per_fit": per_fit}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=10_000, metavar="N",
                        help="stratified subset of the 60,000 training images to tune on (default: 10,000)")
    parser.add_argument("--sklearn", choices=["full", "one-fold", "skip"], default="full",
                        help="run GridSearchCV whole (default), or time one fit per metric and extrapolate "
                             "(the full sweep on 60,000 images takes about 4.5 hours on 2 cores), or skip it")
    args = parser.parse_args()
    print(banner())
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
    if args.sklearn == "one-fold":
        ours = results["imgcls"]
        estimate = estimate_sklearn(train, test, ours["metric"])
        console.print(f"scikit-learn GridSearchCV, ESTIMATED from one timed fit per metric on fold 1 "
                      f"(L1 {estimate['per_fit']['l1']:.1f} s, L2 {estimate['per_fit']['l2']:.1f} s per fit; "
                      f"70 fits + refit and test): {estimate['seconds']:.0f} s = {estimate['seconds'] / 3600:.2f} h, "
                      f"{estimate['seconds'] / ours['seconds']:.1f}x imgcls's measured time", highlight=False)
    if args.sklearn == "full":
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
