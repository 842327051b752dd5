"""What the doctor finds about a dataset: the images and files it looked at, the duplicate groups
and near pairs, the unreadable and mismatched files, and the report that holds them all.

imgcls.doctor.detection fills a DoctorReport; imgcls.doctor.verdicts turns it into one result
line per check; imgcls.doctor.report prints it and writes doctor.json and doctor.html.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from imgcls.data.files import SPLIT_NAMES
from imgcls.data.load import DataOptions
from imgcls.data.stream import ImageFiles
from imgcls.doctor.labels import LabelError
from imgcls.doctor.verdicts import CheckResult, check_results


@dataclass
class DoctorOptions:
    """Thresholds of the checks, and which checks fail the run (exit status 1)."""

    features: str = "pixels"        # pixels, a saved network or a pretrained model name
    near: float | None = None       # None: detection.NEAR_DEFAULTS for the features' metric
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
        return check_results(self)

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
