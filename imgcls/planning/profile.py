"""What a plan needs to know about the data: how many images of what size and colour, how many
classes, single- or multi-label, small images or photographs, and, for image files, how long
decoding them will take on this machine (measured on a sample of the files before any is decoded)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from imgcls.data.dataset import DatasetSplits
from imgcls.data.files import choose_preprocessing
from imgcls.data.images import Preprocessing, UnreadableImage, decode_many, probe_image
from imgcls.data.load import DataOptions, dataset_files
from imgcls.errors import ImgclsError

PHOTO_SIDE = 64           # colour images at least this large (short side) are photographs
PIXEL_SIDE = 64           # the largest side pixel models (kNN, linear, a CNN from scratch) are given
SAMPLE_FILES = 32         # files decoded to time decoding


@dataclass
class FileSurvey:
    """A sample of a dataset's image files, read before the dataset is: its size and colour, and
    the time decoding the whole dataset will take at a given preprocessing, from timing the sample."""

    files: int
    sample: list[Path]
    probes: list[tuple[int, int, bool]]          # (height, width, grayscale) of the sample's files
    probe_seconds: float                         # reading one file's header (every file is probed)
    _decode_seconds: dict = field(default_factory=dict)

    @property
    def native_side(self) -> int:
        """The median short side of the files, in pixels."""
        return int(np.median([min(h, w) for h, w, _ in self.probes])) if self.probes else 0

    @property
    def colour(self) -> bool:
        return not all(gray for _, _, gray in self.probes)

    def preprocessing(self, options: DataOptions) -> Preprocessing:
        """The decoding load_dataset would choose for these options (from the sample's headers)."""
        if options.preprocessing is not None:
            return options.preprocessing
        return choose_preprocessing(self.probes, options.size, options.channels, options.resize)

    def decode_seconds(self, prep: Preprocessing) -> float:
        """Estimated seconds to scan and decode every file at prep (the sample's time, scaled)."""
        if prep not in self._decode_seconds:
            start = time.perf_counter()
            decode_many(self.sample, prep)
            self._decode_seconds[prep] = (time.perf_counter() - start) / max(len(self.sample), 1)
        return self.files * (self.probe_seconds + self._decode_seconds[prep])


def survey_files(source: str | Path, sample: int = SAMPLE_FILES) -> FileSurvey | None:
    """A FileSurvey of a manifest or folders of image files; None for other sources (named datasets,
    arrays, IDX or CIFAR files, shards), whose images are read without decoding files one by one."""
    files = dataset_files(source) if Path(source).expanduser().exists() else None
    if files is None:
        return None
    everything = [p for fl in files.lists.values() for p in fl.paths]
    if not everything:
        raise ImgclsError(f"{source}: no image files found")
    chosen = [everything[int(i)] for i in np.linspace(0, len(everything) - 1, min(sample, len(everything))).round()]
    start, probes, readable = time.perf_counter(), [], []
    for path in chosen:
        try:
            probes.append(probe_image(path))
            readable.append(path)
        except UnreadableImage:
            pass
    probe_seconds = (time.perf_counter() - start) / len(chosen)
    return FileSurvey(len(everything), readable, probes, probe_seconds)


@dataclass(frozen=True)
class DataProfile:
    """The data a plan is made for, as the pixel models see it (shape: channels, height, width)."""

    name: str
    train: int
    val: int
    test: int
    shape: tuple[int, int, int]
    classes: int
    multi_label: bool
    native_side: int          # the source images' median short side (before any resizing)
    colour: bool

    @property
    def photographs(self) -> bool:
        """Colour images of PHOTO_SIDE pixels or more: what ImageNet-pretrained backbones know."""
        return self.colour and self.native_side >= PHOTO_SIDE

    def describe(self) -> str:
        kind = "photographs" if self.photographs else "small images"
        task = "multi-label" if self.multi_label else "single-label"
        c, h, w = self.shape
        return (f"{self.train:,} training, {self.val:,} validation and {self.test:,} test images, {c}x{h}x{w}, "
                f"{self.classes} {'labels' if self.multi_label else 'classes'} ({task}, {kind})")

    def to_dict(self) -> dict:
        return {"train": self.train, "val": self.val, "test": self.test, "shape": list(self.shape),
                "classes": self.classes, "multi_label": self.multi_label, "native_side": self.native_side,
                "colour": self.colour, "photographs": self.photographs}


def profile_of(splits: DatasetSplits, survey: FileSurvey | None = None) -> DataProfile:
    """The profile of loaded splits; survey (of the files they came from) gives the images' own size."""
    c, h, w = splits.train.images.shape[1:]
    native = survey.native_side if survey is not None and survey.probes else min(h, w)
    return DataProfile(splits.name, len(splits.train), len(splits.val) if splits.val is not None else 0,
                       len(splits.test), (int(c), int(h), int(w)), splits.train.num_classes,
                       splits.train.multi_label, native, c == 3 if survey is None else survey.colour)
