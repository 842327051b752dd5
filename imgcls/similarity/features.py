"""How images become vectors for similarity search: raw pixels, or a network's embedding.

`load_features(spec)` is the one way in: "pixels", a saved network (run folder or .safetensors
file) or a pretrained model name (efficientnet_lite0...). Every kind answers the same questions:
which decoding suits it (`side`, `channels`), how to turn uint8 images (N, C, H, W) into vectors,
and which distance compares them (`metric`).

- pixels: the uint8 pixels themselves, compared by L2 (the course's kNN on raw pixels).
- a network: its pre-logit embedding, made unit-length and compared by cosine distance
  (1 - cos; L2 on unit vectors ranks the same, so the exact and HNSW searches serve both).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from imgcls.errors import ImgclsError

PIXELS = "pixels"
METRICS = ("l2", "cosine")


class PixelFeatures:
    spec = PIXELS
    metric = "l2"
    side: int | None = None          # decode at the dataset's own size (see choose_preprocessing)
    channels: int | None = None

    def vectors(self, images: torch.Tensor, progress=None) -> torch.Tensor:
        return images.reshape(len(images), -1)


class EmbeddingFeatures:
    """A network's pre-logit embedding of images resized to the network's input size."""

    metric = "cosine"

    def __init__(self, spec: str, model):
        if not hasattr(model, "net_") or not hasattr(model.net_, "embed"):
            raise ImgclsError(f"{spec}: a {getattr(model, 'model_name', type(model).__name__)} model has no image "
                              "embedding; use --features pixels, a trained network or a pretrained model name")
        self.spec, self.model = spec, model
        self.side, self.channels = model.preprocessing_.size[0], model.preprocessing_.channels

    def vectors(self, images: torch.Tensor, progress=None) -> torch.Tensor:
        from imgcls.models.transfer import Adapter
        adapt = Adapter(self.side)
        net = self.model.net_

        def embed(x: torch.Tensor) -> torch.Tensor:
            x = adapt(x)
            if self.channels == 1 and x.shape[1] == 3:
                x = x.mean(1, keepdim=True)
            return net.embed(x)
        return F.normalize(self.model._run(images, forward=embed, progress=progress), dim=1)


def load_features(spec: str) -> PixelFeatures | EmbeddingFeatures:
    """Features named by spec: "pixels", a saved network, or a pretrained model name."""
    if spec == PIXELS:
        return PixelFeatures()
    from imgcls.models.pretrained import PRETRAINED, resolve_model
    if spec not in PRETRAINED and not Path(spec).expanduser().exists():
        raise ImgclsError(f"--features {spec}: use pixels, a saved network (file or run folder) or a pretrained "
                          f"model ({', '.join(PRETRAINED)})")
    return EmbeddingFeatures(spec, resolve_model(spec))


def metric_of(spec: str) -> str:
    return "l2" if spec == PIXELS else "cosine"


def distances_from_l2(l2: torch.Tensor, metric: str) -> torch.Tensor:
    """The reported distance from the Euclidean one: itself for pixels, 1 - cos for unit embeddings."""
    return l2 if metric == "l2" else l2.square() / 2
