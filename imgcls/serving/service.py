"""What every protocol the server speaks shares: the model, its micro-batcher and the limits.

The routes of each protocol (v1 in imgcls.serving.v1, and the others beside it) only translate
requests into Service calls and results back into their own wire format.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from imgcls.inference.predict import ranked_k
from imgcls.serving import defaults
from imgcls.serving.batcher import MicroBatcher, Overloaded
from imgcls.serving.explainer import Explainer
from imgcls.serving.uploads import BadInput, decode_upload


@dataclass
class Limits:
    max_upload_bytes: int = defaults.MAX_UPLOAD_BYTES   # all of one request's images together
    max_pixels: int = defaults.MAX_PIXELS               # per image, checked before decoding


@dataclass
class Service:
    model: object
    batcher: MicroBatcher
    limits: Limits = field(default_factory=Limits)
    top_k: int | None = None                   # labels ranked per result unless a request asks

    def __post_init__(self):
        self.name = self.model.model_name
        self.task, self.classes = self.model.task_, self.model.class_names_
        self.shown_k = ranked_k(self.task, len(self.classes), self.top_k)
        self.explainer = Explainer(self.model)
        self.abstention = self.model.abstention_   # see imgcls.models.abstention

    @classmethod
    def create(cls, model, *, max_batch: int, max_wait_ms: float, queue_size: int, limits: Limits,
               top_k: int | None) -> Service:
        # A model that abstains answers (probabilities, rejection scores) per batch.
        predict = model.predict_proba if model.abstention_ is None else model.predict_with_rejection
        batcher = MicroBatcher(predict, max_batch=max_batch, max_wait_ms=max_wait_ms,
                               queue_size=queue_size)
        return cls(model, batcher, limits, top_k)

    def decode(self, uploads: list[tuple[str, bytes]]) -> np.ndarray:
        """The uploads (filename, bytes) as one batch of model inputs (N, C, H, W)."""
        prep, limit = self.model.preprocessing_, self.limits.max_pixels
        return np.stack([decode_upload(data, filename, prep, limit) for filename, data in uploads])

    async def probabilities(self, images: np.ndarray) -> np.ndarray:
        """(N, classes) through the shared micro-batcher; a full queue is a 503 with Retry-After."""
        return (await self.answers(images))[0]

    async def answers(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Probabilities (N, classes) and, for a model that abstains, rejection scores (N,)."""
        try:
            answer = await self.batcher.submit(images)
        except Overloaded:
            raise BadInput(503, "server busy: too many images waiting; try again shortly", {"Retry-After": "1"})
        return (answer, None) if self.abstention is None else answer

    def describe(self) -> dict:
        """What GET /v1/model reports."""
        prep = self.model.preprocessing_
        thresholds = self.task.threshold_vector(len(self.classes)).tolist() if self.task.multi_label else None
        return {"name": self.name, "classes": self.classes, "num_classes": len(self.classes),
                "task": self.task.kind, "thresholds": thresholds, "input_size": list(prep.size),
                "channels": prep.channels, "metrics": self.model.metrics_,
                "max_upload_bytes": self.limits.max_upload_bytes, "top_k": self.shown_k,
                "explains": self.explainer.kind, "abstention": self._abstention()}

    def _abstention(self) -> dict | None:
        if self.abstention is None:
            return None
        return {key: self.abstention.to_dict()[key] for key in ("score", "threshold", "accept")}
