"""Choose kNN's k, distance and vote weights by stratified k-fold cross-validation, then test once.

The k sweep is nearly free: per fold and metric the neighbours are searched once for the largest k,
and every smaller k votes over a prefix of that sorted list, which is exactly what a separate fit
with that k would find (the search is exact and sorted by distance, then index).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from imgcls.data.dataset import DatasetSplits, ImageDataset
from imgcls.data.splits import stratified_kfold
from imgcls.errors import ImgclsError
from imgcls.fit_and_evaluate import finish_run
from imgcls.models.distance import METRICS, ExactSearch
from imgcls.models.knn import WEIGHTS, decide, vote
from imgcls.models.registry import create_model
from imgcls.run_folder import RunFolder

GRID_KEYS = ("k", "metric", "weights")
DEFAULT_GRID = {"k": [1, 3, 5, 7, 9, 11, 15], "metric": ["l1", "l2"], "weights": ["uniform"]}


def parse_grid(specs: list[str]) -> dict[str, list]:
    """["k=1,3,5", "metric=l1,l2"] -> {"k": [1, 3, 5], "metric": [...], "weights": ["uniform"]}; keys not
    given keep DEFAULT_GRID's values. Unknown keys and values are errors that list the valid ones."""
    grid, given = dict(DEFAULT_GRID), set()
    for spec in specs:
        key, sep, text = spec.partition("=")
        key = key.strip()
        if key not in GRID_KEYS:
            raise ImgclsError(f"unknown grid key {key!r} in --grid {spec!r}; valid: {', '.join(GRID_KEYS)}")
        if not sep or not text.strip():
            raise ImgclsError(f"--grid {spec!r}: expected {key}=VALUE[,VALUE...]")
        if key in given:
            raise ImgclsError(f"grid key {key!r} given twice")
        given.add(key)
        values = [v.strip() for v in text.split(",") if v.strip()]
        if key == "k":
            if not all(v.isdigit() and int(v) >= 1 for v in values):
                raise ImgclsError(f"--grid {spec!r}: k must be positive whole numbers")
            values = sorted(set(int(v) for v in values))
        else:
            valid = METRICS if key == "metric" else WEIGHTS
            bad = [v for v in values if v not in valid]
            if bad:
                raise ImgclsError(f"unknown {key} {bad[0]!r}; valid: {', '.join(valid)}")
            values = list(dict.fromkeys(values))
        grid[key] = values
    return grid


def knn_cross_validation(data: ImageDataset, ks: list[int], metrics: list[str], folds: int, seed: int,
                         weights: list[str] = ("uniform",)) -> list[dict]:
    """Validation accuracy of every (metric, weights, k) on each of `folds` stratified folds of data.

    Rows {metric, weights, k, fold, accuracy}. The folds are sklearn's StratifiedKFold(folds,
    shuffle=True, random_state=seed), so they match scikit-learn's cross_val_score on the same data.
    """
    flat = data.images.reshape(len(data), -1)
    k_max, rows = max(ks), []
    for fold, (train_idx, val_idx) in enumerate(stratified_kfold(data.labels.numpy(), folds, seed)):
        train_labels, val_labels = data.labels[train_idx], data.labels[val_idx]
        for metric in metrics:
            distances, indices = ExactSearch(flat[train_idx], metric).search(flat[val_idx], k_max)
            neighbour_labels = train_labels[indices]
            for weighting in weights:
                for k in ks:
                    votes, first_rank = vote(distances[:, :k], neighbour_labels[:, :k], data.num_classes, weighting)
                    accuracy = (decide(votes, first_rank) == val_labels).double().mean().item()
                    rows.append({"metric": metric, "weights": weighting, "k": k, "fold": fold, "accuracy": accuracy})
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    """Per (metric, weights, k): mean and std (population, as numpy) of the fold accuracies, best first.
    Equal means keep the grid's order."""
    groups: dict[tuple, list[float]] = {}
    for row in rows:
        groups.setdefault((row["metric"], row.get("weights", "uniform"), row["k"]), []).append(row["accuracy"])
    summary = [{"metric": metric, "weights": weighting, "k": k, "mean": float(np.mean(acc)),
                "std": float(np.std(acc)), "folds": len(acc)} for (metric, weighting, k), acc in groups.items()]
    return sorted(summary, key=lambda s: -s["mean"])


def plot_cv(rows: list[dict], path: str | Path) -> Path:
    """Accuracy against k: each fold as a point, the mean as a line with +-1 std error bars, per metric."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    several_weights = len({r.get("weights", "uniform") for r in rows}) > 1
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for (metric, weighting), colour in zip(dict.fromkeys((r["metric"], r.get("weights", "uniform")) for r in rows),
                                           plt.rcParams["axes.prop_cycle"].by_key()["color"] * 10):
        mine = [r for r in rows if r["metric"] == metric and r.get("weights", "uniform") == weighting]
        ax.scatter([r["k"] for r in mine], [r["accuracy"] for r in mine], color=colour, alpha=0.45, s=14)
        stats = sorted((s["k"], s["mean"], s["std"]) for s in summarise(mine))
        ks, means, stds = zip(*stats)
        ax.errorbar(ks, means, yerr=stds, color=colour, capsize=3, marker="o", markersize=4,
                    label=f"{metric}, {weighting}" if several_weights else metric)
    ax.set_xlabel("k")
    ax.set_ylabel("validation accuracy")
    ax.set_title(f"{max(r['fold'] for r in rows) + 1}-fold cross-validation of kNN")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def print_cv_table(summary: list[dict], console) -> None:
    from rich.table import Table
    table = Table(title=f"cross-validation, {summary[0]['folds']} folds (best first)", title_justify="left")
    for column in ("metric", "weights", "k", "val accuracy (mean ± std)"):
        table.add_column(column, justify="right" if column != "metric" else "left")
    for i, s in enumerate(summary):
        style = "bold green" if i == 0 else None
        table.add_row(s["metric"], s["weights"], str(s["k"]), f"{s['mean']:.2%} ± {s['std']:.2%}", style=style)
    console.print(table)


def tune_knn(splits: DatasetSplits, grid: dict[str, list], folds: int, seed: int, out: str | Path,
             command: str | None = None) -> dict:
    """Cross-validate the grid on train+val, refit the best on train+val, evaluate once on test, and
    write cv_results.json, cv.png, model.safetensors and the report (with the CV table) into out."""
    from imgcls.progress import console, stdout
    splits.require_single_label("tune (cross-validated accuracy)")
    run = RunFolder(out).make()
    # The validation split is not needed when cross-validating: its images join the folds.
    development = splits.train.concat(splits.val) if splits.val is not None and len(splits.val) else splits.train
    console.print(f"tuning [bold]knn[/] on {splits.name}: {folds}-fold cross-validation on {len(development):,} "
                  f"train+val images; test split ({len(splits.test):,}) held out")
    start = time.perf_counter()
    rows = knn_cross_validation(development, grid["k"], grid["metric"], folds, seed, grid["weights"])
    cv_seconds = time.perf_counter() - start
    summary = summarise(rows)
    best = summary[0]
    params = {"k": best["k"], "metric": best["metric"], "weights": best["weights"]}
    tuning = {"grid": grid, "folds": folds, "seed": seed, "cv_images": len(development), "best": params,
              "best_cv_accuracy": best["mean"], "best_cv_std": best["std"], "summary": summary, "rows": rows}
    run.write_json(run.cv_results, tuning)
    plot_cv(rows, run.cv_plot)
    print_cv_table(summary, stdout)

    model = create_model("knn", **params)
    start = time.perf_counter()
    model.fit(development)
    fit_seconds = time.perf_counter() - start
    result = finish_run(model, "knn", splits, run.path, command=command,
                        title=f"knn (k={best['k']}, {best['metric']}, chosen by {folds}-fold CV) on {splits.name}",
                        extra_metrics={"cv_accuracy": best["mean"]},
                        timings={"cv_seconds": cv_seconds, "fit_seconds": fit_seconds},
                        sizes={**splits.summary(), "refit (train+val)": len(development)},
                        config={"tuning": {k: v for k, v in tuning.items() if k != "rows"}},
                        figures={"Cross-validation: accuracy against k (points: folds; bars: ±1 std)": run.cv_plot},
                        report={"tuning": tuning})
    return {"best": params, "summary": summary, "test_accuracy": result.metrics["accuracy"],
            "test_evaluations": result.test_evaluations, "model_path": result.model_path,
            "report_paths": result.report_paths}
