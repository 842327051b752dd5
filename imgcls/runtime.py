"""Running a network over images: the device, bf16 and channels_last choices, a batched no-grad
forward pass on uint8 images, and flip test-time augmentation.

Running a network is not training: the trainer, the neural classifiers (and through them
prediction, serving and similarity search) and exported models all come here, so none of them
imports the training loop to get logits.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.distributed as dist
from torch import nn

from imgcls.errors import ImgclsError
from imgcls.fastpath import bf16_capable_cpu, bf16_is_faster

TTA_MODES = ("none", "flip", "multicrop")
# Images a network runs at a time when it predicts (at most; see rows_per_pass), and so the batch in
# which evaluation, indexing and the doctor read a whole split: a streamed split then meets the network in the same batches
# as the split in memory (512 is a multiple of an exported model's 64 too), and its probabilities
# come out identical. 512 keeps one batch of decoded photos small (224 px RGB: 77 MB as uint8,
# 308 MB as float32), and is past the point where bigger batches pay: on 2 CPU threads the course
# CNN predicted 28 px images 4x as fast in batches of 512 as of 16, and within 10% of batches of 2048.
PREDICT_BATCH = 512
PASS_BYTES = 2**25        # fewer in a pass where their float32 input would pass 32 MB (photos at 160 px and up)
READ_ROWS = 64            # streamed images are read (decoded by the workers) at least this many at a time


def rows_per_pass(shape) -> int:
    """Images per no-grad forward pass for images shaped (N, C, H, W): 512, halved until their
    float32 input fits PASS_BYTES (at least 8), so a pass's memory does not grow with the image
    size. A power of two: 512 and READ_ROWS stay multiples of it."""
    per_image = 4 * math.prod(shape[1:])
    rows = PREDICT_BATCH
    while rows > 8 and rows * per_image > PASS_BYTES:
        rows //= 2
    return rows


def rows_per_read(shape) -> int:
    """Images read at a time when a split is streamed through a network: a multiple of
    rows_per_pass (and of an exported model's 64), so each forward pass sees the same images as
    on the split in memory, and the outputs come out identical."""
    return max(READ_ROWS, rows_per_pass(shape))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            local = dist.get_rank() % torch.cuda.device_count() if dist.is_initialized() else 0
            return torch.device("cuda", local)
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ImgclsError(f"--device {name}: no CUDA device is available here")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ImgclsError("--device mps: no MPS device is available here")
    return torch.device(name)


def use_bf16(setting: str, device: torch.device, net: nn.Module | None = None, example: torch.Tensor | None = None
             ) -> bool:
    """Whether to run net (forward, no gradients) in bf16 autocast. auto: on CUDA, where the GPU has
    bf16; on a CPU with native bf16 instructions (AMX or AVX-512 bf16), where bf16 autocast runs
    net faster than fp32 on inputs like example, as measured once and cached (imgcls.fastpath);
    elsewhere, and without a network to measure, fp32. Training chooses its own, measured at its
    batch size (imgcls.training.execution)."""
    if setting != "auto":
        return setting == "on"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu" or net is None or example is None or not len(example) or not bf16_capable_cpu():
        return False
    return bf16_is_faster(net, example, channels_last=has_convolutions(net))


def use_channels_last(setting: str, device: torch.device, net: nn.Module, bf16: bool) -> bool:
    """auto: channels_last for convolutional networks in bf16 (on CPU and CUDA), where oneDNN and
    cuDNN have their fast kernels. In fp32 on the CPU it can be slower, so auto leaves it off there
    (training measures both layouts instead: imgcls.training.execution)."""
    if setting != "auto":
        return setting == "on"
    return has_convolutions(net) and bf16 and device.type in ("cpu", "cuda")


def has_convolutions(net: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in net.modules())


@torch.no_grad()
def predict_logits(net: nn.Module, images: torch.Tensor, *, device: torch.device, bf16: bool, channels_last: bool,
                   batch_size: int | None = None, forward=None, progress=None) -> torch.Tensor:
    """Float32 outputs on the CPU of forward (default: the network itself, giving logits) for
    uint8 images (N, C, H, W), in batches (default: rows_per_pass)."""
    net.eval()
    forward = forward or net
    batch_size = batch_size or rows_per_pass(images.shape)
    outputs = []
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast:
            outputs.append(forward(x).float().cpu())
        if progress is not None:
            progress(len(x))
    return torch.cat(outputs) if outputs else torch.empty(0)


def tta_views(images: torch.Tensor, tta: str) -> list[torch.Tensor]:
    """The views of images (N, C, H, W) whose predictions test-time augmentation averages: the
    images; with "flip" also their mirror images; with "multicrop" also each shifted by one pixel
    down-right and up-left (edges reflected), and those shifts' mirror images (six views, as in
    airbench's TTA)."""
    views = [images]
    if tta in ("flip", "multicrop"):
        views.append(images.flip(3))
    if tta == "multicrop" and min(images.shape[2:]) > 1:
        padded = torch.nn.functional.pad(images.float(), (1, 1, 1, 1), mode="reflect").to(images.dtype)
        h, w = images.shape[2:]
        for shifted in (padded[:, :, :h, :w], padded[:, :, 2:, 2:]):
            views += [shifted, shifted.flip(3)]
    return views


def with_tta(outputs_of, images: torch.Tensor, tta: str, activation=None):
    """Probabilities: activation(outputs_of(view)) averaged over tta_views(images, tta). activation
    is the model's task's (softmax, or a sigmoid per label) for logits, or None where outputs_of
    gives probabilities already. PyTorch and ONNX Runtime models both come here, so they average
    alike: probabilities, never logits."""
    def proba_of(x):
        return outputs_of(x) if activation is None else activation(outputs_of(x))
    views = tta_views(images, tta)
    return sum(proba_of(view) for view in views) / len(views)
