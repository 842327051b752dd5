"""What a training step holds in memory, and giving freed memory back to the system.

A step's memory is mostly the activations autograd keeps for the backward pass (and their
gradients while it runs), which grow with the batch and the image size: LeNet-5 on 192 px
photographs keeps about 4 MB an image, so a batch of 256 needs over 2 GB however small the network.
`step_bytes_per_image` measures it once, on two images, by counting the tensors autograd saves.

glibc's allocator keeps memory a process freed for reuse, and threads allocate from arenas of their
own, so a process that measured several executions (imgcls.training.execution) or trained at one
batch shape and then evaluated at another holds far more than it uses; `release_free_memory` hands
the free pages back (glibc's malloc_trim), before workers are forked, which would share them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

import torch
from torch import nn

BACKWARD_FACTOR = 2      # the saved activations, plus their gradients while the backward pass runs


def step_bytes_per_image(net: nn.Module, image_shape: tuple[int, ...]) -> int:
    """Bytes a training step of net holds per image of image_shape (C, H, W), in fp32: what autograd
    saves for the backward pass on a batch of two, each storage counted once, times BACKWARD_FACTOR.
    net is left as it was (mode, gradients, random state)."""
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    was_training = net.training
    device = next((p.device for p in net.parameters()), torch.device("cpu"))
    x = torch.zeros((2, *image_shape), device=device, requires_grad=True)
    with torch.random.fork_rng(devices=[]), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        net.train()
        net(x)
    net.train(was_training)
    params = {p.untyped_storage().data_ptr() for p in net.parameters()}
    activations = sum(size for ptr, size in saved.items() if ptr not in params)
    return BACKWARD_FACTOR * activations // 2


@functools.cache
def _libc():
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


def release_free_memory() -> bool:
    """Return the allocator's free pages to the system (glibc's malloc_trim); False where the C
    library has no such call (musl, macOS, Windows), which then keeps what it keeps."""
    libc = _libc()
    return bool(libc is not None and libc.malloc_trim(0))
