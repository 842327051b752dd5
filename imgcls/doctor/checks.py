"""The doctor's checks: what is wrong with a dataset before a model learns from it.

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
import json
import math
import shutil
import tempfile
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import reduce
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from imgcls.data.dataset import DatasetSplits, SkippedFile, relative_name, require_single_label
from imgcls.data.files import SPLIT_NAMES
from imgcls.data.load import DataOptions, DatasetFiles, dataset_files, load_dataset
from imgcls.data.stream import ImageFiles, image_batches
from imgcls.doctor.labels import LabelError, find_label_errors
from imgcls.doctor.nearest import Rows, nearest_among
from imgcls.errors import ImgclsError
from imgcls.progress import progress_bar
from imgcls.runtime import PREDICT_BATCH
from imgcls.similarity.features import load_features
from imgcls.storage import write_text

CHECKS = ("corrupt", "mismatch", "duplicates", "near-duplicates", "leakage", "imbalance", "tiny", "label-errors")
FILE_CHECKS = ("corrupt", "mismatch")
# --near defaults, chosen on Fashion-MNIST. Pixels: up to an RMS difference of about 0.03 every
# pair is the same photo re-processed; by 0.04 distinct items of plain garments (trousers,
# T-shirts) appear. EfficientNet-Lite0 embeddings: those pairs lie at cosine distance 0.001-0.09
# (half under 0.015), while a random image's nearest of 2,000 others is at 0.037 or more.
NEAR_DEFAULTS = {"l2": 0.03, "cosine": 0.02}
_SAME_FORMAT = {"MPO": "JPEG"}   # camera JPEGs with several frames open as MPO


@dataclass
class DoctorOptions:
    """Thresholds of the checks, and which checks fail the run (exit status 1)."""

    features: str = "pixels"        # pixels, a saved network or a pretrained model name
    near: float | None = None       # None: NEAR_DEFAULTS for the features' metric
    neighbours: int = 10            # each image's nearest neighbours searched for near-duplicates
    imbalance: float = 3.0          # warn when the largest class of train is this many times the smallest
    tiny: int = 10                  # warn about classes with fewer training images
    fail_on: tuple[str, ...] = ()
    label_errors: bool = False      # look for likely label errors (out-of-fold predictions + cleanlab)
    label_model: str = "knn"        # the quick model of those predictions: knn or logistic
    folds: int = 5


@dataclass
class ImageRef:
    """One decoded image: its name (file path relative to the dataset, or <dataset>/<source split>/<position>),
    the split training puts it in, and its class."""

    name: str
    split: str
    index: int
    label: str
    row: int = field(default=0, repr=False)   # position in DoctorReport.images

    def to_dict(self) -> dict:
        return {"name": self.name, "split": self.split, "index": self.index, "label": self.label}


@dataclass
class FileRecord:
    """One listed file: where it is, the split it lands in (None: skipped before splitting), what it holds."""

    path: Path
    name: str
    split: str | None
    label: str
    sha256: str = ""
    format: str | None = None
    mode: str | None = None
    width: int = 0
    height: int = 0
    content: str = ""               # what a file PIL cannot open holds: text, empty, missing, binary data
    given_split: str = "all"        # the split the source names ("all": it names none)


@dataclass
class FileIssue:
    path: str
    split: str | None
    label: str
    reason: str

    def to_dict(self) -> dict:
        return {"path": self.path, "split": self.split, "label": self.label, "reason": self.reason}


@dataclass
class DuplicateGroup:
    """Images with identical decoded pixels; same_bytes: every file byte-identical (None: not files)."""

    images: list[ImageRef]
    same_bytes: bool | None = None

    @property
    def splits(self) -> str:
        return split_key(r.split for r in self.images)

    @property
    def leaked(self) -> bool:
        return "-" in self.splits

    @property
    def conflicting(self) -> bool:
        """The same picture under different labels: one of them is wrong."""
        return len({r.label for r in self.images}) > 1

    def to_dict(self) -> dict:
        return {"splits": self.splits, "same_bytes": self.same_bytes, "conflicting_labels": self.conflicting,
                "images": [r.to_dict() for r in self.images]}


@dataclass
class NearPair:
    """Two different images closer than the --near threshold (distance on the report's scale)."""

    a: ImageRef
    b: ImageRef
    distance: float

    @property
    def splits(self) -> str:
        return split_key((self.a.split, self.b.split))

    @property
    def leaked(self) -> bool:
        return self.a.split != self.b.split

    def to_dict(self) -> dict:
        return {"splits": self.splits, "distance": round(self.distance, 6), "a": self.a.to_dict(),
                "b": self.b.to_dict()}


@dataclass
class CheckResult:
    name: str
    findings: int
    summary: str
    applies: bool = True

    def status(self, fail_on) -> str:
        if not self.applies:
            return "n/a"
        return "OK" if not self.findings else "FAIL" if self.name in fail_on else "WARN"


@dataclass
class DoctorReport:
    """Every finding about one dataset; the terminal, JSON and HTML reports all read this."""

    name: str
    source: str
    options: DoctorOptions
    data_options: DataOptions
    scale: str                                  # what a near-duplicate distance measures
    near: float
    sizes: dict[str, int]
    image_shape: tuple[int, int, int]
    class_counts: dict[str, dict[str, int]]     # split -> class -> images
    duplicates: list[DuplicateGroup]
    near_duplicates: list[NearPair]
    unreadable: list[FileIssue] = field(default_factory=list)
    mismatched: list[FileIssue] = field(default_factory=list)
    files: list[FileRecord] | None = None       # None: not a dataset of files
    source_splits: tuple[str, ...] = ()         # the splits a file source names itself
    images: torch.Tensor | ImageFiles | None = field(default=None, repr=False)   # all splits, rows as ImageRef.row
    split_problem: str = ""                     # why the splits training would draw could not be drawn
    label_errors: list[LabelError] | None = None   # None: not looked for
    label_problem: str = ""                     # why label errors could not be looked for

    @property
    def leakage(self) -> list[DuplicateGroup | NearPair]:
        return [g for g in self.duplicates if g.leaked] + [p for p in self.near_duplicates if p.leaked]

    @property
    def imbalance(self) -> dict[str, float]:
        """Largest over smallest class per split (classes absent from a split are left out)."""
        return {split: max(c.values()) / min(v for v in c.values() if v)
                for split, c in self.class_counts.items() if any(c.values())}

    @property
    def tiny_classes(self) -> dict[str, int]:
        return {name: n for name, n in self.class_counts["train"].items() if n < self.options.tiny}

    @property
    def split_note(self) -> str:
        if self.split_problem:
            return self.split_problem
        o = self.data_options
        given = f"the source gives {', '.join(self.source_splits)}; " if self.source_splits else ""
        return (f"splits as `imgcls train` draws them (seed {o.seed}, val fraction {o.val_fraction}, test fraction "
                f"{o.test_fraction}): {given}a split the source lacks is carved from train, stratified")

    def checks(self) -> list[CheckResult]:
        """One result per check, in CHECKS order."""
        return [_corrupt_result(self), _mismatch_result(self), _duplicates_result(self), _near_result(self),
                _leakage_result(self), _imbalance_result(self), _tiny_result(self), _label_result(self)]

    def failed(self) -> list[str]:
        return [c.name for c in self.checks() if c.status(self.options.fail_on) == "FAIL"]

    def file_stats(self) -> dict | None:
        """Spread of stored sizes, colour modes and formats of the files PIL can open."""
        if self.files is None:
            return None
        opened = [r for r in self.files if r.format]
        stats = {"files": len(self.files), "opened": len(opened)}
        for side in ("width", "height"):
            values = [getattr(r, side) for r in opened] or [0]
            stats[side] = {"min": min(values), "median": float(np.median(values)), "max": max(values)}
        stats["modes"] = dict(Counter(r.mode for r in opened).most_common())
        stats["formats"] = dict(Counter(r.format for r in opened).most_common())
        return stats

    def to_dict(self) -> dict:
        return {"dataset": self.name, "source": self.source, "split_note": self.split_note, "sizes": self.sizes,
                "image_shape": list(self.image_shape), "features": self.options.features, "scale": self.scale,
                "near": self.near, "settings": {"neighbours": self.options.neighbours,
                                                "imbalance": self.options.imbalance, "tiny": self.options.tiny,
                                                "fail_on": list(self.options.fail_on)},
                "checks": {c.name: {"status": c.status(self.options.fail_on), "findings": c.findings,
                                    "summary": c.summary} for c in self.checks()},
                "unreadable": [f.to_dict() for f in self.unreadable],
                "mismatched": [f.to_dict() for f in self.mismatched],
                "duplicates": [g.to_dict() for g in self.duplicates],
                "near_duplicates": [p.to_dict() for p in self.near_duplicates],
                "class_counts": self.class_counts, "imbalance": {k: round(v, 3) for k, v in self.imbalance.items()},
                "tiny_classes": self.tiny_classes, "file_stats": self.file_stats(),
                "label_errors": None if self.label_errors is None else [e.to_dict() for e in self.label_errors]}


def split_key(splits) -> str:
    """The splits present, in train/val/test order, joined: "train", "train-test", "train-val-test"."""
    present = set(splits)
    return "-".join(s for s in SPLIT_NAMES if s in present)


def parse_fail_on(text: str | None) -> tuple[str, ...]:
    """Check names from a comma list; "any" stands for all of them; unknown names are an error."""
    names = [n.strip() for n in (text or "").split(",") if n.strip()]
    unknown = sorted(set(names) - set(CHECKS) - {"any"})
    if unknown:
        raise ImgclsError(f"--fail-on: unknown check {', '.join(unknown)}; valid: {', '.join(CHECKS)}, any")
    return CHECKS if "any" in names else tuple(n for n in CHECKS if n in names)


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


# -- one result line per check --------------------------------------------------------------------

def _n(count: int, noun: str) -> str:
    plural = noun[:-1] + "ies" if noun.endswith("y") else noun + ("es" if noun.endswith("s") else "s")
    return f"{count:,} {noun if count == 1 else plural}"


def _by_splits(items) -> str:
    counts = Counter(item.splits for item in items)
    order = sorted(counts, key=lambda key: ("-" in key, key.count("-"), [SPLIT_NAMES.index(s) for s in key.split("-")]))
    return ", ".join(f"{key} {counts[key]:,}" for key in order)


def _corrupt_result(r: DoctorReport) -> CheckResult:
    if r.files is None:
        return CheckResult("corrupt", 0, "not a dataset of files: nothing to open", applies=False)
    return CheckResult("corrupt", len(r.unreadable), f"{len(r.unreadable):,} of {_n(len(r.files), 'file')} unreadable")


def _mismatch_result(r: DoctorReport) -> CheckResult:
    if r.files is None:
        return CheckResult("mismatch", 0, "not a dataset of files: no extensions", applies=False)
    return CheckResult("mismatch", len(r.mismatched), f"{_n(len(r.mismatched), 'file')} whose content is not what "
                                                      "the extension says")


def _duplicates_result(r: DoctorReport) -> CheckResult:
    copies = sum(len(g.images) - 1 for g in r.duplicates)
    detail = f": {_by_splits(r.duplicates)}" if r.duplicates else ""
    conflicting = sum(g.conflicting for g in r.duplicates)
    labels = f"; {conflicting:,} with conflicting labels" if conflicting else ""
    return CheckResult("duplicates", len(r.duplicates),
                       f"{_n(len(r.duplicates), 'group')} of identical images, {_n(copies, 'redundant copy')}"
                       f"{detail}{labels}")


def _near_result(r: DoctorReport) -> CheckResult:
    detail = f": {_by_splits(r.near_duplicates)}" if r.near_duplicates else ""
    return CheckResult("near-duplicates", len(r.near_duplicates),
                       f"{_n(len(r.near_duplicates), 'pair')} within {r.near:g} {r.scale}{detail}")


def _leakage_result(r: DoctorReport) -> CheckResult:
    groups = sum(isinstance(x, DuplicateGroup) for x in r.leakage)
    detail = f": {_by_splits(r.leakage)}" if r.leakage else ""
    return CheckResult("leakage", len(r.leakage), f"{_n(groups, 'identical group')} and "
                                                  f"{_n(len(r.leakage) - groups, 'near pair')} span splits{detail}")


def _imbalance_result(r: DoctorReport) -> CheckResult:
    counts = r.class_counts["train"]
    ratio = r.imbalance["train"]
    largest, smallest = max(counts, key=counts.get), min(counts, key=counts.get)
    spread = (f"largest {largest} {counts[largest]:,} / smallest {smallest} {counts[smallest]:,} = {ratio:.1f}x"
              if ratio > 1 else f"every class {counts[largest]:,}")
    return CheckResult("imbalance", int(ratio > r.options.imbalance),
                       f"train: {spread} (warns over {r.options.imbalance:g}x)")


def _label_result(r: DoctorReport) -> CheckResult:
    if r.label_errors is None:
        return CheckResult("label-errors", 0, r.label_problem or "not looked for (--label-errors)", applies=False)
    images = sum(r.sizes.values())
    return CheckResult("label-errors", len(r.label_errors),
                       f"{_n(len(r.label_errors), 'likely label error')} among {images:,} images (out-of-fold "
                       f"{r.options.label_model} on {r.options.features}, {r.options.folds} folds, cleanlab)")


def _tiny_result(r: DoctorReport) -> CheckResult:
    tiny = r.tiny_classes
    listed = ", ".join(f"{name} ({n})" for name, n in sorted(tiny.items(), key=lambda kv: kv[1]))
    return CheckResult("tiny", len(tiny), f"{_n(len(tiny), 'class')} under {r.options.tiny} training images"
                                          + (f": {listed}" if tiny else "")
                                          + (" (too few to split as training would)" if r.split_problem else ""))


# -- fixes, on request only -----------------------------------------------------------------------

@dataclass
class Move:
    source: Path
    target: Path
    reason: str

    def to_dict(self) -> dict:
        return {"from": str(self.source), "to": str(self.target), "reason": self.reason}


def check_quarantine(source: str | Path, folder: str | Path) -> None:
    """Refuse --quarantine where it cannot work: not files, or a folder inside the dataset itself."""
    files = dataset_files(source, flat_ok=True, missing_ok=True) if not isinstance(source, DatasetSplits) else None
    if files is None:
        raise ImgclsError(f"--quarantine moves files; {source} is not a dataset of image files")
    folder = Path(folder).expanduser().resolve()
    if Path(source).is_dir() and folder.is_relative_to(files.root.resolve()):
        raise ImgclsError(f"--quarantine {folder}: choose a folder outside the dataset folder {files.root}")


def quarantine_plan(report: DoctorReport, folder: str | Path) -> list[Move]:
    """Unreadable files, and every byte-identical copy but one (a train copy, else the first by path)."""
    by_name = {r.name: r for r in report.files or []}
    moves = {i.path: i.reason for i in report.unreadable}
    for group in report.duplicates:
        copies = defaultdict(list)
        for ref in group.images:
            copies[by_name[ref.name].sha256].append(ref)
        for same in copies.values():
            keep = min(same, key=lambda ref: (ref.split != "train", ref.name))
            # a manifest may list one file twice: that is one file, never a copy of itself
            moves.update({ref.name: f"byte-identical copy of {keep.name}" for ref in same if ref.name != keep.name})
    folder = Path(folder).expanduser().resolve()
    return [Move(by_name[name].path.resolve(), folder / _inside(name), reason)
            for name, reason in sorted(moves.items()) if by_name[name].path.exists()]


def _inside(name: str) -> Path:
    path = Path(name)
    if path.is_absolute() or ".." in path.parts:
        raise ImgclsError(f"--quarantine: {name} lies outside the dataset folder; move it by hand")
    return path


def quarantine(report: DoctorReport, folder: str | Path) -> list[Move]:
    """Move the planned files into folder (relative paths kept), logged in folder/quarantine.json."""
    moves = quarantine_plan(report, folder)
    taken = [str(m.target) for m in moves if m.target.exists()]
    if taken:
        raise ImgclsError(f"--quarantine: {len(taken)} file(s) already there, nothing moved: {', '.join(taken[:3])}")
    log = Path(folder).expanduser() / "quarantine.json"
    history = json.loads(log.read_text())["moves"] if log.exists() else []
    for move in moves:
        move.target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(move.source, move.target)
        history.append(move.to_dict())
        write_text(log, json.dumps({"moves": history}, indent=2))   # after every move: the log never lags
    return moves
