"""Writing a dataset as WebDataset tar shards with a manifest (`imgcls shards`; the format is in
imgcls.data.shards).

Image files go into the shards as they are, their encoded bytes untouched, so a shard decodes to
exactly what the file did; images that only exist as arrays (Fashion-MNIST, CIFAR) are written as
lossless PNGs. Each split the source has is written in the source's order, so loading the shards
gives the same splits, the seeded ones included, as loading the source.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import webdataset as wds
from PIL import Image

from imgcls.data.dataset import DatasetSplits, SkippedFile, relative_name
from imgcls.data.images import IMAGE_SUFFIXES, UnreadableImage, probe_image
from imgcls.data.load import DataOptions, DatasetFiles, dataset_files, load_dataset
from imgcls.data.shards import FORMAT, MANIFEST, VERSION, read_manifest
from imgcls.errors import ImgclsError
from imgcls.progress import console, progress_bar

_FORMAT_SUFFIX = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tiff"}


@dataclass
class Sample:
    """One image as it goes into a shard: its encoded bytes, their extension, its labels."""

    name: str
    data: bytes
    ext: str
    label: int | tuple[int, ...]
    probe: tuple[int, int, bool]   # height, width, grayscale


def write_shards(source: str | Path, out: Path, shard_size: int) -> dict:
    """Write source's splits into tar shards of about shard_size bytes each in out, and
    out/manifest.json; returns the manifest."""
    out = Path(out)
    files = dataset_files(source)
    if files is not None:
        classes, multi_label, name, names = files.classes, files.multi_label, Path(files.root).name, "paths"
        if Path(source).is_file():
            name = Path(source).stem
        splits, total, preprocessing = _file_samples(files), sum(len(fl.paths) for fl in files.lists.values()), None
    else:
        data = load_dataset(source, DataOptions(val_fraction=0, test_fraction=0, data_mode="memory"))
        classes, multi_label, name, names = data.class_names, data.train.multi_label, data.name, "ids"
        splits, total = _array_samples(data), len(data.train) + len(data.test)
        preprocessing = data.train.preprocessing.to_dict()
    _prepare(out)
    manifest = {"format": FORMAT, "version": VERSION, "name": name, "source": str(Path(source).resolve()) if Path(source).exists() else str(source), "classes": classes,
                "task": "multi-label" if multi_label else "single-label", "names": names,
                "preprocessing": preprocessing, "splits": {}}
    sizes, gray, skipped = Counter(), True, []
    with progress_bar(total, "writing shards", unit="images") as advance:
        for split, samples in splits:
            kept = []
            for sample in samples:
                if isinstance(sample, SkippedFile):
                    skipped.append(sample)
                else:
                    sizes[sample.probe[:2]] += 1
                    gray &= sample.probe[2]
                    kept.append(sample)
                advance()
            if kept:
                manifest["splits"][split] = _write_split(split, kept, out, shard_size, classes, multi_label)
    if not manifest["splits"]:
        raise ImgclsError(f"{source}: none of its {total} files is a readable image; no shards written")
    manifest |= {"image_sizes": [[h, w, n] for (h, w), n in sorted(sizes.items())], "grayscale": bool(gray),
                 "skipped": [s.to_dict() for s in skipped]}
    temporary = out / (MANIFEST + ".partial")
    temporary.write_text(json.dumps(manifest))
    temporary.replace(out / MANIFEST)     # the manifest appears last, once every shard it lists is whole
    if skipped:
        console.print(f"[yellow]warning:[/] left out {len(skipped)} unreadable file(s): "
                      + ", ".join(f"{s.path} ({s.reason})" for s in skipped[:5]) + (" ..." if len(skipped) > 5 else ""))
    return manifest


def _prepare(out: Path) -> None:
    """out as a folder, without the shards of an earlier manifest there (which the new one replaces)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ImgclsError(f"--out {out}: cannot write shards there ({exc.strerror or exc})") from exc
    if (out / MANIFEST).is_file():
        old = read_manifest(out)
        (out / MANIFEST).unlink()
        for part in old["splits"].values():
            for shard in part["shards"]:
                (out / shard["file"]).unlink(missing_ok=True)


def _write_split(split: str, samples: list[Sample], out: Path, shard_size: int, classes: list[str],
                 multi_label: bool) -> dict:
    """One split's shards, then where in them each sample's image lies (read back from the tar headers)."""
    keys = [f"{split}_{i:08d}" for i in range(len(samples))]
    shard_of: list[str] = []
    pattern = str(out).replace("%", "%%") + f"/{split}-%06d.tar"     # ShardWriter fills in %06d
    with wds.ShardWriter(pattern, maxsize=shard_size, maxcount=2**62, verbose=0, encoder=False, mtime=0) as writer:
        for key, sample in zip(keys, samples):
            writer.write(_entries(key, sample, classes, multi_label))
            shard_of.append(Path(writer.fname).name)
    files = list(dict.fromkeys(shard_of))
    where = {}
    for file in files:
        with tarfile.open(out / file) as tar:
            where |= {member.name: (member.offset_data, member.size) for member in tar}
    offsets, lengths = zip(*(where[f"{key}.{sample.ext}"] for key, sample in zip(keys, samples)))
    if list(lengths) != [len(sample.data) for sample in samples]:
        raise ImgclsError(f"{out}: the shards just written do not hold the images given (disk full?)")
    index = {file: i for i, file in enumerate(files)}
    return {"count": len(samples),
            "shards": [{"file": file, "bytes": (out / file).stat().st_size, "count": shard_of.count(file)}
                       for file in files],
            "samples": {"key": keys, "name": [s.name for s in samples], "shard": [index[f] for f in shard_of],
                        "offset": list(offsets), "size": list(lengths),
                        "label": [list(s.label) if multi_label else s.label for s in samples]}}


def _entries(key: str, sample: Sample, classes: list[str], multi_label: bool) -> dict:
    """A WebDataset sample: the image, its labels as JSON and, for single-label data, the class index."""
    labels = {"labels": [classes[i] for i in sample.label]} if multi_label else {"label": classes[sample.label]}
    entries = {"__key__": key, sample.ext: sample.data,
               "json": json.dumps({"name": sample.name, **labels}).encode()}
    if not multi_label:
        entries["cls"] = str(sample.label).encode()
    return entries


def _file_samples(files: DatasetFiles) -> Iterator[tuple[str, Iterator[Sample | SkippedFile]]]:
    """Per split, each file's original bytes (or why it is left out)."""
    def samples(split: str):
        fl = files.lists[split]
        for path, label in zip(fl.paths, fl.labels):
            name = relative_name(path, files.root)
            try:
                probe = probe_image(path)
                yield Sample(name, path.read_bytes(), _extension(path), label, probe)
            except (UnreadableImage, OSError) as exc:
                yield SkippedFile(name, str(exc))
    return ((split, samples(split)) for split in files.lists)


def _array_samples(data: DatasetSplits) -> Iterator[tuple[str, Iterator[Sample]]]:
    """Per split the source has (train and test, or "all"), each image as a PNG."""
    def samples(part):
        names = part.names("all")
        labels = [tuple(np.flatnonzero(row).tolist()) for row in part.labels.numpy()] if part.multi_label \
            else part.labels.tolist()
        for i in range(len(part)):
            image = part.images[i].numpy()
            yield Sample(names[i], _png(image), "png", labels[i], (*image.shape[1:], image.shape[0] == 1))
    parts = {"train": data.train, "test": data.test} if len(data.test) else {"all": data.train}
    return ((split, samples(part)) for split, part in parts.items())


def _png(image: np.ndarray) -> bytes:
    """A (C, H, W) uint8 image as PNG bytes (lossless: it decodes to the same array)."""
    buffer = io.BytesIO()
    Image.fromarray(image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)).save(buffer, format="PNG")
    return buffer.getvalue()


def _extension(path: Path) -> str:
    """The image's extension in the shard: its file's, or the format's where the file's name has none."""
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return path.suffix.lower().lstrip(".")
    with Image.open(path) as img:
        return _FORMAT_SUFFIX.get(img.format, (img.format or "img").lower())
