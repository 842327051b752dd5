"""This machine's speed at the work a plan is made of, measured as that work will run: a few
training steps of a network at its real batch size and input shape, its prediction speed, a kNN
search, a linear model's epoch, a pretrained backbone's embeddings, and drawing a report figure.

Measurements are taken afresh by each run, because they follow the load on the machine at the
time; what they rest on and what is costly to find out (bf16 or fp32, channels_last, the kNN
engine) is measured once and cached by imgcls.fastpath, as for any run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from imgcls.data.dataset import ImageDataset
from imgcls.runtime import predict_logits
from imgcls.training.execution import MEASURING_SHARE
from imgcls.training.trainer import Trainer, generator

TIMED_STEPS = 3           # after one warm-up step (allocations, kernel choice)
PREDICT_SAMPLE = 256      # validation images predicted to time prediction


@dataclass
class NetworkSpeed:
    """A network's measured speed: one optimiser step at its batch size, and prediction per image."""

    step_seconds: float
    predict_seconds: float     # per image
    batch_size: int
    setup_seconds: float = 0.0     # building the network and choosing its fast path

    def epoch_seconds(self, n_train: int, n_val: int) -> float:
        """One epoch on n_train images (whole batches, as the trainer cuts them) and its validation."""
        steps = max(1, -(-n_train // self.batch_size))
        return steps * self.step_seconds + self.validation_seconds(n_val)

    def validation_seconds(self, n_val: int) -> float:
        return n_val * self.predict_seconds


def network_speed(model, train: ImageDataset, val: ImageDataset | None = None,
                  seconds: float | None = None) -> NetworkSpeed:
    """Time a few training steps of model's network (built for train, with its own settings: batch
    size, augmentation, bf16) and its prediction of up to PREDICT_SAMPLE validation images. The
    random number generators are left as they were, so the run trains as it would have.
    seconds: the time the network's whole training may take (None: unknown); choosing its
    execution then takes at most MEASURING_SHARE of it."""
    cfg = model.training_config()
    within = None if seconds is None else MEASURING_SHARE * seconds
    with torch.random.fork_rng(devices=[]):
        start = time.perf_counter()
        trainer = Trainer(model.network_for(train), cfg, measure_within=within)
        trainer.setup(train)
        setup = time.perf_counter() - start
        images, labels = train.images, train.labels
        seconds = []
        for step in range(TIMED_STEPS + 1):
            gen = generator(cfg.seed, -1, step)
            batch = torch.randint(0, len(images), (cfg.batch_size,), generator=gen)
            start = time.perf_counter()
            trainer.step(*trainer.training_batch(images[batch].to(trainer.device), labels[batch].to(trainer.device),
                                                 gen), lr=0.0)
            seconds.append(time.perf_counter() - start)
        sample = (val if val is not None and len(val) else train).images[:PREDICT_SAMPLE]
        run = dict(device=trainer.device, bf16=trainer.bf16, channels_last=trainer.channels_last)
        predict_logits(trainer.eval_net, sample[:8], **run)                 # warm-up
        start = time.perf_counter()
        predict_logits(trainer.eval_net, sample, **run)
        predict = (time.perf_counter() - start) / len(sample)
    return NetworkSpeed(float(np.median(seconds[1:])), predict, cfg.batch_size, setup)


def seconds_of(work) -> float:
    """Wall seconds of work()."""
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def figure_seconds() -> float:
    """Drawing and saving one report figure (a 10 x 10 matrix with its labels, as the confusion
    matrix is drawn) on this machine now; a report draws a handful."""
    import io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def draw():
        fig, ax = plt.subplots(figsize=(6, 5), dpi=110)
        ax.imshow(np.random.default_rng(0).random((10, 10)), cmap="Blues")
        for i in range(10):
            for j in range(10):
                ax.text(j, i, str(i * j), ha="center", va="center", fontsize=8)
        ax.set_title("timing")
        fig.tight_layout()
        fig.savefig(io.BytesIO(), format="png")
        plt.close(fig)
    draw()                                # warm-up: fonts and the backend load once
    return seconds_of(draw)


# A report's figures in units of figure_seconds (measured on a 2-core EPYC: the confusion matrix
# about 1, the grid of 24 mistakes 3, a first layer's filters or a linear model's templates 5, the
# training curves 1, and the reliability diagram and the HTML about 1 together).
REPORT_FIGURES = 5
WEIGHT_IMAGES = 6
MISTAKES_EXPLAINED = 24   # a network's report lays Grad-CAM over this many mistakes (a forward and a backward each)


def finish_seconds(predict_seconds: float, n_test: int, figure: float, *, calibrated: bool = False,
                   network: bool = False, weight_images: bool | None = None) -> float:
    """What evaluating a model once on test and writing its report will take: predicting the test
    images (twice for a calibrated model, whose report compares before and after), Grad-CAM over a
    network's mistakes, and drawing the figures (weight_images: the model's filters or templates
    too; default: for networks)."""
    test = n_test * predict_seconds * (2 if calibrated else 1)
    heatmaps = MISTAKES_EXPLAINED * 3 * predict_seconds if network else 0.0
    units = REPORT_FIGURES + (WEIGHT_IMAGES if (network if weight_images is None else weight_images) else 0)
    return test + heatmaps + units * figure + 0.5
