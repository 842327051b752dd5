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
from imgcls.data.files import report_skipped
from imgcls.data.images import IMAGE_SUFFIXES, UnreadableImage, probe_image
from imgcls.data.load import DataOptions, DatasetFiles, dataset_files, load_dataset
from imgcls.data.shards import FORMAT, MANIFEST, VERSION, is_shards_folder, read_manifest
from imgcls.errors import ImgclsError
from imgcls.progress import progress_bar
from imgcls.storage import write_text

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
    out/manifest.json; returns the manifest. One image at a time is held in memory."""
    out = Path(out)
    manifest, splits, total = _read_source(source)
    _prepare(out)
    writer = _SplitWriter(out, shard_size, manifest["classes"], manifest["task"] == "multi-label")
    with progress_bar(total, "writing shards", unit="images") as advance:
        for split, samples in splits:
            part = writer.write(split, samples, advance)
            if part is not None:
                manifest["splits"][split] = part
    if not manifest["splits"]:
        raise ImgclsError(f"{source}: none of its {total} files is a readable image; no shards written")
    manifest |= {"image_sizes": [[h, w, n] for (h, w), n in sorted(writer.sizes.items())],
                 "grayscale": writer.grayscale, "skipped": [s.to_dict() for s in writer.skipped]}
    write_text(out / MANIFEST, json.dumps(manifest))    # last, once every shard it lists is whole
    report_skipped(writer.skipped, strict=False)
    return manifest


def _read_source(source: str | Path) -> tuple[dict, Iterator[tuple[str, Iterator[Sample | SkippedFile]]], int]:
    """The manifest's description of source, its samples per split, and how many there are.
    Image files are listed, not decoded; other sources are read into memory as they come."""
    path = Path(source).expanduser()
    if is_shards_folder(path):    # read back, its images would be decoded (resized), not copied
        raise ImgclsError(f"{path}: already shards; write new ones from the dataset they came from "
                          f"({read_manifest(path)['source']})")
    files = dataset_files(path)
    if files is not None:
        name, classes, multi_label = path.resolve().stem if path.is_file() else files.root.name, files.classes, \
            files.multi_label
        names, preprocessing = "paths", None
        splits, total = _file_samples(files), sum(len(fl.paths) for fl in files.lists.values())
    else:
        data = load_dataset(source, DataOptions(val_fraction=0, test_fraction=0, data_mode="memory"))
        name, classes, multi_label = data.name, data.class_names, data.train.multi_label
        names, preprocessing = "ids", data.train.preprocessing.to_dict()
        splits, total = _array_samples(data), len(data.train) + len(data.test)
    manifest = {"format": FORMAT, "version": VERSION, "name": name, "source": str(path.resolve()) if path.exists()
                else str(source), "classes": classes, "task": "multi-label" if multi_label else "single-label",
                "names": names, "preprocessing": preprocessing, "splits": {}}
    return manifest, splits, total


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


class _Shard:
    """A tar shard being written: webdataset's TarWriter on a file of ours."""

    def __init__(self, file: Path):
        self.file, self.stream = file, open(file, "wb")
        self.tar = wds.TarWriter(self.stream, encoder=False, mtime=0)

    def close(self) -> None:
        self.tar.close()
        self.stream.close()


class _SplitWriter:
    """Writes splits into shards as their samples come, keeping only where each one went, and
    tallies the image sizes (for choosing a preprocessing when the shards are read) and the files left out."""

    def __init__(self, out: Path, shard_size: int, classes: list[str], multi_label: bool):
        self.out, self.shard_size, self.classes, self.multi_label = out, shard_size, classes, multi_label
        self.sizes: Counter = Counter()
        self.grayscale = True
        self.skipped: list[SkippedFile] = []

    def write(self, split: str, samples: Iterator[Sample | SkippedFile], advance) -> dict | None:
        """One split's shards (None: it has no readable image), then where in them each sample's image
        lies, read back from the tar headers. A shard ends once it holds shard_size bytes, tar headers
        included (WebDataset's ShardWriter counts only the payload, far off for small images)."""
        shard, rows = None, []
        try:
            for sample in samples:
                advance()
                if isinstance(sample, SkippedFile):
                    self.skipped.append(sample)
                    continue
                # tarfile's offset: the bytes written to the archive so far, headers and padding included
                if shard is None or shard.tar.tarstream.offset >= self.shard_size:
                    shard = self._next_shard(shard, split)
                key = f"{split}_{len(rows):08d}"
                shard.tar.write(_entries(key, sample, self.classes, self.multi_label))
                self.sizes[sample.probe[:2]] += 1
                self.grayscale &= bool(sample.probe[2])
                label = list(sample.label) if self.multi_label else sample.label
                rows.append((key, f"{key}.{sample.ext}", len(sample.data), sample.name, label, shard.file.name))
        finally:
            if shard is not None:
                shard.close()
        return self._index(rows) if rows else None

    def _next_shard(self, shard: _Shard | None, split: str) -> _Shard:
        number = 0
        if shard is not None:
            shard.close()
            number = int(shard.file.stem.rsplit("-", 1)[1]) + 1
        return _Shard(self.out / f"{split}-{number:06d}.tar")

    def _index(self, rows: list[tuple]) -> dict:
        keys, members, lengths, names, labels, shard_of = map(list, zip(*rows))
        files = list(dict.fromkeys(shard_of))
        where = {}
        for file in files:
            with tarfile.open(self.out / file) as tar:
                where |= {member.name: (member.offset_data, member.size) for member in tar}
        if [where[member][1] for member in members] != lengths:
            raise ImgclsError(f"{self.out}: the shards just written do not hold the images given (disk full?)")
        index = {file: i for i, file in enumerate(files)}
        return {"count": len(rows),
                "shards": [{"file": file, "bytes": (self.out / file).stat().st_size, "count": shard_of.count(file)}
                           for file in files],
                "samples": {"key": keys, "name": names, "shard": [index[f] for f in shard_of],
                            "offset": [where[member][0] for member in members], "size": lengths, "label": labels}}


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
