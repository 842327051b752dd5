"""The layers of a network that an explanation can read: every module with a feature map.

A layer is a named submodule of the network's trunk whose output is a 4-D map (N, C, h, w), run
at or after the first convolution (so the input's own adapters and normalisation are not
layers). Its *stages* are the short list shown to people: per resolution the network passes
through, the module that gives the last map at that resolution (the outermost one, where a
container only hands on its last child's map). The default layer is the last stage: the last
convolutional stage, whose map Grad-CAM reads, as its authors did.

The layers are found by running the network once on a blank image with forward hooks, so one
rule fits imgcls's own networks, timm's and the transfer networks alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from imgcls.errors import ImgclsError

SHOWN_LIMIT = 40       # a layer error lists every layer up to this many, else the stages


@dataclass(frozen=True)
class Layers:
    names: tuple[str, ...]          # every layer, in the order the network runs them
    stages: tuple[str, ...]         # one per resolution, the last of them the default
    modules: dict[str, nn.Module]

    @property
    def default(self) -> str:
        return self.stages[-1]

    def module(self, name: str | None, model_name: str) -> tuple[str, nn.Module]:
        """(name, module) of the layer asked for, or of the default; an unknown name is an error
        that lists the valid ones."""
        name = name or self.default
        if name not in self.modules:
            listed = self.names if len(self.names) <= SHOWN_LIMIT else self.stages
            more = "" if len(self.names) <= SHOWN_LIMIT else (
                f" (its stages; any of its {len(self.names)} modules with a feature map also works, "
                "named as in the network's named_modules())")
            raise ImgclsError(f"no layer {name!r} in this {model_name} network; valid: {', '.join(listed)}{more}; "
                              f"default: {self.default}")
        return name, self.modules[name]


@dataclass
class _Seen:
    name: str
    module: nn.Module
    output: torch.Tensor
    input_size: tuple[int, ...] | None      # the spatial size of its input map, if it took one
    order: int

    @property
    def size(self) -> tuple[int, ...]:
        return tuple(self.output.shape[2:])


def find_layers(scores: nn.Module, trunk: nn.Module, example: torch.Tensor, model_name: str) -> Layers:
    """The layers of trunk (a submodule of scores), found by running scores on example (1, C, H, W).
    A network without convolutions has none: an error saying which methods still apply."""
    seen: list[_Seen] = []
    conv_started = False

    def hook(name: str):
        def record(module, inputs, output):
            nonlocal conv_started
            # Hooks run as modules finish (a container after its children), so a convolution's
            # own hook is the first to count.
            conv_started = conv_started or isinstance(module, nn.Conv2d)
            if conv_started and isinstance(output, torch.Tensor) and output.ndim == 4 and output[0, 0].numel() > 1:
                first = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else None
                size = tuple(first.shape[2:]) if first is not None and first.ndim == 4 else None
                seen.append(_Seen(name, module, output, size, len(seen)))
        return record

    named = [(name, module) for name, module in trunk.named_modules() if name]
    handles = [module.register_forward_hook(hook(name)) for name, module in named]
    try:
        with torch.no_grad():
            scores.eval()(example)
    finally:
        for handle in handles:
            handle.remove()
    if not seen:
        raise ImgclsError(f"the {model_name} network has no convolutional layer with a feature map, so Grad-CAM "
                          "does not apply; use --method saliency, integrated-gradients or occlusion")
    order = {name: i for i, (name, _) in enumerate(named)}
    return Layers(names=tuple(sorted({s.name for s in seen}, key=order.__getitem__)),
                  stages=tuple(_stages(seen)), modules={s.name: s.module for s in seen})


def _stages(seen: list[_Seen]) -> list[str]:
    """Per run of equal resolution, the module giving that run's last map: the outermost of those
    handing on the same map, but not a container of the previous stage too. Modules that run
    inside a downsampling block before its downsampling (an inverted residual's expansion) belong
    to the next stage, not to this one, so they are passed over."""
    kept = [s for s in seen if not _before_a_downsampling(s, seen)]
    stages: list[str] = []
    for i, entry in enumerate(kept):
        if i + 1 < len(kept) and kept[i + 1].size == entry.size:
            continue
        same = [s for s in kept if s.output is entry.output]
        previous = stages[-1] if stages else None
        candidates = [s for s in same if previous is None or not _contains(s.name, previous)] or same
        best = min(candidates, key=lambda s: (s.name.count("."), s.order))
        if best.name not in stages:
            stages.append(best.name)
    return stages


def _before_a_downsampling(entry: _Seen, seen: list[_Seen]) -> bool:
    """Whether entry lies inside a block that takes one resolution to one other, at the first."""
    for block in seen:
        if (block is not entry and _contains(block.name, entry.name) and block.input_size is not None
                and block.input_size != block.size and entry.size == block.input_size):
            sizes = {s.size for s in seen if _contains(block.name, s.name)}
            if sizes <= {block.input_size, block.size}:
                return True
    return False


def _contains(outer: str, inner: str) -> bool:
    return inner == outer or inner.startswith(outer + ".")
