"""Datasets made of image files: class folders, train/val/test folders, and CSV manifests.

Manifest format (CSV with a header row):

    path,label[,split]
    images/cat1.jpg,cat,train

`path` is relative to the CSV file. `split` (train, val or test) is optional; without it the
rows are split by the seeded stratified policy. Several labels per image are reserved for
multi-label classification, written `label` = "cat;outdoor": a single-label task refuses them.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imgcls.data.dataset import ImageDataset, SkippedFile, check_classes, relative_name
from imgcls.data.images import Preprocessing, UnreadableImage, decode_many, probe_image
from imgcls.errors import ImgclsError
from imgcls.progress import console, progress_bar

SPLIT_NAMES = ("train", "val", "test")
MAX_AUTO_SIDE = 64


@dataclass
class FileList:
    """Files with integer labels, before decoding."""

    paths: list[Path]
    labels: list[int]


def list_class_folders(root: Path) -> tuple[list[str], FileList]:
    """Classes are the sub-folders of root (sorted); their files are found at any depth."""
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ImgclsError(f"{root}: no class sub-folders found (expected {root}/<class name>/<images>)")
    files = FileList([], [])
    for label, name in enumerate(classes):
        found = sorted(p for p in (root / name).rglob("*") if p.is_file() and not _hidden(p, root))
        if not found:
            raise ImgclsError(f"{root / name}: class folder is empty")
        files.paths += found
        files.labels += [label] * len(found)
    return classes, files


def read_manifest(csv_path: Path) -> tuple[list[str], dict[str, FileList]]:
    """Class names and a FileList per split ('all' when the manifest has no split column)."""
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ImgclsError(f"{csv_path}: cannot read manifest ({exc})") from exc
    if not rows or not {"path", "label"} <= set(rows[0]):
        raise ImgclsError(f"{csv_path}: a manifest needs a header row with 'path' and 'label' columns")
    for line, row in enumerate(rows, start=2):
        if not (row.get("path") or "").strip() or not (row.get("label") or "").strip():
            raise ImgclsError(f"{csv_path}:{line}: empty path or label")
        if ";" in row["label"]:
            raise ImgclsError(f"{csv_path}:{line}: several labels ({row['label']}) need a multi-label task")
        split = (row.get("split") or "").strip() or "all"
        if split not in (*SPLIT_NAMES, "all"):
            raise ImgclsError(f"{csv_path}:{line}: unknown split {split!r}; valid: {', '.join(SPLIT_NAMES)}")
    split_of = {(r.get("split") or "").strip() or "all" for r in rows}
    train_rows = [r for r in rows if (r.get("split") or "").strip() in ("", "train")]
    classes = sorted({r["label"].strip() for r in train_rows})
    index = {name: i for i, name in enumerate(classes)}
    lists: dict[str, FileList] = {}
    for line, row in enumerate(rows, start=2):
        label, split = row["label"].strip(), (row.get("split") or "").strip() or "all"
        if label not in index:
            raise ImgclsError(f"{csv_path}:{line}: unknown label {label!r} (not among the training labels)")
        entry = lists.setdefault(split, FileList([], []))
        entry.paths.append(Path(os.path.normpath(csv_path.parent / row["path"].strip())))
        entry.labels.append(index[label])
    if "all" in split_of and len(split_of) > 1:
        raise ImgclsError(f"{csv_path}: either every row names its split or none does")
    return classes, lists


def decode_file_lists(lists: dict[str, FileList], class_names: list[str], root: Path, *,
                      size: int | tuple[int, int] | None, channels: int | None, resize: str,
                      strict: bool, preprocessing: Preprocessing | None = None, check: bool = True
                      ) -> tuple[dict[str, ImageDataset], list[SkippedFile], Preprocessing]:
    """Probe every file, choose one preprocessing for all of them (unless given), decode them into
    memory. check: refuse class sets no classifier can learn from (fewer than 2, or empty)."""
    everything = [p for fl in lists.values() for p in fl.paths]
    if not everything:
        raise ImgclsError(f"{root}: no image files found")
    with progress_bar(len(everything), "scanning images") as advance:
        probes, skipped = {}, []
        for path in everything:
            try:
                probes[path] = probe_image(path)
            except UnreadableImage as exc:
                skipped.append(SkippedFile(relative_name(path, root), str(exc)))
            advance()
    if not probes:
        raise ImgclsError(f"{root}: none of the {len(everything)} files is a readable image")
    prep = preprocessing or choose_preprocessing(list(probes.values()), size, channels, resize)
    datasets = {}
    for split, fl in lists.items():
        readable = [i for i, p in enumerate(fl.paths) if p in probes]
        paths = [fl.paths[i] for i in readable]
        with progress_bar(len(paths), f"decoding {split} images") as advance:
            images, ok, bad = decode_many(paths, prep, progress=advance)
        skipped += [SkippedFile(relative_name(p, root), reason) for p, reason in bad]
        labels = np.asarray([fl.labels[readable[i]] for i in ok], dtype=np.int64)
        datasets[split] = ImageDataset(images, labels, class_names,
                                       [relative_name(paths[i], root) for i in ok])
    report_skipped(skipped, strict)
    for split in ("all", "train"):
        if split in datasets and check:
            check_classes(class_names, datasets[split].labels.numpy(), str(root))
    return datasets, skipped, prep


def choose_preprocessing(probes: list[tuple[int, int, bool]], size, channels, resize) -> Preprocessing:
    """Documented default: grayscale when every image is; the common size when all agree, else a
    square of the median short side (at most 64 px) reached by the resize policy."""
    if channels is None:
        channels = 1 if all(gray for _, _, gray in probes) else 3
    if size is None:
        sizes = Counter((h, w) for h, w, _ in probes)
        if len(sizes) == 1:
            size = next(iter(sizes))
        else:
            side = min(int(np.median([min(h, w) for h, w, _ in probes])), MAX_AUTO_SIDE)
            size = (side, side)
    elif isinstance(size, int):
        size = (size, size)
    return Preprocessing(channels=channels, size=size, resize=resize)


def report_skipped(skipped: list[SkippedFile], strict: bool) -> None:
    if not skipped:
        return
    names = ", ".join(f"{s.path} ({s.reason})" for s in skipped[:5]) + (" ..." if len(skipped) > 5 else "")
    if strict:
        raise ImgclsError(f"{len(skipped)} unreadable file(s) (--strict): {names}")
    console.print(f"[yellow]warning:[/] skipped {len(skipped)} unreadable file(s): {names}")


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)
