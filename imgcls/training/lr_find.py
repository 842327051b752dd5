"""Learning-rate range test (Smith 2015, as in fastai's lr_find): raise the learning rate
exponentially over a few hundred steps, record the loss, and suggest the rate where the loss
falls fastest."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch

from imgcls.data.dataset import ImageDataset
from imgcls.data.splits import balanced_order
from imgcls.errors import ImgclsError
from imgcls.progress import progress_bar
from imgcls.run_folder import RunFolder
from imgcls.training.trainer import Trainer


def lr_find(model, data: ImageDataset, out: str | Path, *, steps: int = 100, min_lr: float = 1e-6,
            max_lr: float = 10.0, about: dict | None = None) -> dict:
    """Run the test for a neural classifier on data; write lr_find.png and lr_find.json into out.

    about (the model's and the dataset's names) joins lr_find.json, so that a run of the same model
    on the same dataset can compare its learning rate with the advice (imgcls.evaluation.sanity)."""
    result = {**(about or {}), **range_test(model, data, steps=steps, min_lr=min_lr, max_lr=max_lr)}
    write_range_test(result, out)
    return result


def range_test(model, data: ImageDataset, *, steps: int = 100, min_lr: float = 1e-6, max_lr: float = 10.0,
               show_progress: bool = True) -> dict:
    """The test itself, writing nothing: {"lrs", "losses", "suggested_lr", "step_seconds"}, where
    step_seconds is the median time of one training step at the model's batch size (the first,
    which warms up, left out)."""
    if not 0 < min_lr < max_lr or steps < 10:
        raise ImgclsError("lr-find needs 0 < min-lr < max-lr and at least 10 steps")
    cfg = model.training_config()
    trainer = Trainer(model.network_for(data), cfg)
    trainer.setup(data)        # with --balance weights, the loss is weighted as in training
    images, labels = data.images.to(trainer.device), data.labels.to(trainer.device)
    gen = torch.Generator().manual_seed(cfg.seed)
    trainer.net.train()
    lrs, losses, seconds, smoothed, best = [], [], [], 0.0, math.inf
    with progress_bar(steps if show_progress else 0, "lr-find") as advance:
        for i in range(steps):
            lr = min_lr * (max_lr / min_lr) ** (i / (steps - 1))
            start = time.perf_counter()
            batch = _draw(data.labels, cfg, gen).to(trainer.device)
            loss, _ = trainer.step(*trainer.training_batch(images[batch], labels[batch], gen), lr)
            seconds.append(time.perf_counter() - start)
            smoothed = 0.9 * smoothed + 0.1 * loss
            value = smoothed / (1 - 0.9 ** (i + 1))     # bias-corrected running mean
            lrs.append(lr)
            losses.append(value)
            best = min(best, value)
            advance()
            if not math.isfinite(value) or value > 4 * best:
                break                                    # diverged: the rest says nothing
    return {"lrs": lrs, "losses": losses, "suggested_lr": suggest(lrs, losses),
            "step_seconds": float(np.median(seconds[1:] or seconds))}


def write_range_test(result: dict, out: str | Path) -> None:
    """lr_find.json and lr_find.png (loss against learning rate, the suggestion marked) in out."""
    run = RunFolder(out)
    run.write_json(run.lr_find_json, result)
    _plot(result, run.lr_find_plot)


def _draw(labels: torch.Tensor, cfg, gen: torch.Generator) -> torch.Tensor:
    """A random batch; with --balance sampler, every class equally likely, as in training."""
    if cfg.balance != "sampler":
        return torch.randint(0, len(labels), (cfg.batch_size,), generator=gen)
    return balanced_order(labels, gen, cfg.batch_size)


def suggest(lrs: list[float], losses: list[float]) -> float:
    """A tenth of the rate at the lowest loss (Smith's rule), or, where larger, the rate halfway
    along the longest descent of the loss (fastai's "valley": the longest run of rates, in
    increasing order, over which the loss keeps falling, a longest decreasing subsequence). The
    steepest single slope, the older rule, is at the mercy of one noisy step near the start, where
    the loss has not begun to move: it once chose 1e-5, the range's floor, for a VGG whose loss
    fell fastest near 1e-1."""
    values = np.asarray(losses, dtype=np.float64)
    tenth = float(lrs[int(np.argmin(values))] / 10)
    if len(values) < 3:
        return tenth
    run = np.ones(len(values), dtype=np.int64)        # the longest descent ending at each step
    before = np.full(len(values), -1)
    for i in range(1, len(values)):
        lower = np.flatnonzero(values[:i] > values[i])
        if len(lower):
            j = lower[np.argmax(run[lower])]
            run[i], before[i] = run[j] + 1, j
    end = int(np.argmax(run))
    start = end
    while before[start] >= 0:
        start = int(before[start])
    return max(tenth, float(lrs[start + (end - start) // 2]))


def _plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    ax.plot(result["lrs"], result["losses"])
    ax.axvline(result["suggested_lr"], color="tab:red", linestyle="--",
               label=f"suggested lr {result['suggested_lr']:.2g}")
    ax.set(xscale="log", xlabel="learning rate", ylabel="training loss (smoothed)", title="Learning-rate range test")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
