"""Transfer learning from an ImageNet-pretrained backbone: `transfer:<backbone>` in the registry.

Three modes, one network (adapter -> pretrained body -> new head), so prediction, saving and
export work the same for all of them:

- probe: embeddings from the frozen body, then a linear softmax head fitted on them;
- knn: the training embeddings are memorised and queries vote among their k nearest
  (cosine distance: L2 on unit-length embeddings), the course's "kNN on ConvNet features";
- finetune: a new head trained with the body frozen (head_epochs), then everything trained
  with the body at body_lr times the learning rate (as fastai's fine_tune).

The adapter repeats grayscale to three channels and resizes to input_size inside the network,
so small datasets (28 px Fashion-MNIST) keep their in-memory uint8 form.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from imgcls.data.dataset import ImageDataset
from imgcls.data.images import Preprocessing
from imgcls.data.splits import class_balance_weights
from imgcls.errors import ImgclsError
from imgcls.models.base import Capabilities, Classifier
from imgcls.models.distance import ExactSearch
from imgcls.models.knn import as_probabilities, predictions_from_votes, vote
from imgcls.models.introspection import count_parameters
from imgcls.models.neural import ImageNetwork, NeuralClassifier
from imgcls.models.registry import register_prefix
from imgcls.progress import progress_bar
from imgcls.run_folder import RunFolder
from imgcls.runtime import predict_logits, resolve_device, use_bf16

MODES = ("probe", "knn", "finetune")
_SHARED: ContextVar[dict | None] = ContextVar("shared_embeddings", default=None)


@contextmanager
def shared_embeddings() -> Iterator[None]:
    """Within it, a pretrained backbone embeds a given tensor of images once: transfer models in
    modes knn and probe (whose body keeps its pretrained weights) on the same backbone, size and
    precision share the embeddings of their training and validation images (a kNN and a probe
    raced side by side, imgcls.planning) instead of computing them each."""
    token = _SHARED.set({})
    try:
        yield
    finally:
        _SHARED.reset(token)


class Adapter(nn.Module):
    """Images of any channels and size -> `channels` (grayscale repeated, or RGB averaged) at size
    (a side, or height and width; bilinear with antialiasing)."""

    def __init__(self, size: int | tuple[int, int], channels: int = 3):
        super().__init__()
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float() if not x.is_floating_point() else x
        if x.shape[1] == 1 and self.channels == 3:
            x = x.expand(-1, 3, -1, -1)
        elif x.shape[1] == 3 and self.channels == 1:
            x = x.mean(1, keepdim=True)
        if tuple(x.shape[2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", antialias=True, align_corners=False)
        return x


class TransferNetwork(nn.Module):
    def __init__(self, backbone: ImageNetwork, size: int):
        super().__init__()
        self.adapter, self.backbone = Adapter(size), backbone

    @property
    def num_features(self) -> int:
        return self.backbone.num_features

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_features(self.adapter(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.backbone.forward_head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x), pre_logits=True)


class _ModeCapabilities:
    """TransferClassifier's capabilities, which depend on its mode: finetune trains batch by batch,
    so it reads streamed datasets (the workers decode them); the probe and knn modes embed the whole
    training set at once, in memory. Asked of the class, the answer is finetune's."""

    def __get__(self, model, owner) -> Capabilities:
        streams = model is None or model.mode == "finetune"
        return replace(NeuralClassifier.capabilities, learns_from_streams=streams)


@dataclass(repr=False, eq=False)
class TransferClassifier(NeuralClassifier):
    """Training options (epochs, lr, batch_size, augment, ...) apply to finetune (and lr/epochs
    to the probe's head); defaults suit fine-tuning with AdamW."""

    opt: str = "adamw"         # fine-tuning defaults, in place of the from-scratch ones
    lr: float = 1e-3
    epochs: int = 3
    mode: str = "probe"
    input_size: int = 0        # side fed to the backbone; 0: its pretrained size (smaller is faster)
    k: int = 10                # knn mode
    head_epochs: int = 1       # finetune: epochs with the body frozen
    body_lr: float = 0.1       # finetune: the body's learning rate as a fraction of lr
    backbone: ClassVar[str] = ""
    capabilities: ClassVar[Capabilities] = _ModeCapabilities()

    def check_params(self) -> None:
        super().check_params()
        if self.mode not in MODES:
            raise ImgclsError(f"unknown mode {self.mode!r}; valid: {', '.join(MODES)}")
        if self.input_size < 0 or self.k < 1 or self.head_epochs < 0 or not 0 <= self.body_lr <= 1:
            raise ImgclsError("need input_size >= 0, k >= 1, head_epochs >= 0 and 0 <= body_lr <= 1")
        if self.mode == "knn" and self.balance != "none":
            raise ImgclsError("balance does not apply to mode knn (a vote of neighbours has no loss to weight)")
        from imgcls.models.pretrained import PRETRAINED
        if self.backbone not in PRETRAINED:
            raise ImgclsError(f"no pretrained backbone {self.backbone!r}; available: {', '.join(PRETRAINED)}")

    def check_task(self, task) -> None:
        if self.mode == "probe":     # the probe weights its full-batch loss instead of sampling (_fit_probe)
            return
        super().check_task(task)

    def network_options(self) -> dict:
        return {}

    def preview_training_batch(self, data: ImageDataset, epoch: int = 0, index: int = 0):
        if self.mode != "finetune":
            raise ImgclsError(f"mode {self.mode} embeds the training images as they are, in one pass; only "
                              "mode finetune trains on augmented batches")
        return super().preview_training_batch(data, epoch, index)

    def input_preprocessing(self) -> Preprocessing:
        """The backbone's evaluation decode at the side it is fed: RGB, the centre crop covering
        side / (side + 32) of the image, bicubic (EfficientNet-Lite's; 224 px: 0.875)."""
        side = self._side()
        return Preprocessing(channels=3, size=(side, side), resize="crop", crop_pct=round(side / (side + 32), 3),
                             interpolation="bicubic")

    def _side(self) -> int:
        from imgcls.models.pretrained import PRETRAINED
        return self.input_size or PRETRAINED[self.backbone].size

    def new_network(self, num_classes: int, pretrained: bool) -> TransferNetwork:
        from imgcls.models.pretrained import pretrained_model
        from imgcls.models.registry import create_model
        if pretrained:
            body = pretrained_model(self.backbone).net_
        else:
            body = create_model(self.backbone).build_network(3, 1000, (self._side(),) * 2)
        body.body.reset_classifier(num_classes)
        return TransferNetwork(body, self._side())

    def parameter_count_for(self, input_shape: tuple[int, ...], num_classes: int) -> int:
        return count_parameters(self.new_network(num_classes, pretrained=False))

    def network_for(self, data: ImageDataset) -> TransferNetwork:
        """The network fit starts from for data's classes: the pretrained body, a new head (seeded)."""
        torch.manual_seed(self.seed)
        return self.new_network(data.num_classes, pretrained=True)

    # -- fitting ------------------------------------------------------------------------------
    def _fit(self, data: ImageDataset, validation: ImageDataset | None = None, *, run_dir=None,
             resume: bool = False, hooks=(), **_) -> None:
        torch.manual_seed(self.seed)
        self.net_ = self.new_network(data.num_classes, pretrained=True)
        if self.mode == "finetune":
            self._finetune(data, validation, run_dir, resume, hooks)
        else:
            embeddings = self.embeddings(data.images)
            if self.mode == "knn":
                self.reference_, self.labels_ = _unit(embeddings), data.labels.clone()
                self._search = ExactSearch(self.reference_, "l2")
            else:
                self._fit_probe(embeddings, data.labels, data.num_classes)
        self.net_.eval()

    def _fit_probe(self, embeddings: torch.Tensor, labels: torch.Tensor, n_classes: int) -> None:
        """Logistic regression on the embeddings (multinomial, or one per label for multi-label data):
        full-batch L-BFGS, L2 penalty."""
        head = nn.Linear(embeddings.shape[1], n_classes)
        optimizer = torch.optim.LBFGS(head.parameters(), lr=1, max_iter=200, history_size=20,
                                      line_search_fn="strong_wolfe")
        penalty = self.weight_decay or 1e-4
        # balance=sampler weights too: a full batch drawn by the sampler has this weighted loss as its
        # expectation, so weighting gives the same objective without the sampling noise.
        weight = class_balance_weights(labels, n_classes) if self.balance != "none" else None

        def closure():
            optimizer.zero_grad()
            loss = self.task_.loss(head(embeddings), labels, weight=weight, label_smoothing=self.label_smoothing)
            loss = loss + penalty * head.weight.square().sum()
            loss.backward()
            return loss
        optimizer.step(closure)
        classifier = self.net_.backbone.body.get_classifier()
        classifier.load_state_dict(head.state_dict())
        self.history_ = [{"epoch": 1, "train_loss": float(closure().detach())}]

    def _finetune(self, data, validation, run_dir, resume, hooks) -> None:
        from imgcls.training.trainer import Trainer
        body = {n: p for n, p in self.net_.named_parameters() if not _is_head(n)}
        stages = [("head", self.head_epochs, 0.0), ("all", self.epochs, self.body_lr)]
        self.history_ = []
        for stage, epochs, body_scale in stages:
            if epochs == 0:
                continue
            for p in body.values():
                p.requires_grad_(body_scale > 0)
            cfg = self.training_config()
            cfg.epochs = epochs
            stage_dir = RunFolder(run_dir).stage(stage).path if run_dir else None
            trainer = Trainer(self.net_, cfg, run_dir=stage_dir, hooks=hooks,
                              lr_scales=dict.fromkeys(body, body_scale))
            state = trainer.fit(data, validation, resume=resume)
            self.history_ += [{**r, "stage": stage} for r in state.history]
        for p in body.values():
            p.requires_grad_(True)

    # -- prediction ---------------------------------------------------------------------------
    def embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """Backbone embeddings (N, num_features) of uint8 images, in bf16 where the CPU is fast at it
        (computed once per tensor inside shared_embeddings())."""
        device = resolve_device(self.device)
        net = self.net_.to(device)
        bf16 = use_bf16(self.bf16, device, net, images[:64])
        shared = _SHARED.get() if self.mode != "finetune" else None      # a fine-tuned body is its own
        # The tensor itself is kept with its embeddings, so its memory (and address) cannot be reused.
        key = (self.backbone, self._side(), bf16, images.data_ptr(), tuple(images.shape), tuple(images.stride()))
        if shared is not None and key in shared:
            return shared[key][1]
        with progress_bar(len(images) if len(images) > 256 else 0, f"embedding with {self.backbone}") as advance:
            found = predict_logits(net, images, device=device, bf16=bf16, channels_last=bf16, batch_size=128,
                                   forward=net.embed, progress=advance)
        if shared is not None:
            shared[key] = (images, found)
        return found

    @property
    def has_logits(self) -> bool:
        return self.mode != "knn"      # knn mode's probabilities are votes; its head is never trained

    @property
    def logits_are_votes(self) -> bool:
        return self.mode == "knn"

    def _predict_proba(self, images: torch.Tensor) -> torch.Tensor:
        if self.mode != "knn":
            return super()._predict_proba(images)
        votes, _ = self._knn_votes(images)
        return as_probabilities(votes, self.task_.multi_label).float()

    def _logits(self, images: torch.Tensor) -> torch.Tensor:
        # knn mode never trains its head: its logits are the log-votes, as for the kNN classifier.
        return super()._logits(images) if self.mode != "knn" else Classifier._logits(self, images)

    def _decide(self, inputs: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        if self.mode != "knn":
            return super()._decide(inputs)
        return predictions_from_votes(*self._knn_votes(inputs), self.task_)

    def attribution_network(self) -> tuple[nn.Module, nn.Module]:
        """The network's logits, or in knn mode (whose head is never trained) NeighbourScores: each
        class's summed cosine similarity to the k nearest training embeddings, the votes' evidence."""
        trunk = self.net_.backbone.body
        if self.mode != "knn":
            return self.net_, trunk
        return NeighbourScores(self.net_, self.reference_, self.labels_, self.k, len(self.class_names_)), trunk

    def _knn_votes(self, images: torch.Tensor):
        distances, indices = self._search.search(_unit(self.embeddings(images)), min(self.k, len(self.labels_)))
        return vote(distances, self.labels_[indices], len(self.class_names_))

    # -- saving -------------------------------------------------------------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        tensors = super().state_tensors()
        if self.mode == "knn":
            tensors |= {"knn.reference": self.reference_, "knn.labels": self.labels_}
        return tensors

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.net_ = self.new_network(len(self.class_names_), pretrained=False)
        if self.mode == "knn":
            self.reference_, self.labels_ = tensors.pop("knn.reference"), tensors.pop("knn.labels")
            self._search = ExactSearch(self.reference_, "l2")
        self.net_.load_state_dict(tensors)
        self.net_.eval()


class NeighbourScores(nn.Module):
    """Per class, the votes of an image's k nearest training embeddings (how many carry the class)
    plus their summed cosine similarity / (2k + 1). That term is below one vote, so the scores rank
    the classes as the vote does (ties aside), and unlike the vote they are differentiable in the
    image: an explanation follows the similarity that brought the class its neighbours."""

    def __init__(self, net: TransferNetwork, reference: torch.Tensor, labels: torch.Tensor, k: int, n_classes: int):
        super().__init__()
        self.net, self.k, self.n_classes = net, min(k, len(labels)), n_classes
        self.register_buffer("reference", reference.float())
        self.register_buffer("labels", labels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        similarity = _unit(self.net.embed(x)) @ self.reference.T
        top, indices = similarity.topk(self.k, dim=1)
        labels = self.labels[indices]
        carries = (labels.float() if labels.ndim == 3
                   else F.one_hot(labels, self.n_classes).float())             # (N, k, classes)
        return (carries * (1 + top[:, :, None] / (2 * self.k + 1))).sum(1)


def _unit(embeddings: torch.Tensor) -> torch.Tensor:
    return F.normalize(embeddings.float(), dim=1)


def _is_head(name: str) -> bool:
    return name.startswith("backbone.body.classifier")


def _transfer_class(name: str) -> type:
    backbone = name.split(":", 1)[1]
    cls = type(f"Transfer_{backbone}", (TransferClassifier,), {"backbone": backbone,
               "description": f"transfer learning from ImageNet-pretrained {backbone} (probe, knn, finetune)"})
    return dataclass(cls, repr=False, eq=False)


register_prefix("transfer:", _transfer_class)
