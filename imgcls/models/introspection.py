"""Reading a built network, the same way for imgcls's own networks (imgcls.models.networks), timm's
and the transfer networks: its first layer and that layer's weights as images, its stages (the
feature map at each resolution), the outputs of named layers, and its weight count.

What it cannot read from the modules' types it finds by running one blank image through the
network with hooks, so registration order never has to be execution order. The classifiers'
first_layer_filters, feature_stages and feature_maps (imgcls.models.neural) come here; the
course's visuals (imgcls.visuals) and the explanations ask those.
"""

from __future__ import annotations

import torch
from torch import nn

from imgcls.errors import ImgclsError
from imgcls.models.networks import Network


class _Reached(Exception):
    """Stops a forward pass once the layer looked for has been reached."""


@torch.no_grad()
def first_layer(net: nn.Module, input_shape: tuple[int, int, int]) -> nn.Module | None:
    """The first convolution or linear layer an input of shape (C, H, W) meets in net, found by
    running one zero image through it (registration order need not be execution order); None if
    it meets neither."""
    found: list[nn.Module] = []

    def reached(module: nn.Module, _inputs) -> None:
        found.append(module)
        raise _Reached
    handles = [m.register_forward_pre_hook(reached) for m in net.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    try:
        net.eval()(_zeros_for(net, input_shape))
    except _Reached:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return found[0] if found else None


def layer_images(layer: nn.Module | None, input_shape: tuple[int, int, int]) -> torch.Tensor | None:
    """A first layer's weights as images (units, channels, height, width): a convolution's kernels,
    or a linear layer's rows when it reads the flattened input image; None otherwise."""
    if isinstance(layer, nn.Conv2d):
        return layer.weight.detach().float()
    channels, height, width = input_shape
    if isinstance(layer, nn.Linear) and layer.in_features == channels * height * width:
        return layer.weight.detach().float().reshape(-1, channels, height, width)
    return None


def outputs_of(net: nn.Module, modules: list[nn.Module], x: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
    """{name: float32 CPU output of module} for one forward pass of net on x, stopped once all are reached."""
    outputs: dict[str, torch.Tensor] = {}

    def capture(name: str):
        def hook(_module, _inputs, output) -> None:
            outputs.setdefault(name, output.detach().float().cpu())
            if len(outputs) == len(set(names)):
                raise _Reached
        return hook
    handles = [module.register_forward_hook(capture(name)) for name, module in zip(names, modules)]
    try:
        net(x)
    except _Reached:
        pass
    finally:
        for handle in handles:
            handle.remove()
    missed = [name for name in names if name not in outputs]
    if missed:
        raise ImgclsError(f"layer {missed[0]!r} is not reached by a forward pass of this network")
    return {name: outputs[name] for name in names}


_PASSIVE = (nn.Dropout, nn.Dropout2d, nn.Identity)    # leave a feature map as it is (in eval mode)


@torch.no_grad()
def feature_stages(net: nn.Module, input_shape: tuple[int, int, int]) -> list[str]:
    """Names (as net.get_submodule takes them) of the modules whose outputs are the network's
    stages: its feature maps at each resolution, earliest first.

    A timm network's are its own `feature_info` modules; an imgcls Network's are, among the
    children of its `features` trunk that output a feature map (N, C, h, w), the last one at each
    map size (dropout skipped). Networks without feature maps (an MLP) have none."""
    for prefix, module in net.named_modules():
        base = f"{prefix}." if prefix else ""
        if isinstance(getattr(module, "feature_info", None), list) and module.feature_info:
            return [base + info["module"] for info in module.feature_info]
        if isinstance(module, Network):
            return [base + "features." + name for name in _last_per_size(net, module.features, input_shape)]
    return []


def _last_per_size(net: nn.Module, trunk: nn.Module, input_shape: tuple[int, int, int]) -> list[str]:
    sizes: list[tuple[str, tuple[int, int]]] = []
    children = [(name, child) for name, child in trunk.named_children() if not isinstance(child, _PASSIVE)]

    def record(name: str):
        def hook(_module, _inputs, output) -> None:
            if isinstance(output, torch.Tensor) and output.ndim == 4:
                sizes.append((name, tuple(output.shape[2:])))
        return hook
    handles = [child.register_forward_hook(record(name)) for name, child in children]
    try:
        net.eval()(_zeros_for(net, input_shape))
    finally:
        for handle in handles:
            handle.remove()
    return [name for i, (name, size) in enumerate(sizes) if i + 1 == len(sizes) or sizes[i + 1][1] != size]


def _zeros_for(net: nn.Module, input_shape: tuple[int, int, int]) -> torch.Tensor:
    """One black image on the network's device."""
    like = next(net.parameters(), None)
    return torch.zeros(1, *input_shape, device=like.device if like is not None else "cpu")


def count_parameters(module: nn.Module) -> int:
    """Number of weights, trainable or not (buffers such as BN running statistics excluded)."""
    return sum(p.numel() for p in module.parameters())
