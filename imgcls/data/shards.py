"""Datasets as WebDataset tar shards: the format, and reading it back by random access.

A shards folder (written by `imgcls shards`, imgcls.data.shard_writer) holds, per split the source
has (train/val/test, or "all" where it has none), tar files `<split>-000000.tar`, ... in the
WebDataset layout: each sample is `<key>.<jpg|png|...>` (a file's original bytes, or a PNG of an
in-memory image), `<key>.json` ({"name": ..., "label": ...} or "labels": [...]) and, for single-label
data, `<key>.cls` (the class index). `webdataset.WebDataset(urls)` reads them as they are.

Beside them, manifest.json says what they hold: class names, task, the source's image sizes
(so the preprocessing is chosen without opening a sample), each shard's length in bytes, and for
every sample its shard, the byte offset and size of its image and its labels. imgcls reads a
sample with one seek (a ShardMember, as WebDataset's own indexed reader `wids` does), so a
shuffled epoch, a seeded split, a resumed position and a rank's share of a batch all work as
for files, and each sample is read once per epoch across the whole job.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from imgcls.data.dataset import SkippedFile
from imgcls.data.files import FileList
from imgcls.data.images import Preprocessing
from imgcls.errors import ImgclsError
from imgcls.storage import check_format_version

MANIFEST = "manifest.json"
FORMAT = "imgcls-shards"
VERSION = 1


@dataclass(frozen=True)
class ShardMember:
    """One sample's image bytes inside a tar shard, read with one seek (no tar parsing)."""

    shard: Path
    offset: int
    size: int

    def read_bytes(self) -> bytes:
        with open(self.shard, "rb") as f:
            f.seek(self.offset)
            data = f.read(self.size)
        if len(data) < self.size:
            raise OSError(f"{self.shard}: the shard ends before this sample's bytes (cut short)")
        return data

    def stat(self) -> os.stat_result:
        return self.shard.stat()

    def __str__(self) -> str:
        return f"{self.shard}@{self.offset}"


@dataclass
class ShardSet:
    """A shards folder as its manifest describes it."""

    name: str
    classes: list[str]
    multi_label: bool
    lists: dict[str, FileList]            # per split: ShardMembers, labels and the samples' names
    probes: list[tuple[int, int, bool]]   # (height, width, grayscale) of every sample
    preprocessing: Preprocessing | None   # the images' own, for in-memory sources (their arrays' shape)
    names_are_ids: bool                   # samples of in-memory sources have ids, not file names
    skipped: list[SkippedFile]            # source files that were not images, left out of the shards


def is_shards_folder(path: Path) -> bool:
    return path.is_dir() and (path / MANIFEST).is_file()


def read_shards(folder: Path) -> ShardSet:
    """The manifest of a shards folder, after checking that every shard it lists is whole: a missing,
    cut-short or changed shard is a one-line error naming it."""
    folder = folder.resolve()
    manifest = read_manifest(folder)
    lists = {}
    for split, part in manifest["splits"].items():
        files = [folder / shard["file"] for shard in part["shards"]]
        for path, shard in zip(files, part["shards"]):
            check_shard(path, shard["bytes"])
        samples = part["samples"]
        members = [ShardMember(files[s], offset, size)
                   for s, offset, size in zip(samples["shard"], samples["offset"], samples["size"])]
        labels = [tuple(label) for label in samples["label"]] if manifest["task"] == "multi-label" \
            else samples["label"]
        lists[split] = FileList(members, labels, samples["name"])
    probes = [(h, w, manifest["grayscale"]) for h, w, count in manifest["image_sizes"] for _ in range(count)]
    prep = manifest.get("preprocessing")
    return ShardSet(manifest["name"], manifest["classes"], manifest["task"] == "multi-label", lists, probes,
                    Preprocessing.from_dict(prep) if prep else None, manifest["names"] == "ids",
                    [SkippedFile(s["path"], s["reason"]) for s in manifest.get("skipped", [])])


def read_manifest(folder: Path) -> dict:
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ImgclsError(f"{path}: not a readable shards manifest ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ImgclsError(f"{path}: not a manifest of imgcls shards (written by imgcls shards)")
    check_format_version(path, "shards", manifest.get("version", 0), VERSION)
    return manifest


def check_shard(path: Path, expected: int) -> None:
    """A one-line error naming a shard that is missing or of another length than the manifest's."""
    try:
        actual = path.stat().st_size
    except OSError:
        raise ImgclsError(f"{path}: shard missing (listed in {MANIFEST})") from None
    if actual < expected:
        raise ImgclsError(f"{path}: shard cut short: {actual:,} of {expected:,} bytes (copy it again, "
                          "or write the shards again with imgcls shards)")
    if actual != expected:
        raise ImgclsError(f"{path}: shard changed since {MANIFEST} was written ({actual:,} bytes, "
                          f"not {expected:,}); write the shards again with imgcls shards")
