"""Heatmaps for /v1/classify?explain=true."""

from __future__ import annotations

import base64
import copy
import threading

import numpy as np

from imgcls.errors import ImgclsError
from imgcls.serving.uploads import BadInput


class Explainer:
    """One request at a time (Grad-CAM hooks into the network). A network is explained through
    its own copy, so the hooks never meet the batcher's forward passes on the served one."""

    def __init__(self, model):
        self.model, self.kind = model, model.capabilities.explained_by
        self._own, self._lock = None, threading.Lock()

    def heatmaps(self, images: np.ndarray, sizes: list[tuple[int, int]], method: str | None) -> list[list[dict]]:
        """Per image its explanations, each with a base64 PNG heatmap in the frame of the photo
        (width, height as uploaded)."""
        from imgcls.explain import explain
        from imgcls.explain.render import heatmap_over_photo, png_bytes
        if self.kind is None:
            raise BadInput(400, "this model cannot explain its predictions (an exported model has no gradients); "
                                "serve the saved model to use explain=true")
        with self._lock:
            if self._own is None:
                self._own = copy.deepcopy(self.model) if self.kind == "network" else self.model
            try:
                found = explain(self._own, images, method=method or None)
            except ImgclsError as exc:
                raise BadInput(400, str(exc)) from None
        out: list[list[dict]] = [[] for _ in images]
        for e in found:
            png = png_bytes(heatmap_over_photo(e.map, sizes[e.image], self.model.preprocessing_))
            out[e.image].append({"label": e.target, "score": e.score, "method": e.method, "layer": e.layer,
                                 "above_threshold": e.above_threshold, "heatmap": base64.b64encode(png).decode()})
        return out
