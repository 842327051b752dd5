"""Images left in their files: `ImageFiles`, decoded when indexed, for datasets larger than memory.

An ImageDataset's images are a uint8 tensor (N, C, H, W) in memory, or an ImageFiles of the
same shape that decodes the rows asked for, on the fly, exactly as loading into memory would
(the same Preprocessing). Code that reads images in slices (prediction, evaluation, the
trainer's batches) works on either; `subset` picks files without decoding anything.

For training, `batches(index_batches)` decodes whole batches in DataLoader worker processes,
a few batches ahead of the trainer, so memory stays bounded by the batches in flight. A file
that can no longer be read (corrupted or deleted after listing) comes back as a row of zeros
with its flag off, and the trainer skips it; a worker never dies of a bad file.

Everything else that reads a whole split (eval, predict over a folder, index, doctor, export's
calibration) goes through `image_batches(images, batch_size)`: the same workers for streamed
images, plain slices for images in memory, one loop for both, with a progress bar in images/s.

With a cache folder (`--cache DIR`), every decoded row is also written to a memory-mapped file
there, once, so later epochs and later runs read rows instead of decoding files. Each row keeps
its file's size and modification time; a file changed since is decoded again, never served stale.

A row's bytes come from a file of its own (a Path) or from a Member of an archive (a sample of
a tar shard, imgcls.data.shards, read with one seek): all else is the same for both.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from imgcls.data.images import ImageSource, Preprocessing, UnreadableImage, crop_frames, decode_image, decode_many
from imgcls.errors import ImgclsError
from imgcls.progress import progress_bar

DEFAULT_WORKERS = min(8, os.cpu_count() or 1)
PREFETCH = 2          # batches each DataLoader worker decodes ahead of the reader


class ImageFiles:
    """Files (or archive members) decoded on demand into uint8 rows (C, H, W) of one Preprocessing."""

    def __init__(self, files: Sequence[ImageSource], prep: Preprocessing, flipped: bool = False,
                 workers: int = DEFAULT_WORKERS, cache: Path | None = None):
        self.files, self.prep, self.flipped, self.workers = list(files), prep, flipped, workers
        self.cache = DecodedCache(Path(cache), self.files, prep) if cache is not None else None

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
        """The decoded rows of a slice, an index tensor or a list (or one row, for a whole number);
        a file unreadable now is an error."""
        if isinstance(index, (int, np.integer)):
            return self[[int(index)]][0]
        images, ok = self.decode(self._positions(index))
        if not ok.all():
            bad = self.files[self._positions(index)[int((~ok).nonzero()[0])]]
            raise ImgclsError(f"{bad}: no longer a readable image (it was when the dataset was listed)")
        return images

    def flip(self, dim: int) -> ImageFiles:
        """The mirror images (what test-time augmentation asks for), still undecoded."""
        if dim not in (3, -1):
            raise ImgclsError("streamed images can only be flipped horizontally")
        return self._like(self.files, flipped=not self.flipped)

    def to(self, *_, **__) -> ImageFiles:
        return self        # stays on disk; batches move to the device once decoded

    # -- streaming -------------------------------------------------------------------------------
    def subset(self, indices) -> ImageFiles:
        return self._like([self.files[i] for i in np.asarray(indices, dtype=np.int64).reshape(-1)])

    def concat(self, other: ImageFiles) -> ImageFiles:
        return self._like(self.files + other.files)

    def _like(self, files: list[ImageSource], flipped: bool | None = None) -> ImageFiles:
        return ImageFiles(files, self.prep, self.flipped if flipped is None else flipped, self.workers,
                          self.cache.folder if self.cache is not None else None)

    def decode(self, positions: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(images (n, C, H, W) uint8, ok (n,) bool): rows that failed to decode are zeros, not ok."""
        images, ok, _ = self.decode_reporting(positions)
        return images, ok

    def decode_reporting(self, positions: Sequence[int], crops=None
                         ) -> tuple[torch.Tensor, torch.Tensor, dict[int, str]]:
        """decode, and why each row that is not ok failed: {row: reason}, the reason a file skipped
        while loading into memory would get ("truncated or corrupt image", ...).

        crops: a random resized crop (top, left, height, width) per row (see batches), each row
        resampled from its crop instead of whole: from the file's own pixels, or with a cache from
        the cached row (crop_frames, as images in memory are cropped)."""
        images = np.zeros((len(positions), *self.shape[1:]), np.uint8)
        ok = np.zeros(len(positions), bool)
        reasons: dict[int, str] = {}
        stamps = [file_stamp(self.files[i]) for i in positions] if self.cache is not None else None
        if self.cache is not None:
            ok[:] = self.cache.read(positions, stamps, images)
        todo = np.flatnonzero(~ok)
        # Without a cache, crops are taken from the files; a cache needs whole rows to keep.
        direct = crops is not None and self.cache is None
        boxes = [tuple(crops[row]) if direct else None for row in todo]
        if len(todo) > 16:
            decoded, good, bad = decode_many([self.files[positions[row]] for row in todo], self.prep, crops=boxes)
            images[todo[good]] = decoded
            ok[todo[good]] = True
            failed = np.delete(todo, good)          # decode_many lists its failures in order
            reasons.update({int(row): reason for row, (_, reason) in zip(failed, bad)})
        else:
            for row, box in zip(todo, boxes):
                try:
                    images[row] = decode_image(self.files[positions[row]], self.prep, box)
                    ok[row] = True
                except UnreadableImage as exc:
                    reasons[int(row)] = str(exc)
        if self.cache is not None:
            self.cache.write([positions[row] for row in todo if ok[row]], images[todo[ok[todo]]],
                             [stamps[row] for row in todo if ok[row]])
        tensor = torch.from_numpy(images)
        if crops is not None and not direct and ok.any():
            kept = torch.from_numpy(ok)
            tensor[kept] = crop_frames(tensor[kept], np.asarray(crops)[ok])
        return (tensor.flip(3) if self.flipped else tensor), torch.from_numpy(ok), reasons

    def batches(self, index_batches: Sequence[torch.Tensor], workers: int | None = None, crops=None
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(images, ok) for each batch of positions, decoded in `workers` processes, two batches ahead each.

        crops: for each batch, its rows' random resized crops, (n, 4) rows (top, left, height,
        width) in the pixels of the decoded size (imgcls.training.augment.crop_boxes), or None:
        the workers cut the crops while decoding, so each image is decoded and resampled once."""
        items = list(index_batches) if crops is None else list(zip(index_batches, crops))
        for images, ok, _ in self._loader(items, self.workers if workers is None else workers):
            yield images, ok

    def _loader(self, items: Sequence, workers: int) -> torch.utils.data.DataLoader:
        """(images, ok, reasons) per batch of positions (or of (positions, crops)), in order; workers
        processes decode, each at most PREFETCH batches ahead, so at most workers x PREFETCH batches
        are decoded and unread."""
        return torch.utils.data.DataLoader(_BatchDecoder(self), batch_size=None, sampler=list(items),
                                           num_workers=workers, prefetch_factor=PREFETCH if workers else None)

    def decoded_bytes(self) -> int:
        return int(np.prod(self.shape))

    def unreadable_reason(self, position: int) -> str:
        """Why a row that decoded when listed no longer does, for the run's report."""
        source = self.files[position]
        if isinstance(source, Path):
            return "could not be decoded while training (changed or removed after the dataset was listed)"
        return f"could not be read from {source} while training (cut short or changed after the dataset was listed)"

    def _positions(self, index) -> list[int]:
        if isinstance(index, slice):
            return list(range(*index.indices(len(self.files))))
        return np.asarray(index.cpu() if isinstance(index, torch.Tensor) else index, dtype=np.int64).tolist()


class DecodedCache:
    """Decoded rows of one list of files under one Preprocessing, on disk in folder/<key>/:
    rows.u8 (N, C, H, W) and stamps.i64 (N, 2), each row's file size and mtime (ns) when it was
    written (0, 0: not yet). The key hashes the Preprocessing and the file list, so another
    decode or another dataset never shares rows. Opened lazily in each process (workers too)."""

    def __init__(self, folder: Path, files: Sequence[Path], prep: Preprocessing):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ImgclsError(f"--cache {folder}: cannot keep decoded images there ({exc.strerror or exc})") from exc
        self.folder, self.count, self.shape = folder, len(files), (len(files), prep.channels, *prep.size)
        key = json.dumps([prep.to_dict(), [str(f) for f in files]]).encode()
        self.path = folder / hashlib.sha256(key).hexdigest()[:20]
        self._rows = self._stamps = None

    def read(self, positions: Sequence[int], stamps: list[tuple[int, int]], out: np.ndarray) -> np.ndarray:
        """Fills out's rows that the cache holds for files unchanged since; returns which it filled."""
        rows, saved = self._open()
        hit = np.array([stamp[0] >= 0 and tuple(saved[i]) == stamp for i, stamp in zip(positions, stamps)], bool)
        if hit.any():
            out[hit] = rows[np.asarray(positions)[hit]]
        return hit

    def write(self, positions: list[int], images: np.ndarray, stamps: list[tuple[int, int]]) -> None:
        if not positions:
            return
        rows, saved = self._open()
        rows[positions] = images          # the row first, then the stamp that vouches for it
        saved[positions] = stamps

    def _open(self) -> tuple[np.ndarray, np.ndarray]:
        if self._rows is None:
            self.path.mkdir(parents=True, exist_ok=True)
            self._rows = _mapped(self.path / "rows.u8", np.uint8, self.shape)
            self._stamps = _mapped(self.path / "stamps.i64", np.int64, (self.count, 2))
        return self._rows, self._stamps


def _mapped(path: Path, dtype, shape: tuple[int, ...]) -> np.ndarray:
    """A writable memory map of path, created (zeros) where missing or of another size."""
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if not path.exists() or path.stat().st_size != size:
        with open(path, "wb") as f:
            f.truncate(size)
    return np.memmap(path, dtype=dtype, mode="r+", shape=shape)


def file_stamp(path: Path | ImageSource) -> tuple[int, int]:
    """(size, mtime in ns) of a file (a member's: its archive's), or (-1, -1) where it is gone."""
    try:
        stat = path.stat()
    except OSError:
        return (-1, -1)
    return (stat.st_size, stat.st_mtime_ns)


def image_batches(images: torch.Tensor | ImageFiles, batch_size: int, description: str | None = None
                  ) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[tuple[int, str]]]]:
    """Every row of images, batch_size rows at a time, in order: (positions (n,) int64 of the rows
    that decoded, their uint8 images (n, C, H, W), [(position, reason)] of the rows that did not).

    The one way commands read a whole split: in-memory images are sliced; streamed ones are decoded
    by DataLoader worker processes a few batches ahead of the reader, so memory holds the batches in
    flight (at most workers x PREFETCH + 1), never the split, and a file that no longer decodes is
    reported with its reason instead of stopping the run. With a description, a progress bar
    counts the images and shows images/s (when there is more than one batch)."""
    starts = range(0, len(images), batch_size)
    with progress_bar(len(images) if description and len(starts) > 1 else 0, description or "", unit="images") as advance:
        if isinstance(images, torch.Tensor):
            for start in starts:
                batch = images[start:start + batch_size]
                yield torch.arange(start, start + len(batch)), batch, []
                advance(len(batch))
            return
        positions = [torch.arange(start, min(start + batch_size, len(images))) for start in starts]
        # One batch gains nothing from other processes; more are decoded by at most one worker each.
        workers = min(images.workers, len(positions)) if len(positions) > 1 else 0
        for rows, (decoded, ok, reasons) in zip(positions, images._loader(positions, workers)):
            yield rows[ok], decoded[ok], [(int(rows[row]), reason) for row, reason in sorted(reasons.items())]
            advance(len(rows))


def readable_sample(images: torch.Tensor | ImageFiles, count: int) -> torch.Tensor:
    """Up to `count` images spread evenly over images (all of them if fewer), leaving out any
    streamed file that no longer decodes: for statistics and timing, never for results."""
    positions = np.linspace(0, len(images) - 1, min(count, len(images))).round().astype(np.int64)
    if isinstance(images, torch.Tensor):
        return images if len(positions) == len(images) else images[torch.from_numpy(positions)]
    decoded, ok = images.decode(positions.tolist())
    return decoded[ok]


STATISTICS_CHUNK = 32     # rows widened to int32 at a time while summing pixel statistics


def pixel_statistics(images: torch.Tensor | ImageFiles, count: int, batch_size: int = 64
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and standard deviation (float32 (C,), pixels scaled to 0..1) of up to
    `count` images spread evenly over images (all of them if fewer), leaving out any streamed file
    that no longer decodes. The images are read batch_size at a time (streamed ones decoded by the
    workers, see image_batches) and summed exactly in integers, so memory holds a batch, not the
    sample, and the figures are the same in memory and streamed, however the rows are batched."""
    positions = np.linspace(0, len(images) - 1, min(count, len(images))).round().astype(np.int64)
    if isinstance(images, torch.Tensor):
        batches = (images[torch.from_numpy(positions[i:i + batch_size])] for i in range(0, len(positions), batch_size))
    else:
        batches = (batch for _, batch, _ in image_batches(images.subset(positions), batch_size))
    channels = images.shape[1]
    sums, squares, pixels = [0] * channels, [0] * channels, 0
    for batch in batches:
        for start in range(0, len(batch), STATISTICS_CHUNK):
            chunk = batch[start:start + STATISTICS_CHUNK].to(torch.int32)      # 255 ** 2 fits; uint8 would wrap
            sums = [a + b for a, b in zip(sums, chunk.sum((0, 2, 3), dtype=torch.int64).tolist())]
            squares = [a + b for a, b in zip(squares, (chunk * chunk).sum((0, 2, 3), dtype=torch.int64).tolist())]
        pixels += batch.shape[0] * batch.shape[2] * batch.shape[3]
    if pixels < 2:
        raise ImgclsError("no readable images to take pixel statistics from")
    # Python integers: exact, so the unbiased variance (as torch.std) suffers no cancellation.
    mean = [s / pixels / 255 for s in sums]
    std = [max((q * pixels - s * s) / (pixels * (pixels - 1)), 0) ** 0.5 / 255 for s, q in zip(sums, squares)]
    return torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)


class _BatchDecoder(torch.utils.data.Dataset):
    """What a DataLoader worker runs: one whole batch of positions per item (one trip between
    processes per batch, not per image)."""

    def __init__(self, files: ImageFiles):
        self.files = files

    def __getitem__(self, item) -> tuple[torch.Tensor, torch.Tensor, dict[int, str]]:
        positions, crops = item if isinstance(item, tuple) else (item, None)
        positions = positions.tolist() if isinstance(positions, torch.Tensor) else list(positions)
        if torch.utils.data.get_worker_info() is not None:
            # One thread per worker process; without workers this runs in the caller's process,
            # whose thread count (the network's, next) must stay as it was.
            torch.set_num_threads(1)
        return self.files.decode_reporting(positions, None if crops is None else np.asarray(crops))

    def __len__(self) -> int:
        return len(self.files)
