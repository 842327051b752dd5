"""Initialisations the trainer can give any network (ideas from Keller Jordan's airbench):

- `whiten_first_convolution`: the first convolution's filters become the principal directions of
  the image patches it sees, scaled to unit variance (patch whitening), in +/- pairs so a ReLU
  after them keeps both signs; the network starts from decorrelated inputs instead of random
  projections of correlated pixels;
- `dirac_convolutions`: every other convolution starts as an identity on its first input
  channels (each of its first min(in, out) filters passes one input channel through), so a deep
  stack starts close to a shallow one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from imgcls.errors import ImgclsError

WHITENING_EPS = 5e-4     # added to the patch covariance's eigenvalues: tiny directions are not blown up
WHITENING_PIXELS = 2_000_000    # pixels of training images whose patches estimate the covariance


def first_convolution(net: nn.Module, images: torch.Tensor) -> tuple[nn.Conv2d, torch.Tensor]:
    """The first Conv2d that net's forward pass reaches on images, and its input (the images as that
    convolution sees them: normalised, and through whatever comes before it)."""
    found: list = []

    def capture(module, inputs):
        found.append((module, inputs[0].detach()))
        raise _Reached

    handles = [m.register_forward_pre_hook(capture) for m in net.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            net(images)
    except _Reached:
        pass
    finally:
        for handle in handles:
            handle.remove()
    if not found:
        raise ImgclsError("--whiten needs a network with a convolution")
    return found[0]


class _Reached(Exception):
    pass


@torch.no_grad()
def whiten_first_convolution(net: nn.Module, images: torch.Tensor) -> nn.Conv2d:
    """Set the first convolution's filters to the whitening directions of its input patches, taken
    from images (uint8 or float, a few thousand suffice): eigenvectors of the patches' covariance
    divided by the square roots of their eigenvalues, largest first, each followed by its negative.
    Filters beyond twice the patch size keep their initialisation; the bias (if any) is zeroed.
    Returns the convolution."""
    was_training = net.training
    net.eval()
    try:
        conv, inputs = first_convolution(net, images.float() if not images.is_floating_point() else images)
    finally:
        net.train(was_training)
    if conv.groups != 1:
        raise ImgclsError("--whiten needs a first convolution without groups")
    patches = F.unfold(inputs.float(), conv.kernel_size, dilation=conv.dilation).transpose(1, 2)
    patches = patches.reshape(-1, patches.shape[-1]).double()
    patches = patches - patches.mean(0)
    covariance = patches.T @ patches / len(patches)
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)        # ascending
    filters = (eigenvectors / (eigenvalues.clamp_min(0) + WHITENING_EPS).sqrt()).T.flip(0)
    paired = torch.stack([filters, -filters], 1).flatten(0, 1)      # v1, -v1, v2, -v2, ...
    count = min(conv.out_channels, len(paired))
    conv.weight[:count] = paired[:count].view(count, *conv.weight.shape[1:]).to(conv.weight.dtype)
    if conv.bias is not None:
        conv.bias.zero_()
    return conv


@torch.no_grad()
def dirac_convolutions(net: nn.Module, skip: nn.Module | None = None) -> int:
    """Make each Conv2d (but skip) with odd square kernels and no groups an identity on its first
    min(in, out) channels: filter i passes input channel i through, the other filters keep their
    initialisation. Returns how many convolutions changed."""
    changed = 0
    for m in net.modules():
        if (isinstance(m, nn.Conv2d) and m is not skip and m.groups == 1
                and all(k % 2 for k in m.kernel_size)):
            n = min(m.in_channels, m.out_channels)
            nn.init.dirac_(m.weight[:n])
            changed += 1
    return changed
