"""Which models `--model auto` considers for the data, and with what settings.

- Baselines on pixels: kNN (k and L1 or L2 chosen on validation from one search per metric) and
  the linear classifier.
- A pretrained backbone (EfficientNet-Lite0, offline weights) as kNN and a linear probe on its
  embeddings, computed once and shared: for photographs at the backbone's own size, for small
  images (upsampled inside the network) when they take a small share of the budget.
- Networks: a VGG of the registry, globally pooled (so an object may be anywhere in the image),
  its stages and widths sized to the image, with and without horizontal flips, and ResNet-20; for
  photographs the VGG on 64 px pixels and the backbone fine-tuned. Their learning rate, batch size
  and epochs are planned (imgcls.planning.settings); the rest follows airbench-style recipes:
  SGD with Nesterov momentum, one-cycle, label smoothing, random crops.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field

from imgcls.fit_and_evaluate import FittedModel
from imgcls.models.pretrained import PRETRAINED, model_cache
from imgcls.planning.profile import DataProfile
from imgcls.planning.settings import AUTO, Measured
from imgcls.run_folder import RunFolder

BACKBONE = "efficientnet_lite0"
BACKBONE_SIDE = 224        # the backbone's own input size
SMALL_IMAGE_SIDE = 96      # small images are upsampled to this side for the backbone (its speed: about (96/224)^2)


@dataclass
class Candidate:
    """One model of the race, what became of it, and why."""

    label: str                 # as the leaderboard shows it: "vgg 32,64,128 (crop=4)"
    model: str                 # registry name
    params: dict               # settings; "auto" ones are planned when it starts
    kind: str                  # "baseline", "embedding" or "network"
    view: str = "pixels"       # which decoding of the images it learns from: "pixels" or "backbone"
    round: int = 1             # networks: 1 for a brief first run, 2 for the longer run of the best
    status: str = "planned"    # finished, halved out, not started, failed
    reason: str = ""
    estimate: float | None = None     # seconds it was expected to take (measured speed x work)
    allowed: float | None = None      # seconds it could have without leaving too little for a test evaluation
    seconds: float = 0.0              # seconds it took: measuring, planning, training, validating
    planned: dict = field(default_factory=dict)   # how its planned settings were chosen
    fitted: FittedModel | None = None
    range_test: dict | None = None
    measured: Measured | None = None  # a network's measured speed at its batch size
    winner: bool = False

    @property
    def score(self) -> float | None:
        return self.fitted.validation_score if self.fitted is not None else None

    @property
    def competes(self) -> bool:
        """Trained to its end and validated: it may win."""
        return self.fitted is not None and self.score is not None

    def row(self) -> dict:
        """Its line in candidates.json (and the leaderboard)."""
        validation = self.fitted.validation if self.fitted is not None else {}
        params = self.fitted.model.get_params() if self.fitted is not None else self.params
        return {"label": self.label, "model": self.model, "kind": self.kind, "round": self.round,
                "status": self.status, "reason": self.reason, "winner": self.winner, **validation,
                "seconds": round(self.seconds, 2),
                "estimated_seconds": None if self.estimate is None else round(self.estimate, 2),
                "allowed_seconds": None if self.allowed is None else round(self.allowed, 2),
                "params": {k: v for k, v in params.items() if k != "threshold"}, "planned": self.planned}


def pretrained_available(name: str = BACKBONE) -> bool:
    """Whether the backbone's weights are here: converted in the model cache, or their package installed."""
    return RunFolder(model_cache() / name).model.is_file() or \
        importlib.util.find_spec(PRETRAINED[name].module) is not None


def vgg_widths(side: int) -> str:
    """Stages that leave a map of a few pixels before the global pool: 2 below 16 px, 3 up to 48 px,
    4 above; widths 32, 64, 128, 256."""
    stages = 2 if side < 16 else 3 if side <= 48 else 4
    return ",".join(str(32 * 2 ** i) for i in range(stages))


def network_candidates(profile: DataProfile, seed: int) -> list[Candidate]:
    """The networks raced for this data (their lr, batch size and epochs planned)."""
    side = min(profile.shape[1:])
    crop = max(1, round(side / 12))
    common = {"opt": "sgd", "nesterov": True, "weight_decay": 5e-4, "schedule": "onecycle", "seed": seed,
              "lr": AUTO, "batch_size": AUTO, "epochs": AUTO,
              **({} if profile.multi_label else {"label_smoothing": 0.1})}
    widths = vgg_widths(side)
    found = [Candidate(f"vgg {widths} (crop={crop})", "vgg",
                       {**common, "widths": widths, "dropout": 0.0, "augment": f"crop={crop}"}, "network"),
             Candidate(f"vgg {widths} (crop={crop}, flip)", "vgg",
                       {**common, "widths": widths, "dropout": 0.0, "augment": f"crop={crop},flip"}, "network")]
    if profile.photographs:     # fine-tuning the backbone first; photographs keep their meaning mirrored
        found = [Candidate(f"transfer:{BACKBONE} fine-tuned", f"transfer:{BACKBONE}",
                           {"mode": "finetune", "augment": "flip", "seed": seed, "batch_size": AUTO,
                            "epochs": AUTO}, "network", view="backbone"), found[1]]
    else:
        found.append(Candidate(f"resnet20 (crop={crop}, flip)", "resnet20",
                               {**common, "augment": f"crop={crop},flip"}, "network"))
    return found


def embedding_candidates(profile: DataProfile, seed: int, full_size: bool = False) -> list[Candidate]:
    """kNN and a linear probe on the backbone's embeddings (computed once for both): photographs, and
    with full_size small images too, at the backbone's own size; other small images at SMALL_IMAGE_SIDE."""
    side = 0 if profile.photographs or full_size else SMALL_IMAGE_SIDE      # 0: the backbone's own size (224)
    what = "" if profile.photographs else (f" at {BACKBONE_SIDE} px" if full_size else f" at {SMALL_IMAGE_SIDE} px")
    return [Candidate(f"transfer:{BACKBONE} kNN{what}", f"transfer:{BACKBONE}",
                      {"mode": "knn", "input_size": side, "seed": seed}, "embedding", view="backbone"),
            Candidate(f"transfer:{BACKBONE} probe{what}", f"transfer:{BACKBONE}",
                      {"mode": "probe", "input_size": side, "seed": seed}, "embedding", view="backbone")]
