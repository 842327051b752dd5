"""Images left in their files: `ImageFiles`, decoded when indexed, for datasets larger than memory.

An ImageDataset's images are a uint8 tensor (N, C, H, W) in memory, or an ImageFiles of the
same shape that decodes the rows asked for, on the fly, exactly as loading into memory would
(the same Preprocessing). Code that reads images in slices (prediction, evaluation, the
trainer's batches) works on either; `subset` picks files without decoding anything.

For training, `batches(index_batches)` decodes whole batches in DataLoader worker processes,
a few batches ahead of the trainer, so memory stays bounded by the batches in flight. A file
that can no longer be read (corrupted or deleted after listing) comes back as a row of zeros
with its flag off, and the trainer skips it; a worker never dies of a bad file.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from imgcls.data.images import Preprocessing, UnreadableImage, decode_image, decode_many
from imgcls.errors import ImgclsError

DEFAULT_WORKERS = min(8, os.cpu_count() or 1)


class ImageFiles:
    """Files decoded on demand into uint8 rows (C, H, W) of one Preprocessing."""

    def __init__(self, files: Sequence[Path], prep: Preprocessing, flipped: bool = False,
                 workers: int = DEFAULT_WORKERS):
        self.files, self.prep, self.flipped, self.workers = list(files), prep, flipped, workers

    # -- what code written for a uint8 tensor asks of it ----------------------------------------
    def __len__(self) -> int:
        return len(self.files)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.files), self.prep.channels, *self.prep.size))

    @property
    def dtype(self) -> torch.dtype:
        return torch.uint8

    def __getitem__(self, index) -> torch.Tensor:
        """The decoded rows of a slice, an index tensor or a list; a file unreadable now is an error."""
        images, ok = self.decode(self._positions(index))
        if not ok.all():
            bad = self.files[self._positions(index)[int((~ok).nonzero()[0])]]
            raise ImgclsError(f"{bad}: no longer a readable image (it was when the dataset was listed)")
        return images

    def flip(self, dim: int) -> ImageFiles:
        """The mirror images (what test-time augmentation asks for), still undecoded."""
        if dim not in (3, -1):
            raise ImgclsError("streamed images can only be flipped horizontally")
        return ImageFiles(self.files, self.prep, not self.flipped, self.workers)

    def to(self, *_, **__) -> ImageFiles:
        return self        # stays on disk; batches move to the device once decoded

    # -- streaming -------------------------------------------------------------------------------
    def subset(self, indices) -> ImageFiles:
        return ImageFiles([self.files[i] for i in np.asarray(indices, dtype=np.int64).reshape(-1)], self.prep,
                          self.flipped, self.workers)

    def concat(self, other: ImageFiles) -> ImageFiles:
        return ImageFiles(self.files + other.files, self.prep, self.flipped, self.workers)

    def decode(self, positions: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(images (n, C, H, W) uint8, ok (n,) bool): rows that failed to decode are zeros, not ok."""
        images = np.zeros((len(positions), *self.shape[1:]), np.uint8)
        if len(positions) > 16:
            decoded, good, _ = decode_many([self.files[i] for i in positions], self.prep)
            images[good] = decoded
        else:
            good = []
            for row, i in enumerate(positions):
                try:
                    images[row] = decode_image(self.files[i], self.prep)
                    good.append(row)
                except UnreadableImage:
                    pass
        ok = np.zeros(len(positions), bool)
        ok[good] = True
        tensor = torch.from_numpy(images)
        return (tensor.flip(3) if self.flipped else tensor), torch.from_numpy(ok)

    def batches(self, index_batches: Sequence[torch.Tensor], workers: int | None = None
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(images, ok) for each batch of positions, decoded in `workers` processes, two batches ahead each."""
        workers = self.workers if workers is None else workers
        loader = torch.utils.data.DataLoader(_BatchDecoder(self), batch_size=None, sampler=list(index_batches),
                                             num_workers=workers, prefetch_factor=2 if workers else None)
        yield from loader

    def decoded_bytes(self) -> int:
        return int(np.prod(self.shape))

    def _positions(self, index) -> list[int]:
        if isinstance(index, slice):
            return list(range(*index.indices(len(self.files))))
        if isinstance(index, int):
            raise ImgclsError("index streamed images by slices or lists of positions")
        return np.asarray(index.cpu() if isinstance(index, torch.Tensor) else index, dtype=np.int64).tolist()


def readable_sample(images: torch.Tensor | ImageFiles, count: int) -> torch.Tensor:
    """Up to `count` images spread evenly over images (all of them if fewer), leaving out any
    streamed file that no longer decodes: for statistics and timing, never for results."""
    positions = np.linspace(0, len(images) - 1, min(count, len(images))).round().astype(np.int64)
    if isinstance(images, torch.Tensor):
        return images if len(positions) == len(images) else images[torch.from_numpy(positions)]
    decoded, ok = images.decode(positions.tolist())
    return decoded[ok]


class _BatchDecoder(torch.utils.data.Dataset):
    """What a DataLoader worker runs: one whole batch of positions per item (one trip between
    processes per batch, not per image)."""

    def __init__(self, files: ImageFiles):
        self.files = files

    def __getitem__(self, positions) -> tuple[torch.Tensor, torch.Tensor]:
        positions = positions.tolist() if isinstance(positions, torch.Tensor) else list(positions)
        torch.set_num_threads(1)
        return self.files.decode(positions)

    def __len__(self) -> int:
        return len(self.files)
