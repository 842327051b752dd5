"""The doctor's detection: what is wrong with a dataset before a model learns from it.

File checks (datasets made of image files): unreadable files, content that does not match the
extension, byte-identical copies (SHA-256), and the spread of stored sizes and colour modes.
Image checks (every dataset, on the decoded uint8 images exactly as training sees them):
identical images, near-duplicates, and both of those across train/val/test (leakage); class
counts, imbalance and tiny classes; on request (label_errors), likely label errors by confident
learning (imgcls.doctor.labels).

Splits are the ones `imgcls train` draws with the same data flags. A source without a split
(class folders, a manifest without a split column) is split by the seeded stratified policy,
so each file is reported in the split it lands in, which is where leakage would bite.
"""

from __future__ import annotations

import hashlib
import io
import math
import tempfile
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from functools import reduce
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from imgcls.data.dataset import DatasetSplits, SkippedFile, relative_name, require_single_label
from imgcls.data.files import SPLIT_NAMES
from imgcls.data.load import DataOptions, DatasetFiles, dataset_files, load_dataset
from imgcls.data.stream import ImageFiles, image_batches
from imgcls.doctor.findings import (DoctorOptions, DoctorReport, DuplicateGroup, FileIssue, FileRecord, ImageRef,
                                    NearPair)
from imgcls.doctor.labels import find_label_errors
from imgcls.doctor.nearest import Rows, nearest_among
from imgcls.errors import ImgclsError
from imgcls.progress import progress_bar
from imgcls.runtime import PREDICT_BATCH
from imgcls.similarity.features import load_features

# --near defaults, chosen on Fashion-MNIST. Pixels: up to an RMS difference of about 0.03 every
# pair is the same photo re-processed; by 0.04 distinct items of plain garments (trousers,
# T-shirts) appear. EfficientNet-Lite0 embeddings: those pairs lie at cosine distance 0.001-0.09
# (half under 0.015), while a random image's nearest of 2,000 others is at 0.037 or more.
NEAR_DEFAULTS = {"l2": 0.03, "cosine": 0.02}
_SAME_FORMAT = {"MPO": "JPEG"}   # camera JPEGs with several frames open as MPO


# -- the whole diagnosis --------------------------------------------------------------------------

def diagnose(source: str | Path | DatasetSplits, data_options: DataOptions | None = None,
             options: DoctorOptions | None = None) -> DoctorReport:
    """Load the dataset as training would and run every check; unreadable files are findings, never fatal."""
    options = options or DoctorOptions()
    # verify: streamed files are decoded once while loading, so a file that does not decode is
    # skipped before the splits are drawn, as loading into memory skips it: the same splits either way.
    data_options = replace(data_options or DataOptions(), strict=False, any_classes=True, verify=True)
    files = None if isinstance(source, DatasetSplits) else dataset_files(source, flat_ok=True, missing_ok=True)
    if files is not None:
        require_single_label(files.multi_label, str(source), "imgcls doctor")
    split_problem = ""
    if isinstance(source, DatasetSplits):
        splits = source.require_single_label("imgcls doctor")
    else:
        try:
            splits = load_dataset(source, data_options)
        except ImgclsError as exc:     # e.g. a class of 1 image cannot be split: report it, check the rest
            split_problem = f"cannot split as `imgcls train` would ({exc}); checked as one training set"
            splits = load_dataset(source, replace(data_options, val_fraction=0, test_fraction=0))
    refs, images = split_images(splits)
    records = scan_files(files, splits) if files else None
    features = load_features(options.features)
    duplicates, near, scale, threshold, failed, vectors = find_duplicates(refs, images, records, options, features,
                                                                          keep_vectors=options.label_errors)
    splits.skipped += [SkippedFile(refs[row].name, reason) for row, reason in failed]
    report = DoctorReport(
        name=splits.name, source=splits.source or str(source), options=options, data_options=data_options,
        scale=scale, near=threshold, sizes=splits.summary(), image_shape=tuple(images.shape[1:]),
        class_counts={s: getattr(splits, s).class_counts() for s in splits.summary()},
        duplicates=duplicates, near_duplicates=near, files=records, images=images,
        source_splits=tuple(s for s in SPLIT_NAMES if files and s in files.lists), split_problem=split_problem)
    if records is not None:
        report.unreadable, report.mismatched = file_issues(records, splits)
    if options.label_errors:
        look_for_label_errors(report, refs, splits.train.class_names, *vectors, data_options.seed)
    return report


def look_for_label_errors(report: DoctorReport, refs: list[ImageRef], class_names: list[str], X: torch.Tensor,
                          rows: np.ndarray, seed: int) -> None:
    """Fill report.label_errors from each decoded row's vector (X, for the rows listed), or
    report.label_problem where a class has too few images for the folds."""
    o = report.options
    counts = Counter(refs[row].label for row in rows.tolist())
    smallest = min(counts, key=counts.get)
    if counts[smallest] < o.folds:
        report.label_problem = (f"not looked for: {o.folds}-fold predictions need {o.folds} images of every class; "
                                f"{smallest} has {counts[smallest]}")
        return
    report.label_errors = find_label_errors(refs, X, rows, class_names, model=o.label_model, folds=o.folds,
                                            seed=seed)


def split_images(splits: DatasetSplits) -> tuple[list[ImageRef], torch.Tensor | ImageFiles]:
    """Every split's images, one after another (train, val, test), and a reference for each row:
    one tensor for images in memory; for streamed ones, their files (nothing is decoded here)."""
    refs, parts = [], []
    for split in splits.summary():
        part = getattr(splits, split)
        names = part.names(split)
        for i, label in enumerate(part.labels.tolist()):
            refs.append(ImageRef(names[i], split, i, part.class_names[label], row=len(refs)))
        parts.append(part.images)
    if all(isinstance(p, torch.Tensor) for p in parts):
        return refs, torch.cat(parts)
    return refs, reduce(ImageFiles.concat, parts)


# -- files ----------------------------------------------------------------------------------------

def scan_files(files: DatasetFiles, splits: DatasetSplits) -> list[FileRecord]:
    """Hash and read the header of every listed file. Its split is where the loaded dataset put it; for a
    file the loader skipped, the split the source names (None where the source names none)."""
    landed = {name: split for split in splits.summary() for name in getattr(splits, split).paths or []}
    records = [FileRecord(path, name := relative_name(path, files.root),
                          landed.get(name, None if given == "all" else given), files.classes[label],
                          given_split=given)
               for given, fl in files.lists.items() for path, label in zip(fl.paths, fl.labels)]
    with progress_bar(len(records), "checking files") as advance, ThreadPoolExecutor(max_workers=4) as pool:
        for _ in pool.map(_inspect_file, records, chunksize=32):
            advance()
    return records


def _inspect_file(record: FileRecord) -> None:
    try:
        data = record.path.read_bytes()
    except OSError as exc:
        record.content = f"unreadable file ({exc.strerror or type(exc).__name__})"
        return
    record.sha256 = hashlib.sha256(data).hexdigest()
    try:
        with Image.open(io.BytesIO(data)) as img:
            record.format, record.mode, (record.width, record.height) = img.format, img.mode, img.size
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError):
        record.content = _sniff(data)


def _sniff(data: bytes) -> str:
    if not data:
        return "an empty file"
    return "text" if b"\x00" not in data[:4096] else "unknown binary data"


def file_issues(records: list[FileRecord], splits: DatasetSplits) -> tuple[list[FileIssue], list[FileIssue]]:
    """(unreadable, mismatched): files the loader skipped, with its reason; content unlike the extension."""
    skipped = {s.path: s.reason for s in splits.skipped}
    unreadable = [FileIssue(r.name, r.split, r.label, skipped[r.name]) for r in records if r.name in skipped]
    mismatched = [FileIssue(r.name, r.split, r.label, reason) for r in records if (reason := _mismatch(r))]
    return unreadable, mismatched


def _mismatch(record: FileRecord) -> str | None:
    suffix = record.path.suffix.lower()
    claimed = Image.registered_extensions().get(suffix)
    if claimed is None or _SAME_FORMAT.get(record.format, record.format) == claimed:
        return None
    return f"{record.format or record.content} content named {suffix}"


# -- duplicates and near-duplicates ---------------------------------------------------------------

def read_images(images: torch.Tensor | ImageFiles, features, vectors: Rows
                ) -> tuple[list[bytes | None], list[int], list[tuple[int, str]]]:
    """One pass over every image, PREDICT_BATCH at a time through image_batches (streamed images are
    decoded by DataLoader workers, so only the batches in flight are in memory): each row's pixel
    digest (None: it no longer decodes), the rows whose pixels appear for the first time (the
    distinct ones, in row order) with their feature vectors appended to vectors, and (row, reason)
    for the rows that did not decode."""
    digests: list[bytes | None] = [None] * len(images)
    distinct, failed, seen = [], [], set()
    for positions, batch, unreadable in image_batches(images, PREDICT_BATCH, "reading images"):
        failed += unreadable
        first = []
        for j, (row, pixels) in enumerate(zip(positions.tolist(), batch.reshape(len(batch), -1).numpy())):
            digests[row] = digest = hashlib.blake2b(pixels.tobytes(), digest_size=16).digest()
            if digest not in seen:
                seen.add(digest)
                first.append(j)
        if first:
            distinct += positions[first].tolist()
            vectors.append(features.vectors(batch[first]))
    return digests, distinct, failed


def identical_groups(digests: list[bytes | None]) -> list[list[int]]:
    """Rows with identical pixel digests (see read_images), as groups of two or more, each in row order."""
    rows = defaultdict(list)
    for i, digest in enumerate(digests):
        if digest is not None:
            rows[digest].append(i)
    return [group for group in rows.values() if len(group) > 1]


def near_pairs(vectors: torch.Tensor | Rows, max_l2: float, k: int) -> list[tuple[int, int, float]]:
    """Pairs (i < j, Euclidean distance) within max_l2 where j is among i's k nearest or i among j's."""
    if len(vectors) < 2:
        return []
    distances, neighbours = nearest_among(vectors, k + 1)
    rows = torch.arange(len(vectors))[:, None].expand_as(neighbours)
    keep = (distances <= max_l2) & (neighbours != rows)
    pairs = {}
    for i, j, d in zip(rows[keep].tolist(), neighbours[keep].tolist(), distances[keep].tolist()):
        pairs[min(i, j), max(i, j)] = d
    return sorted((i, j, d) for (i, j), d in pairs.items())


def find_duplicates(refs: list[ImageRef], images: torch.Tensor | ImageFiles, records: list[FileRecord] | None,
                    options: DoctorOptions, features, keep_vectors: bool = False
                    ) -> tuple[list[DuplicateGroup], list[NearPair], str, float, list, tuple | None]:
    """Identical images, then near-duplicates among the distinct ones (so nothing counts twice),
    and (row, reason) for images that no longer decode. A streamed dataset's feature vectors wait
    in a temporary file, searched a block at a time, so memory holds neither them nor the images.

    keep_vectors: also (X, rows), every decoded row's vector for the label-error check (which
    needs them all in memory), so a network embeds each image once for both checks."""
    with tempfile.TemporaryDirectory(prefix="imgcls-doctor-") as spill:
        vectors = Rows(None if isinstance(images, torch.Tensor) else Path(spill))
        digests, distinct, failed = read_images(images, features, vectors)
        threshold = options.near if options.near is not None else NEAR_DEFAULTS[features.metric]
        dim = int(np.prod(images.shape[1:]))
        found = near_pairs(vectors, _l2_limit(threshold, features.metric, dim), options.neighbours)
        kept = every_rows_vector(images, features, vectors, digests, distinct) if keep_vectors else None
    groups = identical_groups(digests)
    sha = {r.name: r.sha256 for r in records} if records is not None else None
    duplicates = [DuplicateGroup([refs[i] for i in g], len({sha[refs[i].name] for i in g}) == 1 if sha else None)
                  for g in groups]
    members = {g[0]: g for g in groups}
    pairs = []
    for i, j, l2 in found:
        a, b = distinct[i], distinct[j]
        for x, y in _one_pair_per_split_pair(members.get(a, [a]), members.get(b, [b]), refs):
            pairs.append(NearPair(refs[x], refs[y], _scaled(l2, features.metric, dim)))
    pairs.sort(key=lambda p: (p.distance, p.a.row, p.b.row))
    return duplicates, pairs, _SCALES[features.metric], threshold, failed, kept


def every_rows_vector(images: torch.Tensor | ImageFiles, features, vectors: Rows, digests: list[bytes | None],
                      distinct: list[int]) -> tuple[torch.Tensor, np.ndarray]:
    """(X, rows): the vector of every row that decodes, from the distinct rows' vectors (identical
    pixels have identical vectors). Pixels come back as uint8 images (N, C, H, W), so that
    imgcls's kNN compares them exactly in integers."""
    rows = np.asarray([row for row, d in enumerate(digests) if d is not None], dtype=np.int64)
    if features.metric == "l2" and isinstance(images, torch.Tensor) and len(rows) == len(images):
        return images, rows
    position = {digests[row]: k for k, row in enumerate(distinct)}
    X = vectors.block(0, len(vectors))[[position[digests[row]] for row in rows.tolist()]]
    return (X.reshape(len(X), *images.shape[1:]) if features.metric == "l2" else X.float()), rows


_SCALES = {"l2": "RMS pixel difference on 0..1", "cosine": "cosine distance of the embeddings"}


def _scaled(l2: float, metric: str, dim: int) -> float:
    """The reported distance: RMS pixel difference on 0..1 for pixels, 1 - cos for unit embeddings."""
    return l2 / (255 * math.sqrt(dim)) if metric == "l2" else l2 * l2 / 2


def _l2_limit(threshold: float, metric: str, dim: int) -> float:
    # a hair above, so float rounding never drops a pair sitting exactly on the threshold
    return (threshold * 255 * math.sqrt(dim) if metric == "l2" else math.sqrt(2 * threshold)) * (1 + 1e-9)


def _one_pair_per_split_pair(group_a: list[int], group_b: list[int], refs: list[ImageRef]):
    """A near pair between two groups of identical images, once for each pair of splits it spans."""
    first_a = {refs[i].split: i for i in reversed(group_a)}
    first_b = {refs[i].split: i for i in reversed(group_b)}
    return sorted((min(x, y), max(x, y)) for x in first_a.values() for y in first_b.values())
