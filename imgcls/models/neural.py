"""Neural classifiers: a network from imgcls.models.networks (or timm) behind the classifier contract.

Every network is wrapped with its input normalisation, so it takes uint8 (or 0..255 float)
images and the mean/std travel inside the saved weights: prediction, serving and export
never re-declare preprocessing. Prediction runs the network through imgcls.runtime; `fit`
hands the work to imgcls.training.Trainer, imported there so that loading a model to predict
never loads the training loop.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from imgcls.data.stream import pixel_statistics
from imgcls.data.dataset import ImageDataset
from imgcls.data.splits import check_balance
from imgcls.errors import ImgclsError
from imgcls.models import introspection, networks
from imgcls.models.base import Capabilities, Classifier
from imgcls.models.registry import model_class, register, register_prefix
from imgcls.runtime import TTA_MODES, predict_logits, resolve_device, use_bf16, use_channels_last, with_tta
from imgcls.training.config import TrainingConfig, monitored


# Images a network's normalisation statistics are taken from: per-channel means and deviations
# settle long before that (their standard errors are under 1% of a pixel's range), and a streamed
# dataset decodes each of them once more.
STATISTICS_SAMPLE = 1024


class Normalize(nn.Module):
    """0..255 pixels -> (x / 255 - mean) / std, per channel."""

    def __init__(self, channels: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(1, channels, 1, 1))
        self.register_buffer("std", torch.ones(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float() if not x.is_floating_point() else x
        # One pass over the batch, x * (1 / (255 std)) - mean / std, instead of three: the batch is
        # the largest tensor of a small network's step (a tenth of LeNet-5's at 160 px).
        return torch.addcmul(-self.mean / self.std, x, 1 / (255 * self.std))


class ImageNetwork(nn.Module):
    """Normalisation + a network with the forward_features / forward_head split."""

    def __init__(self, body: nn.Module, channels: int):
        super().__init__()
        self.normalize = Normalize(channels)
        self.body = body

    @property
    def num_features(self) -> int:
        return self.body.num_features

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body.forward_features(self.normalize(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.body.forward_head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.normalize(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-logit features: the image embedding that the head classifies."""
        return self.forward_head(self.forward_features(x), pre_logits=True)


@dataclass(repr=False, eq=False)
class NeuralClassifier(Classifier, TrainingConfig):
    """Hyperparameters: the TrainingConfig fields, `tta`, and the network's own options.

    tta="flip" averages the predictions for each image and its mirror image (test-time
    augmentation): worth it where flipping keeps the meaning (clothes, objects; not digits);
    tta="multicrop" also averages those of the image shifted by a pixel either way diagonally, and
    of their mirror images (six views).
    """

    tta: str = "none"
    builder: ClassVar = None
    timm_name: ClassVar[str] = ""      # timm:NAME's registry entry: the timm architecture it builds
    # The trainer reads streamed datasets batch by batch.
    capabilities: ClassVar[Capabilities] = Capabilities(network=True, embedding=True, learns_from_streams=True,
                                                        explained_by="network")

    def check_params(self) -> None:
        self.training_config().check()
        if self.tta not in TTA_MODES:
            raise ImgclsError(f"unknown tta {self.tta!r}; valid: {', '.join(TTA_MODES)}")

    def input_preprocessing(self):
        """With pretrained timm weights, the weights' own decode (timm's pretrained config: input
        size, crop_pct, interpolation); otherwise the data decides."""
        options = self.network_options()
        if not options.get("pretrained") or not self.timm_name:
            return None
        return networks.timm_preprocessing(self.timm_name)

    def check_task(self, task) -> None:
        check_balance(self.balance, task.multi_label)
        monitored(self.monitor, task)

    def training_config(self) -> TrainingConfig:
        return TrainingConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(TrainingConfig)})

    def network_options(self) -> dict:
        own = {f.name for f in dataclasses.fields(TrainingConfig)} | {"tta", "threshold"}
        return {k: v for k, v in self.get_params().items() if k not in own}

    def build_network(self, channels: int, num_classes: int, size: tuple[int, int],
                      initial_weights: bool = True) -> ImageNetwork:
        """The network; with initial_weights=False, pretrained weights are not fetched (loading a
        saved model brings its own)."""
        kwargs = dict(self.network_options())
        if not initial_weights:
            kwargs = {k: v for k, v in kwargs.items() if k not in _WEIGHT_OPTIONS}
        if "image_size" in inspect.signature(self.builder).parameters:
            kwargs["image_size"] = tuple(size)
        try:
            body = self.builder(channels, num_classes, **kwargs)
        except (ValueError, RuntimeError) as exc:
            raise ImgclsError(f"cannot build {self.model_name} for {channels}x{size[0]}x{size[1]} images: {exc}") from exc
        return ImageNetwork(body, channels)

    def network_for(self, data: ImageDataset) -> ImageNetwork:
        """A freshly initialised network (seeded) for data's shape and classes, normalised by its pixel statistics."""
        prep = data.preprocessing
        torch.manual_seed(self.seed)
        net = self.build_network(prep.channels, data.num_classes, prep.size)
        options = self.network_options()
        if options.get("pretrained") or options.get("weights"):
            # Pretrained weights expect the statistics they were trained with, not this dataset's.
            cfg = net.body.pretrained_cfg
            mean, std = torch.tensor(cfg["mean"]), torch.tensor(cfg["std"])
            if prep.channels == 1:
                mean, std = mean.mean(0, keepdim=True), std.mean(0, keepdim=True)
        else:
            mean, std = pixel_statistics(data.images, STATISTICS_SAMPLE)
            std = std.clamp_min(1e-3)
        net.normalize.mean.copy_(mean.view(1, -1, 1, 1))
        net.normalize.std.copy_(std.view(1, -1, 1, 1))
        return net

    # -- the contract -------------------------------------------------------------------------
    def _fit(self, data: ImageDataset, validation: ImageDataset | None = None, *, run_dir=None,
             resume: bool = False, hooks=(), **_) -> None:
        from imgcls.training.trainer import Trainer
        net = self.network_for(data)
        trainer = Trainer(net, self.training_config(), run_dir=run_dir, hooks=hooks)
        state = trainer.fit(data, validation if validation is not None and len(validation) else None, resume=resume)
        self.net_, self.history_ = net.cpu().eval(), state.history
        self.train_state_ = state
        self.unreadable_files_ = list(state.unreadable)

    def preview_training_batch(self, data: ImageDataset, epoch: int = 0, index: int = 0
                               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        from imgcls.training.trainer import Trainer
        self.check()
        self.check_can_learn(data.task)
        # The batch's order, gathering and augmentation depend on the settings, not on the network's weights.
        return Trainer(nn.Identity(), self.training_config()).preview_batch(data, epoch, index)

    def _predict_proba(self, images: torch.Tensor) -> torch.Tensor:
        return with_tta(lambda x: self.task_.activation(self.calibrated_logits(x)), images, self.tta)

    @property
    def has_logits(self) -> bool:
        return True

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """The network's float32 logits for uint8 images (N, C, H, W), as trained (uncalibrated)."""
        return self.run_network(images)

    def calibrated_logits(self, images: torch.Tensor) -> torch.Tensor:
        """The logits divided by the fitted temperature (imgcls.models.calibration), the one place
        it is applied; the plain logits where the model has no temperature scaling."""
        logits = self.logits(images)
        calibration = self.calibration_
        return calibration.scale(logits) if calibration is not None and calibration.in_logits else logits

    def _logits(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.calibrated_logits(inputs)       # what abstention's scores read: as predicted

    def run_network(self, images: torch.Tensor, forward=None, progress=None) -> torch.Tensor:
        """Float32 outputs of forward (default: the network, giving logits) on uint8 images, in batches
        on the model's device, with bf16 and channels_last where they are on."""
        device = resolve_device(self.device)
        net = self.net_.to(device)
        bf16 = use_bf16(self.bf16, device, net, images[:64])
        channels_last = use_channels_last(self.channels_last, device, net, bf16)
        if channels_last:
            net = net.to(memory_format=torch.channels_last)
        return predict_logits(net, images, device=device, bf16=bf16, channels_last=channels_last,
                              forward=forward, progress=progress)

    def attribution_network(self) -> tuple[nn.Module, nn.Module]:
        """(scores, trunk), what explanations run: `scores` maps float images (N, C, H, W; pixels
        0..255) to one score per class, higher meaning more evidence for it (here the logits);
        `trunk` is the part of it whose named submodules are the layers an explanation may read."""
        return self.net_, self.net_.body

    def embed(self, X) -> np.ndarray:
        """Pre-logit features (N, num_features): the network's image embedding."""
        images = self._inputs(X)
        return self.run_network(images, forward=self.net_.embed).numpy()

    def first_layer_filters(self) -> np.ndarray | None:
        self._check_fitted()
        shape = self.input_shape
        return _numpy(introspection.layer_images(introspection.first_layer(self.net_, shape), shape))

    def feature_stages(self) -> list[str]:
        """The network's stages, earliest first: names of the modules whose outputs are its feature
        maps at each resolution (see introspection.feature_stages); empty for networks without maps."""
        self._check_fitted()
        return introspection.feature_stages(self.net_, self.input_shape)

    @torch.no_grad()
    def feature_maps(self, images: torch.Tensor, layers: list[str]) -> dict[str, torch.Tensor]:
        """Float32 outputs (on the CPU) of the named modules (stages, or any module of the network)
        for a batch of 0..255 images, uint8 or float, in float32 on the model's device; the forward
        pass stops once every one has been reached."""
        self._check_fitted()
        modules = dict(self.net_.named_modules())
        unknown = [name for name in layers if name not in modules or not name]
        if unknown:
            raise ImgclsError(f"{self.model_name} has no layer {unknown[0]!r}; its stages: "
                              f"{', '.join(self.feature_stages()) or '(none: no feature maps)'}")
        device = resolve_device(self.device)
        net = self.net_.to(device).eval()
        return introspection.outputs_of(net, [modules[name] for name in layers], images.to(device), layers)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of the images the fitted network takes."""
        return (self.preprocessing_.channels, *self.preprocessing_.size)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {k: v.contiguous() for k, v in self.net_.state_dict().items()}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        prep = self.preprocessing_
        self.net_ = self.build_network(prep.channels, len(self.class_names_), prep.size, initial_weights=False)
        self.net_.load_state_dict(tensors)
        self.net_.eval()

    def __reduce__(self):
        # These classes are made from the registry (at import, or on first use for timm: and
        # transfer: names), not module attributes, so pickle (joblib's n_jobs) finds them by name.
        return _by_registry_name, (self.model_name,), self.__getstate__()

    def parameter_count_for(self, input_shape: tuple[int, ...], num_classes: int) -> int:
        return introspection.count_parameters(self.build_network(input_shape[0], num_classes, input_shape[1:],
                                                                 initial_weights=False))

    @property
    def parameter_count(self) -> int | None:
        return introspection.count_parameters(self.net_) if self.is_fitted else None


def _numpy(tensor: torch.Tensor | None) -> np.ndarray | None:
    return None if tensor is None else tensor.cpu().numpy()


def _by_registry_name(name: str) -> NeuralClassifier:
    """An empty instance of the registry's class `name`, for pickle to fill with its state."""
    cls = model_class(name)
    return cls.__new__(cls)


def _network_class(name: str, builder, description: str, timm_name: str = "") -> type:
    """A NeuralClassifier subclass whose extra dataclass fields are the builder's keyword options."""
    options = [(p.name, p.annotation if isinstance(p.annotation, type) else type(p.default),
                dataclasses.field(default=p.default))
               for p in inspect.signature(builder).parameters.values()
               if p.kind is p.KEYWORD_ONLY and p.name != "image_size"]
    cls = dataclasses.make_dataclass(f"{name.title().replace('_', '')}Classifier", options, bases=(NeuralClassifier,),
                                     repr=False, eq=False)
    cls.builder, cls.description, cls.timm_name = staticmethod(builder), description, timm_name
    return cls


for _name, (_builder, _description) in networks.BUILDERS.items():
    register(_name)(_network_class(_name, _builder, _description))


_WEIGHT_OPTIONS = ("pretrained", "weights")


def _timm_class(name: str) -> type:
    timm_name = name.split(":", 1)[1]

    def builder(in_chans: int, num_classes: int, *, pretrained: bool = False, weights: str = "") -> nn.Module:
        return networks.timm_network(timm_name, in_chans, num_classes, pretrained=pretrained, weights=weights)
    return _network_class(name, builder, f"timm's {timm_name}", timm_name)


register_prefix("timm:", _timm_class)
