"""How images become vectors for similarity search: raw pixels, or a network's embedding.

`load_features(spec)` is the one way in: "pixels", a saved network (run folder or .safetensors
file) or a pretrained model name (efficientnet_lite0...). Every kind answers the same questions:
how files are decoded for it (`preprocessing`; None: the dataset's own choice), how uint8 images
(N, C, H, W) become vectors, which distance compares them (`metric`), and what identifies it
(`fingerprint`, checked when an index is reopened).

- pixels: the uint8 pixels themselves, compared by L2 (the course's kNN on raw pixels).
- a network: its pre-logit embedding, made unit-length and compared by cosine distance
  (1 - cos; L2 on unit vectors ranks the same, so the exact and HNSW searches serve both).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from imgcls.data.images import Preprocessing
from imgcls.errors import ImgclsError
from imgcls.storage import sha256_file

PIXELS = "pixels"
METRICS = ("l2", "cosine")


class PixelFeatures:
    spec = PIXELS
    metric = "l2"
    preprocessing: Preprocessing | None = None    # decode as the dataset's own images (choose_preprocessing)

    def vectors(self, images: torch.Tensor, progress=None) -> torch.Tensor:
        return images.reshape(len(images), -1)

    def fingerprint(self) -> dict:
        return {}


class EmbeddingFeatures:
    """A network's pre-logit embedding of images brought to the network's input channels and size."""

    metric = "cosine"

    def __init__(self, spec: str, model, model_file: Path | None = None):
        if not model.capabilities.embedding:
            raise ImgclsError(f"{spec}: a {model.model_name} model has no image "
                              "embedding; use pixels, a trained network or a pretrained model name")
        self.spec, self.model, self.model_file = spec, model, model_file
        self.preprocessing = model.preprocessing_     # files are decoded exactly as the network expects

    def vectors(self, images: torch.Tensor, progress=None) -> torch.Tensor:
        from imgcls.models.transfer import Adapter
        adapt, net = Adapter(self.preprocessing.size, self.preprocessing.channels), self.model.net_
        embeddings = self.model.run_network(images, forward=lambda x: net.embed(adapt(x)), progress=progress)
        return F.normalize(embeddings, dim=1)

    def fingerprint(self) -> dict:
        """What identifies the network, so an index notices when the file behind it changes."""
        if self.model_file is None:
            return {}
        return {"model_sha256": sha256_file(self.model_file)}


def load_features(spec: str) -> PixelFeatures | EmbeddingFeatures:
    """Features named by spec: "pixels", a saved network (file or run folder) or a pretrained model name."""
    if spec == PIXELS:
        return PixelFeatures()
    from imgcls.inference.resolve import resolve_model
    from imgcls.models.artifact import is_saved_model, resolve_model_path
    from imgcls.models.pretrained import PRETRAINED
    if spec in PRETRAINED:
        return EmbeddingFeatures(spec, resolve_model(spec))
    if not is_saved_model(spec):
        raise ImgclsError(f"{spec}: features must be pixels, a saved network (file or run folder) or a pretrained "
                          f"model ({', '.join(PRETRAINED)})")
    path = resolve_model_path(spec)
    return EmbeddingFeatures(str(path.resolve()), resolve_model(str(path)), path)


def metric_of(spec: str) -> str:
    return "l2" if spec == PIXELS else "cosine"


def distances_from_l2(l2: torch.Tensor, metric: str) -> torch.Tensor:
    """The reported distance from the Euclidean one: itself for pixels, 1 - cos for unit embeddings."""
    return l2 if metric == "l2" else l2.square() / 2
