"""Readers for the classic array formats: MNIST-family IDX files and CIFAR's python batches."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np

from imgcls.errors import ImgclsError

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """One IDX file (gzipped or not) as an array of the shape its header gives."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise ImgclsError(f"{path}: corrupt gzip file ({exc})") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ImgclsError(f"{path}: not an IDX file (bad magic number)")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise ImgclsError(f"{path}: IDX file is truncated (header of {ndim} dimensions incomplete)")
    dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4).astype(np.int64)
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    payload = raw[4 + 4 * ndim:]
    if len(payload) != expected:
        raise ImgclsError(f"{path}: IDX file is truncated ({len(payload):,} of {expected:,} data bytes)")
    return np.frombuffer(payload, dtype=dtype).reshape(tuple(dims))


def find_idx_pair(folder: Path, split: str) -> tuple[Path, Path] | None:
    """The (images, labels) IDX files of a split ('train' or 'test', alias 't10k') in a folder."""
    keys = ("train",) if split == "train" else ("t10k", "test")
    files = [p for p in sorted(folder.iterdir()) if "idx" in p.name and p.is_file()]
    def pick(kind: str) -> Path | None:
        return next((p for p in files if kind in p.name and any(k in p.name for k in keys)), None)
    images, labels = pick("images"), pick("labels")
    return (images, labels) if images and labels else None


def is_idx_folder(folder: Path) -> bool:
    return folder.is_dir() and find_idx_pair(folder, "train") is not None


def read_idx_split(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    pair = find_idx_pair(folder, split)
    if pair is None:
        raise ImgclsError(f"{folder}: no {split} images/labels IDX files (expected names like "
                          f"{'train' if split == 'train' else 't10k'}-images-idx3-ubyte.gz)")
    images, labels = read_idx(pair[0]), read_idx(pair[1])
    if images.ndim not in (3, 4) or labels.ndim != 1 or len(images) != len(labels):
        raise ImgclsError(f"{folder}: {split} IDX shapes do not match: images {images.shape}, labels {labels.shape}")
    return images.astype(np.uint8, copy=False), labels.astype(np.int64)


# CIFAR's official files are pickles. We read them with an unpickler that can build only
# plain containers and NumPy arrays, so a hostile file cannot run code.
class _ArrayOnlyUnpickler(pickle.Unpickler):
    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")


def _load_batch(path: Path) -> dict:
    if not path.is_file():
        raise ImgclsError(f"missing CIFAR file {path}")
    try:
        with path.open("rb") as f:
            batch = _ArrayOnlyUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise ImgclsError(f"{path}: not a CIFAR python batch ({exc})") from exc
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}


def cifar_kind(folder: Path) -> str | None:
    if (folder / "batches.meta").is_file() and (folder / "data_batch_1").is_file():
        return "cifar10"
    if (folder / "meta").is_file() and (folder / "train").is_file() and (folder / "test").is_file():
        return "cifar100"
    return None


def read_cifar(folder: Path, coarse: bool = False):
    """CIFAR-10 or CIFAR-100 as (train_x, train_y, test_x, test_y, class_names), images N x 3 x 32 x 32."""
    kind = cifar_kind(folder)
    if kind == "cifar10":
        names = _load_batch(folder / "batches.meta")["label_names"]
        train = [_load_batch(folder / f"data_batch_{i}") for i in range(1, 6)]
        test = [_load_batch(folder / "test_batch")]
        key = "labels"
    elif kind == "cifar100":
        meta = _load_batch(folder / "meta")
        names = meta["coarse_label_names" if coarse else "fine_label_names"]
        train, test = [_load_batch(folder / "train")], [_load_batch(folder / "test")]
        key = "coarse_labels" if coarse else "fine_labels"
    else:
        raise ImgclsError(f"{folder}: not a CIFAR-10/100 python folder")

    def stack(batches):
        x = np.concatenate([np.asarray(b["data"], dtype=np.uint8) for b in batches]).reshape(-1, 3, 32, 32)
        y = np.concatenate([np.asarray(b[key], dtype=np.int64) for b in batches])
        return x, y
    # Files re-pickled by Python 3 hold the names as bytes (the official Python 2 ones load as str).
    return (*stack(train), *stack(test), [n.decode() if isinstance(n, bytes) else str(n) for n in names])
