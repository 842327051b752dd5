"""One entry point for every data source: `load_dataset(source, options)` -> DatasetSplits.

What a path holds decides how it is read:

| source                                   | read as                                         |
|------------------------------------------|-------------------------------------------------|
| a name: fashion-mnist, mnist, cifar10... | a named dataset (official test split kept)      |
| a .csv file                              | a manifest: path,label[,split]                  |
| a folder with batches.meta / meta        | CIFAR-10 / CIFAR-100 python batches             |
| a folder with *-idx*-ubyte[.gz] files    | MNIST-family IDX files (official test split)    |
| a folder with manifest.json of shards    | WebDataset tar shards (imgcls shards), by seek  |
| a folder with train/ and test/ (val/)    | class folders per split, used as given          |
| a folder of class sub-folders            | class folders, split by the seeded policy       |
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imgcls.data.dataset import DatasetSplits, ImageDataset, check_classes
from imgcls.data.files import (SPLIT_NAMES, FileList, decode_file_lists, list_class_folders, read_manifest,
                               report_skipped)
from imgcls.data.formats import cifar_kind, is_idx_folder, read_cifar, read_idx_split
from imgcls.data.images import Preprocessing
from imgcls.data.named import NAMED_DATASETS, locate
from imgcls.data.shards import is_shards_folder, read_shards
from imgcls.data.splits import split_dataset
from imgcls.errors import ImgclsError


@dataclass
class DataOptions:
    """How to read and split a dataset. Fractions apply only where the source has no such split."""

    val_fraction: float = 0.1
    test_fraction: float = 0.2
    seed: int = 0
    size: int | None = None        # target side in pixels for file datasets; None: see choose_preprocessing
    channels: int | None = None    # 1 or 3; None: grayscale only if every image is
    resize: str = "crop"           # crop | pad | stretch
    decode: str | None = None      # draft | full: how JPEGs are decoded (imgcls.data.images.DECODES); None: draft
    strict: bool = False           # unreadable files are an error instead of a warning
    coarse: bool = False           # CIFAR-100: the 20 superclasses instead of the 100 classes
    download: bool = True
    preprocessing: Preprocessing | None = None   # decode files exactly so (a model's, an index's); wins over size...
    any_classes: bool = False      # indexing and checking a dataset need no classifier: accept one class, empty
                                   # classes, a flat folder (one class named after it) and manifest rows naming
                                   # missing files (reported as unreadable)
    data_mode: str = "auto"        # image files: memory | stream | auto (memory when they fit memory_budget)
    memory_budget: int | None = None   # bytes of decoded images auto keeps in memory; None: a quarter of RAM
    cache: str | None = None       # streamed images: a folder to keep decoded rows in, for later epochs and runs
    verify: bool = False           # streamed images: decode each file once while loading, so one that does not
                                   # decode is skipped before splitting, as in memory (the doctor's same splits)

    def decoding_as(self, expected: Preprocessing | None) -> DataOptions:
        """These options with image files decoded as a model expects (expected: its size, crop and
        interpolation; None: the data decides), except where the flags say otherwise: --image-size,
        --channels and a --resize other than crop win. In-memory datasets are not decoded."""
        if expected is None or self.preprocessing is not None:
            return self
        size = (self.size, self.size) if isinstance(self.size, int) else (self.size or expected.size)
        crop = self.resize == "crop"
        prep = Preprocessing(channels=self.channels or expected.channels, size=size, resize=self.resize,
                             crop_pct=expected.crop_pct if crop else 1.0, interpolation=expected.interpolation,
                             decode=self.decode or expected.decode)
        return dataclasses.replace(self, preprocessing=prep)


def load_dataset(source: str | Path, options: DataOptions | None = None) -> DatasetSplits:
    options = options or DataOptions()
    path = Path(source).expanduser()
    if str(source) in NAMED_DATASETS and not path.exists():
        return _load_named(str(source), options)
    if not path.exists():
        names = ", ".join(NAMED_DATASETS)
        raise ImgclsError(f"{source}: no such file or folder (named datasets: {names})")
    if path.is_file() and path.suffix.lower() != ".csv":
        raise ImgclsError(f"{path}: a dataset file must be a .csv manifest (path,label[,split])")
    if path.is_dir() and cifar_kind(path):
        return _load_cifar(path, options)
    if path.is_dir() and is_idx_folder(path):
        return _load_idx(path, _named_for_folder(path), options)
    if is_shards_folder(path):
        return _load_shards(path, options)
    return _load_files(path, options)


@dataclass
class DatasetFiles:
    """A dataset made of image files, before decoding: paths are named relative to root."""

    classes: list[str]
    lists: dict[str, FileList]   # per split as the source gives it; "all" when it gives none
    multi_label: bool = False    # a manifest with several (or no) labels per image
    root: Path = Path(".")


def dataset_files(source: str | Path, flat_ok: bool = False, missing_ok: bool = False) -> DatasetFiles | None:
    """The files of a manifest, train/val/test folders or class folders (with flat_ok, also a folder
    of images without class folders: one class named after it); None for any other source.
    missing_ok: a manifest may name missing files (they are then unreadable, not an error)."""
    path = Path(source).expanduser().resolve()
    if not path.exists() or (path.is_file() and path.suffix.lower() != ".csv"):
        return None
    if path.is_file():
        classes, lists, multi_label = read_manifest(path, missing_ok)
        return DatasetFiles(classes, lists, multi_label, path.parent)
    if cifar_kind(path) or is_idx_folder(path) or is_shards_folder(path):
        return None
    if (path / "train").is_dir() and (path / "test").is_dir():
        classes, train_files = list_class_folders(path / "train")
        lists = {"train": train_files}
        for split in ("val", "test"):
            if (path / split).is_dir():
                lists[split] = _files_with_known_classes(path / split, classes)
        return DatasetFiles(classes, lists, root=path)
    if flat_ok and not any(p.is_dir() and not p.name.startswith(".") for p in path.iterdir()):
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        return DatasetFiles([path.name], {"all": FileList(files, [0] * len(files))}, root=path)
    classes, files = list_class_folders(path)
    return DatasetFiles(classes, {"all": files}, root=path)


def from_arrays(train_x, train_y, test_x=None, test_y=None, class_names=None, *, name: str = "arrays",
                options: DataOptions | None = None) -> DatasetSplits:
    """DatasetSplits from NumPy arrays or torch tensors (images N x H x W, N x C x H x W or N x H x W x C)."""
    options = options or DataOptions()
    train = ImageDataset.from_arrays(train_x, train_y, class_names)
    if test_x is None:
        return _split(name, train, None, options, source=name)
    return _split(name, train, ImageDataset(test_x, test_y, train.class_names), options, source=name)


def _split(name: str, train: ImageDataset, test: ImageDataset | None, options: DataOptions, *,
           val: ImageDataset | None = None, skipped=(), source: str = "") -> DatasetSplits:
    """Carve test (if the source has none) and then val (if none) out of train, stratified and seeded.
    Images without files get ids first, so each keeps naming its place in the source after the carving."""
    for split, part in (("train", train), ("test", test)):
        if part is not None and part.paths is None and part.ids is None:
            part.ids = [f"{name}/{split}/{i}" for i in range(len(part))]
    if not options.any_classes:
        check_classes(train.class_names, train.labels.numpy(), name)
    if test is None:    # test_fraction 0: all of it stays in train (an index, say), and test is empty
        train, test = split_dataset(train, options.test_fraction, options.seed) if options.test_fraction > 0 \
            else (train, train.subset([]))
    if val is None and options.val_fraction > 0:
        train, val = split_dataset(train, options.val_fraction, options.seed)
    return DatasetSplits(name=name, train=train, val=val, test=test, skipped=list(skipped), source=source)


def _load_named(name: str, options: DataOptions) -> DatasetSplits:
    dataset = NAMED_DATASETS[name]
    if dataset.kind == "sklearn-digits":
        from sklearn.datasets import load_digits
        digits = load_digits()
        images = np.round(digits.images * (255 / 16)).astype(np.uint8)  # 0..16 -> 0..255
        train = ImageDataset(images, digits.target, list(dataset.class_names))
        return _split(name, train, None, options, source="sklearn.datasets.load_digits")
    folder = locate(dataset, download=options.download)
    if dataset.kind == "cifar":
        return _load_cifar(folder, options, name=name)
    return _load_idx(folder, dataset.name, options)


def _named_for_folder(folder: Path) -> str:
    return folder.resolve().name


def _load_idx(folder: Path, name: str, options: DataOptions) -> DatasetSplits:
    train_x, train_y = read_idx_split(folder, "train")
    test_x, test_y = read_idx_split(folder, "test")
    known = NAMED_DATASETS.get(name)
    n_classes = int(max(train_y.max(), test_y.max())) + 1
    names = list(known.class_names) if known and len(known.class_names) == n_classes else None
    train = ImageDataset.from_arrays(train_x, train_y, names or [str(c) for c in range(n_classes)])
    test = ImageDataset(test_x, test_y, train.class_names)
    return _split(name, train, test, options, source=str(folder))


def _load_cifar(folder: Path, options: DataOptions, name: str | None = None) -> DatasetSplits:
    train_x, train_y, test_x, test_y, names = read_cifar(folder, coarse=options.coarse)
    name = name or cifar_kind(folder)
    train = ImageDataset(train_x, train_y, names)
    return _split(name + ("-coarse" if options.coarse else ""), train, ImageDataset(test_x, test_y, names),
                  options, source=str(folder))


def _file_options(options: DataOptions) -> dict:
    return dict(size=options.size, channels=options.channels, resize=options.resize, decode=options.decode,
                strict=options.strict,
                preprocessing=options.preprocessing, check=not options.any_classes, mode=options.data_mode,
                memory_budget=options.memory_budget, cache=options.cache, verify=options.verify)


def _load_files(path: Path, options: DataOptions) -> DatasetSplits:
    files = dataset_files(path, flat_ok=options.any_classes, missing_ok=options.any_classes)
    data, skipped, _ = decode_file_lists(files.lists, files.classes, files.root, multi_label=files.multi_label,
                                         **_file_options(options))
    name = path.resolve().stem if path.is_file() else path.resolve().name
    return _splits_as_given(name, data, skipped, options, path)


def _load_shards(path: Path, options: DataOptions) -> DatasetSplits:
    """Shards read by seek as files are: decoded into memory, or streamed (each sample read when its
    batch is), the same way and with the same choice of mode. Images that were arrays decode as
    they were, unless the flags ask for another size or channel count."""
    shards = read_shards(path)
    report_skipped(shards.skipped, options.strict)      # left out when the shards were written
    file_options = _file_options(options)
    if shards.preprocessing is not None and options.size is None and options.channels is None:
        file_options["preprocessing"] = options.preprocessing or shards.preprocessing
    data, skipped, _ = decode_file_lists(shards.lists, shards.classes, path.resolve(), multi_label=shards.multi_label,
                                         probes=shards.probes, **file_options)
    if shards.names_are_ids:
        for part in data.values():
            part.ids, part.paths = part.paths, None
    return _splits_as_given(shards.name, data, shards.skipped + skipped, options, path)


def _splits_as_given(name: str, data: dict[str, ImageDataset], skipped, options: DataOptions,
                     path: Path) -> DatasetSplits:
    """DatasetSplits of decoded file lists: the source's own splits, or seeded ones where it has none."""
    if "all" in data:
        splits = _split(name, data["all"], None, options, skipped=skipped, source=str(path))
    elif "train" not in data or "test" not in data:
        raise ImgclsError(f"{path}: a manifest with a split column needs train and test rows "
                          f"(valid splits: {', '.join(SPLIT_NAMES)})")
    else:
        splits = _split(name, data["train"], data["test"], options, val=data.get("val"), skipped=skipped,
                        source=str(path))
    return splits


def _files_with_known_classes(folder: Path, classes: list[str]) -> FileList:
    split_classes, files = list_class_folders(folder)
    unknown = sorted(set(split_classes) - set(classes))
    if unknown:
        raise ImgclsError(f"{folder}: unknown label(s) not in train/: {', '.join(unknown)}")
    remap = [classes.index(name) for name in split_classes]
    return FileList(files.paths, [remap[label] for label in files.labels])
