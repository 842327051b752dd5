"""Lookahead (Zhang et al. 2019) as airbench uses it: a slow copy of the network's state.

Every `every` optimiser steps the slow copy (weights and batch-norm statistics) moves toward the
network's by (1 - decay), and the network restarts from it. decay grows with the cube of the
run's progress, from 0 (early training runs free) to DECAY ** every at the last step, which
always syncs, so training ends on the slow weights. Batch-norm statistics averaged this way lag
behind the weights; a faster batch-norm momentum (--bn-momentum) keeps them close.
"""

from __future__ import annotations

import torch
from torch import nn

DECAY = 0.95     # per step: the slow copy's weight, at the end of the run


class Lookahead:
    def __init__(self, net: nn.Module, every: int):
        self.every = every
        self.slow = {name: value.detach().clone() for name, value in net.state_dict().items()
                     if value.is_floating_point()}

    @torch.no_grad()
    def after_step(self, net: nn.Module, step: int, total_steps: int) -> None:
        """Called after optimiser step `step` (1-based) of total_steps."""
        if step % self.every and step < total_steps:
            return
        decay = DECAY ** self.every * min(step / total_steps, 1.0) ** 3
        state = net.state_dict()
        for name, slow in self.slow.items():
            slow.lerp_(state[name], 1 - decay)
            state[name].copy_(slow)
