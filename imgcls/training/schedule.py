"""The learning rate as one pure function of the step, and the image size as one of the epoch."""

from __future__ import annotations

import math

from imgcls.training.config import TrainingConfig


def lr_at(step: int, total_steps: int, steps_per_epoch: int, cfg: TrainingConfig) -> float:
    """Learning rate for optimiser step `step` (0-based) of `total_steps`."""
    warmup_steps = round(cfg.warmup * steps_per_epoch)
    if cfg.schedule == "onecycle":
        # Linear ramp from lr/25 up to lr, then linear decay to zero (Smith's one-cycle, as airbench).
        peak = warmup_steps or max(1, round(0.2 * total_steps))
        if step < peak:
            return cfg.lr * (1 / 25 + (1 - 1 / 25) * step / peak)
        return cfg.lr * max(0.0, (total_steps - step) / max(1, total_steps - peak))
    if step < warmup_steps:
        return cfg.lr * (step + 1) / warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "cosine":
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * progress))
    epoch = step // steps_per_epoch
    epochs = math.ceil(total_steps / steps_per_epoch)
    milestones = (range(cfg.step_every, epochs, cfg.step_every) if cfg.step_every
                  else (epochs // 2, (3 * epochs) // 4))
    return cfg.lr * cfg.gamma ** sum(epoch >= m for m in milestones)


def image_size_at(epoch: int, size: tuple[int, int], cfg: TrainingConfig) -> tuple[int, int]:
    """The image size epoch `epoch` (0-based) trains at: with progressive resizing, progressive_size
    of each side at first, growing linearly to the full size over progressive_until of the epochs."""
    ramp = cfg.progressive_until * cfg.epochs
    if cfg.progressive_size >= 1 or epoch >= ramp:
        return tuple(size)
    scale = cfg.progressive_size + (1 - cfg.progressive_size) * epoch / ramp
    return tuple(max(1, round(side * scale)) for side in size)
