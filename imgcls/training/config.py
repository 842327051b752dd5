"""Typed training settings, shared by every neural classifier (they are its hyperparameters)."""

from __future__ import annotations

from dataclasses import dataclass

from imgcls.errors import ImgclsError
from imgcls.task import Task

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "step", "cosine", "onecycle")
DEVICES = ("auto", "cpu", "cuda", "mps")
MONITORS = ("auto", "val_accuracy", "val_mAP", "val_loss")
BALANCES = ("none", "weights", "sampler")


@dataclass
class TrainingConfig:
    epochs: int = 10
    batch_size: int = 128
    accumulate: int = 1              # micro-batches of batch_size per optimiser step (gradient accumulation)
    opt: str = "sgd"                 # sgd (with momentum/nesterov), adam, adamw
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    decay_norms: bool = False        # also decay norm weights and biases (off: the usual practice)
    schedule: str = "onecycle"       # constant, step, cosine, onecycle
    warmup: float = 0.0              # epochs of linear warm-up (onecycle: 0 means a fifth of training)
    step_every: int = 0              # step schedule: decay every N epochs (0: at 50% and 75%)
    gamma: float = 0.1               # step schedule: decay factor
    label_smoothing: float = 0.0
    whiten: bool = False             # patch-whitening initialisation of the first convolution (airbench)
    dirac: bool = False              # identity (dirac) initialisation of the other convolutions (airbench)
    norm_bias_lr: float = 1.0        # learning-rate multiplier for normalisation layers' biases (airbench: 64)
    lookahead: int = 0               # every N steps, weights move toward a slow copy and restart from it; 0 = off
    bn_momentum: float = 0.0         # batch-norm statistics' momentum (torch's sense); 0 keeps the network's (0.1)
    progressive_size: float = 1.0    # progressive resizing: first epochs at this fraction of the image side; 1 = off
    progressive_until: float = 0.5   # ... growing linearly to the full size over this fraction of the epochs
    balance: str = "none"            # imbalanced classes: none, weights (weighted loss), sampler (oversampling)
    clip_grad: float = 0.0           # max gradient norm; 0 = off
    ema: float = 0.0                 # decay of an exponential moving average of weights; 0 = off
    augment: str = "none"            # e.g. "crop,flip" (see imgcls.training.augment)
    patience: int = 0                # early stopping after N epochs without improvement; 0 = off
    checkpoint_every: int = 0        # also write the resumable checkpoint every N optimiser steps; 0 = at epoch ends
    monitor: str = "auto"            # auto: val_accuracy, or val_mAP for multi-label data; or val_loss
    channels_last: str = "auto"      # auto, on, off (auto: measured, see imgcls.training.execution)
    bf16: str = "auto"               # auto, on, off (auto: measured)
    threads: int = 0                 # CPU threads for training; 0: torch's, or half of it where measured faster
    compile: str = "auto"            # auto, on, off: torch.compile the training step (auto: where measured to repay compiling)
    device: str = "auto"
    seed: int = 0

    def check(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ImgclsError(message)
        need(self.opt in OPTIMIZERS, f"unknown optimiser {self.opt!r}; valid: {', '.join(OPTIMIZERS)}")
        need(self.schedule in SCHEDULES, f"unknown schedule {self.schedule!r}; valid: {', '.join(SCHEDULES)}")
        need(self.balance in BALANCES, f"unknown balance {self.balance!r}; valid: {', '.join(BALANCES)}")
        need(self.monitor in MONITORS, f"unknown monitor {self.monitor!r}; valid: {', '.join(MONITORS)}")
        need(self.device in DEVICES or self.device.startswith("cuda:"),
             f"unknown device {self.device!r}; valid: {', '.join(DEVICES)} or cuda:N")
        for name in ("channels_last", "bf16"):
            need(getattr(self, name) in ("auto", "on", "off"), f"{name} must be auto, on or off")
        need(self.compile in ("auto", "on", "off"), "compile must be auto, on or off")
        need(self.threads >= 0, "threads must be 0 (auto) or a number of threads")
        need(self.epochs >= 1 and self.batch_size >= 1 and self.accumulate >= 1,
             "epochs, batch_size and accumulate must be at least 1")
        need(self.checkpoint_every >= 0, "checkpoint_every must be 0 (off) or a number of steps")
        need(self.lr > 0 and self.weight_decay >= 0, "need lr > 0 and weight_decay >= 0")
        need(0 <= self.label_smoothing < 1 and 0 <= self.ema < 1, "label_smoothing and ema must lie in [0, 1)")
        need(self.norm_bias_lr > 0, "norm_bias_lr must be positive")
        need(self.lookahead >= 0, "lookahead must be 0 (off) or a number of steps")
        need(0 <= self.bn_momentum <= 1, "bn_momentum must lie in [0, 1] (0 keeps the network's own)")
        need(0 < self.progressive_size <= 1 and 0 <= self.progressive_until <= 1,
             "progressive_size must lie in (0, 1] and progressive_until in [0, 1]")
        from imgcls.training.augment import AugmentConfig
        AugmentConfig.from_spec(self.augment)


def monitored(setting: str, task: Task) -> str:
    """The validation figure early stopping and the best epoch go by: auto means the task's headline
    (val_accuracy, or val_mAP for multi-label data)."""
    if setting == "auto":
        return f"val_{task.headline}"
    if setting == "val_mAP" and not task.multi_label:
        raise ImgclsError("monitor val_mAP applies to multi-label data; use val_accuracy or val_loss")
    return setting
