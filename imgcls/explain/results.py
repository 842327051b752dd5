"""What an explanation is: a map (higher: more evidence for the target) and what it explains;
for kNN also the neighbours, for a linear model its template. imgcls.explain.explanation makes
them for networks, imgcls.explain.intrinsic for models that explain themselves."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Neighbour:
    index: int             # row of the training set (as model.kneighbors numbers them)
    label: str             # its label; for multi-label models its labels joined by ";"
    distance: float


@dataclass
class Explanation:
    image: int                        # which of the images explained
    target: str                       # the label explained
    target_index: int
    score: float                      # the model's probability of the target for this image
    method: str
    map: np.ndarray                   # float32 (H, W) at the model's input resolution
    layer: str | None = None          # the network layer a Grad-CAM map was read from
    above_threshold: bool = True      # multi-label: whether the target is a label the model predicts
    neighbours: list[Neighbour] = field(default_factory=list)   # kNN
    template: np.ndarray | None = None                           # linear: W's row as (C, H, W)

    def to_dict(self) -> dict:
        """What explanations.json records (the map goes to its own .npy file)."""
        out = {"target": self.target, "score": self.score, "method": self.method, "layer": self.layer}
        if not self.above_threshold:
            out["above_threshold"] = False
        if self.neighbours:
            out["neighbours"] = [vars(n) for n in self.neighbours]
        return out
