"""Datasets made of image files: class folders, train/val/test folders, and CSV manifests.

Manifest format (CSV with a header row):

    path,label[,split]
    images/cat1.jpg,cat,train

`path` is relative to the CSV file. `split` (train, val or test) is optional; without it the
rows are split by the seeded stratified policy.

A manifest is multi-label when a label cell holds several labels separated by ";" (`dog;beach`),
or when its column is named `labels` instead of `label`. In a multi-label manifest an empty cell
is an image with none of the labels (common, and allowed); in a single-label one it is an error.
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
from imgcls.data.stream import ImageFiles, image_batches
from imgcls.errors import ImgclsError
from imgcls.progress import console, progress_bar

SPLIT_NAMES = ("train", "val", "test")
DATA_MODES = ("auto", "memory", "stream")
MAX_AUTO_SIDE = 64
VERIFY_BATCH = 256      # files decoded at a time by the verify pass over streamed files


@dataclass
class FileList:
    """Files with their labels, before decoding: a class index per file, or for multi-label data
    a tuple of label indices per file (possibly empty)."""

    paths: list            # Paths, or Members of archives (imgcls.data.images.ImageSource)
    labels: list
    names: list[str] | None = None   # what reports call each file; None: its path relative to the dataset's root

    def label_array(self, rows: list[int], n_classes: int, multi_label: bool) -> np.ndarray:
        """The labels of the given rows: class indices (n,), or a multi-hot matrix (n, n_classes)."""
        if not multi_label:
            return np.asarray([self.labels[i] for i in rows], dtype=np.int64)
        hot = np.zeros((len(rows), n_classes), dtype=np.uint8)
        for r, i in enumerate(rows):
            hot[r, list(self.labels[i])] = 1
        return hot


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


def read_manifest(csv_path: Path, missing_ok: bool = False) -> tuple[list[str], dict[str, FileList], bool]:
    """Class names, a FileList per split ('all' when the manifest has no split column), and whether
    the manifest is multi-label. Errors name the offending row; a row naming a missing file is one
    too, unless missing_ok (checking a dataset: the file is then reported as unreadable)."""
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ImgclsError(f"{csv_path}: cannot read manifest ({exc})") from exc
    columns = set(rows[0]) if rows else set()
    if not rows or "path" not in columns or not columns & {"label", "labels"}:
        raise ImgclsError(f"{csv_path}: a manifest needs a header row with 'path' and 'label' "
                          "(or 'labels', for multi-label data) columns")
    column = "labels" if "labels" in columns else "label"
    cells = [(row.get(column) or "").strip() for row in rows]
    multi_label = column == "labels" or any(";" in cell for cell in cells)
    splits = [(row.get("split") or "").strip() or "all" for row in rows]
    for line, (row, cell, split) in enumerate(zip(rows, cells, splits), start=2):
        if not (row.get("path") or "").strip():
            raise ImgclsError(f"{csv_path}:{line}: empty path")
        if not cell and not multi_label:
            raise ImgclsError(f"{csv_path}:{line}: empty label (for multi-label data, where an image may have "
                              "no label, name the column 'labels' or separate several labels with ';')")
        if split not in (*SPLIT_NAMES, "all"):
            raise ImgclsError(f"{csv_path}:{line}: unknown split {split!r}; valid: {', '.join(SPLIT_NAMES)}")
    if "all" in splits and len(set(splits)) > 1:
        raise ImgclsError(f"{csv_path}: either every row names its split or none does")
    row_labels = [_cell_labels(cell, multi_label) for cell in cells]
    classes = sorted({name for labels, split in zip(row_labels, splits) if split in ("all", "train")
                      for name in labels})
    index = {name: i for i, name in enumerate(classes)}
    lists: dict[str, FileList] = {}
    for line, (row, labels, split) in enumerate(zip(rows, row_labels, splits), start=2):
        unknown = [name for name in labels if name not in index]
        if unknown:
            raise ImgclsError(f"{csv_path}:{line}: unknown label {unknown[0]!r} (not among the training labels)")
        path = Path(os.path.normpath(csv_path.parent / row["path"].strip()))
        if not missing_ok and not path.exists():
            raise ImgclsError(f"{csv_path}:{line}: no such file {row['path'].strip()}")
        entry = lists.setdefault(split, FileList([], []))
        entry.paths.append(path)
        entry.labels.append(tuple(index[name] for name in labels) if multi_label else index[labels[0]])
    return classes, lists, multi_label


def _cell_labels(cell: str, multi_label: bool) -> list[str]:
    if not multi_label:
        return [cell]
    return sorted({name.strip() for name in cell.split(";") if name.strip()})


def decode_file_lists(lists: dict[str, FileList], class_names: list[str], root: Path, *,
                      size: int | tuple[int, int] | None, channels: int | None, resize: str,
                      strict: bool, decode: str | None = None, preprocessing: Preprocessing | None = None, check: bool = True,
                      multi_label: bool = False, mode: str = "memory", memory_budget: int | None = None,
                      cache: str | None = None, probes: list[tuple[int, int, bool]] | None = None,
                      verify: bool = False
                      ) -> tuple[dict[str, ImageDataset], list[SkippedFile], Preprocessing]:
    """Probe every file, choose one preprocessing for all of them (unless given), then decode them
    into memory, or (mode stream, or auto when they would not fit memory_budget) leave them in
    their files to be streamed. check: refuse class sets no classifier can learn from (fewer than
    2, or empty). probes: every file's (height, width, grayscale) where known without opening
    them (a shards manifest records them); every file then counts as readable. verify: streamed
    files are decoded once (a batch at a time, then dropped), so that those whose header reads
    but whose pixels do not (truncated files) are skipped here, as decoding into memory skips them."""
    everything = [p for fl in lists.values() for p in fl.paths]
    if not everything:
        raise ImgclsError(f"{root}: no image files found")
    readable, skipped = (_probe_files(everything, root) if probes is None
                         else (dict.fromkeys(everything, None), []))
    if not readable:
        raise ImgclsError(f"{root}: none of the {len(everything)} files is a readable image")
    prep = preprocessing or choose_preprocessing(probes or list(readable.values()), size, channels, resize, decode)
    streamed = choose_data_mode(mode, len(readable) * prep.channels * prep.size[0] * prep.size[1], memory_budget)
    if streamed and verify:
        for path, reason in undecodable(list(readable), prep):
            skipped.append(SkippedFile(relative_name(path, root), reason))
            del readable[path]
    datasets = {}
    for split, fl in lists.items():
        rows = [i for i, p in enumerate(fl.paths) if p in readable]
        paths = [fl.paths[i] for i in rows]
        names = [fl.names[i] for i in rows] if fl.names is not None else [relative_name(p, root) for p in paths]
        if streamed:
            images, ok, bad = ImageFiles(paths, prep, cache=cache), list(range(len(paths))), []
        else:
            with progress_bar(len(paths), f"decoding {split} images") as advance:
                images, ok, bad = decode_many(paths, prep, progress=advance)
        name_of = dict(zip(paths, names))
        skipped += [SkippedFile(name_of[p], reason) for p, reason in bad]
        labels = fl.label_array([rows[i] for i in ok], len(class_names), multi_label)
        datasets[split] = ImageDataset(images, labels, class_names, [names[i] for i in ok], decoded_with=prep)
    report_skipped(skipped, strict)
    for split in ("all", "train"):
        if split in datasets and check:
            check_classes(class_names, datasets[split].labels.numpy(), str(root))
    return datasets, skipped, prep


def _probe_files(paths: list[Path], root: Path) -> tuple[dict[Path, tuple[int, int, bool]], list[SkippedFile]]:
    """Each readable file's (height, width, grayscale) from its header, and the files that are not images."""
    with progress_bar(len(paths), "scanning images") as advance:
        probes, skipped = {}, []
        for path in paths:
            try:
                probes[path] = probe_image(path)
            except UnreadableImage as exc:
                skipped.append(SkippedFile(relative_name(path, root), str(exc)))
            advance()
    return probes, skipped


def undecodable(paths: list[Path], prep: Preprocessing) -> list[tuple[Path, str]]:
    """(path, reason) of the files that do not decode, read through image_batches (bounded memory)."""
    failed = [f for _, _, bad in image_batches(ImageFiles(paths, prep), VERIFY_BATCH, "checking images") for f in bad]
    return [(paths[i], reason) for i, reason in failed]


def choose_data_mode(mode: str, decoded_bytes: int, budget: int | None) -> bool:
    """Whether to stream (True) or decode into memory (False), saying why when auto decides."""
    if mode not in DATA_MODES:
        raise ImgclsError(f"unknown data mode {mode!r}; valid: {', '.join(DATA_MODES)}")
    if mode != "auto":
        return mode == "stream"
    budget = budget or memory_bytes() // 4
    stream = decoded_bytes > budget
    if stream:
        console.print(f"data: streaming the images from their files: decoded they would take "
                      f"{decoded_bytes / 1e9:.1f} GB, over the memory budget of {budget / 1e9:.1f} GB "
                      "(--memory-budget; --data-mode memory keeps them in memory anyway)", highlight=False)
    return stream


def memory_bytes() -> int:
    """This machine's RAM (or 8 GB where it cannot be read)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 * 10**9


def choose_preprocessing(probes: list[tuple[int, int, bool]], size, channels, resize,
                         decode: str | None = None) -> Preprocessing:
    """Documented default: grayscale when every image is; the common size when all agree, else a
    square of the median short side (at most 64 px) reached by the resize policy; JPEGs decoded
    in draft mode unless decode says "full"."""
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
    return Preprocessing(channels=channels, size=size, resize=resize, decode=decode or "draft")


def report_skipped(skipped: list[SkippedFile], strict: bool) -> None:
    if not skipped:
        return
    names = ", ".join(f"{s.path} ({s.reason})" for s in skipped[:5]) + (" ..." if len(skipped) > 5 else "")
    if strict:
        raise ImgclsError(f"{len(skipped)} unreadable file(s) (--strict): {names}")
    console.print(f"[yellow]warning:[/] skipped {len(skipped)} unreadable file(s): {names}")


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)
