"""From a dataset to an index, and from command-line queries to images: the glue under
`imgcls index` and `imgcls search`."""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from imgcls.data.dataset import DatasetSplits, ImageDataset, SkippedFile, relative_name, require_single_label
from imgcls.data.files import report_skipped
from imgcls.data.images import UnreadableImage, decode_image, decode_many
from imgcls.data.load import DataOptions, DatasetFiles, dataset_files, load_dataset
from imgcls.data.stream import image_batches
from imgcls.errors import ImgclsError
from imgcls.progress import console
from imgcls.runtime import PREDICT_BATCH
from imgcls.similarity.features import load_features
from imgcls.similarity.index import ImageIndex, index_path

SPLITS = ("train", "val", "test")


@dataclass
class Added:
    name: str             # the dataset's
    added: int
    skipped: int          # images already in the index (same file, or same dataset item)


# ImageIndex's settings, which `imgcls index` takes as flags (--features, --kind, --m, ...).
INDEX_SETTINGS = ("features", "kind", "m", "ef_construction", "ef_search")


def open_index_for(path: str | Path, add: bool, settings: dict) -> tuple[ImageIndex, Path]:
    """The index to fill at path (a folder or .safetensors file), and its file.

    settings holds only the INDEX_SETTINGS the user chose. Without add, a new index with them (the
    rest default) and path must be free; with add, the index there, which settings must not contradict."""
    unknown = sorted(set(settings) - set(INDEX_SETTINGS))
    if unknown:
        raise ImgclsError(f"unknown index settings {', '.join(unknown)}; valid: {', '.join(INDEX_SETTINGS)}")
    path = index_path(path, must_exist=add)
    if not add:
        if path.exists():
            raise ImgclsError(f"{path} exists; add to it with --add, or choose another --out")
        return ImageIndex(**settings), path
    index = ImageIndex.load(path)
    differing = [f"--{k.replace('_', '-')} {v} (the index has {getattr(index, k)})" for k, v in settings.items()
                 if k != "features" and v != getattr(index, k)]
    # A network named another way (its run folder, its model file) is the same features.
    features = settings.get("features")
    if features is not None and features != index.features and load_features(features).spec != index.features:
        differing.append(f"--features {features} (the index has {index.features})")
    if differing:
        raise ImgclsError(f"--add keeps the index's settings; drop {', '.join(differing)}")
    return index, path


def index_dataset(index: ImageIndex, source: str, splits: list[str] | None = None,
                  options: DataOptions | None = None) -> Added:
    """Add the images of source's splits (default: all of them) to index, except those it holds.

    The dataset is loaded as the data flags say (--data-mode, --memory-budget, --cache) and read
    PREDICT_BATCH images at a time through image_batches: streamed, only the chunks in flight are
    decoded, never a file the index already holds, and a file that no longer decodes is reported
    and left out, as an unreadable file is when the images are loaded into memory."""
    options = decode_options(index, options)
    files = dataset_files(source, flat_ok=True)
    if files is not None:
        require_single_label(files.multi_label, str(source), "a similarity index")
    data = load_dataset(source, options).require_single_label("a similarity index")
    held, added, skipped, unreadable = set(index.items_), 0, 0, []
    for split in _chosen(splits, [s for s in SPLITS if getattr(data, s) is not None and len(getattr(data, s))],
                         source):
        part = getattr(data, split)
        names = item_names(data, part, split)
        fresh = _fresh(names, held)
        skipped += len(names) - len(fresh)
        part, names = part.subset(fresh), [names[i] for i in fresh]
        shown = part.names(split)
        for rows, images, failed in image_batches(part.images, PREDICT_BATCH, f"indexing {split}"):
            unreadable += [SkippedFile(shown[i], reason) for i, reason in failed]
            chunk = ImageDataset(images, part.labels[rows], part.class_names)
            index.add(chunk, [names[i] for i in rows.tolist()], split, preprocessing=data.preprocessing)
            added += len(rows)
    report_skipped(unreadable, options.strict)
    if not len(index):
        raise ImgclsError(f"{source}: none of its files is a readable image")
    return Added(data.name, added, skipped)


def _fresh(names: list[str], held: set[str]) -> list[int]:
    """Positions of the names the index does not hold yet (a name listed twice counts once); they
    join held."""
    fresh = []
    for i, name in enumerate(names):
        if name not in held:
            held.add(name)
            fresh.append(i)
    return fresh


def file_names(files: DatasetFiles, paths: list[Path]) -> list[str]:
    """Indexed files are named by their absolute paths (under the dataset's resolved root)."""
    return [str(files.root / relative_name(path, files.root)) for path in paths]


def _chosen(splits: list[str] | None, available: list[str], source: str) -> list[str]:
    for split in splits or []:
        if split not in SPLITS:
            raise ImgclsError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
        if split not in available:
            raise ImgclsError(f"{source}: has no {split} split{_SPLIT_HINT}")
    return [s for s in SPLITS if s in (splits or available)]


_SPLIT_HINT = " (an index keeps the splits a source has; a folder without train/test folders is all 'train')"


def decode_options(index: ImageIndex, options: DataOptions | None) -> DataOptions:
    """Decode files as the index already does, or (a new index) as its features need. Nothing is
    carved out of a source's splits: a folder of class folders stays whole (as "train"), and a
    dataset's images keep their numbers (fashion-mnist/train/0 is its first training image).
    Labels are optional: one class or a flat folder of images is fine."""
    return replace(options or DataOptions(), val_fraction=0, test_fraction=0, any_classes=True,
                   preprocessing=index.preprocessing_ or index.featurizer.preprocessing)


def item_names(data: DatasetSplits, part: ImageDataset, split: str) -> list[str]:
    """Where each image came from: its file's path, or <dataset>/<split>/<number> without files."""
    if part.paths is None:
        return part.names(f"{data.name}/{split}")
    root = Path(data.source).expanduser().resolve()
    root = root.parent if root.is_file() else root
    return [str(root / p) for p in part.paths]


@dataclass
class Queries:
    names: list[str]
    images: torch.Tensor               # uint8, decoded as the index decodes
    labels: list[str | None]           # known for queries taken from a dataset or the index
    exclude: list[int | None]          # an indexed item to leave out (a query that is in the index)


def queries_from_inputs(index: ImageIndex, inputs: list[str]) -> tuple[Queries, list[tuple[str, str]]]:
    """Image files, folders of them, or names of indexed items; returns (queries, unreadable files)."""
    from imgcls.inference.predict import find_images
    position = {item: i for i, item in enumerate(index.items_)}
    names, images, labels, exclude, failures = [], [], [], [], []
    files = [x for x in inputs if x not in position]
    for item in (x for x in inputs if x in position):
        names.append(item)
        images.append(_indexed_image(index, position[item]))
        labels.append(index.class_names_[int(index.labels_[position[item]])])
        exclude.append(position[item])
    for path in find_images(files) if files else []:
        try:
            images.append(torch.from_numpy(decode_image(path, index.preprocessing_).copy()))
        except UnreadableImage as exc:
            failures.append((str(path), str(exc)))
            continue
        names.append(str(path))
        labels.append(None)
        exclude.append(position.get(str(path.resolve())))
    if not images:
        raise ImgclsError("no readable query images" + (f" ({failures[0][0]}: {failures[0][1]})" if failures else ""))
    return Queries(names, torch.stack(images), labels, exclude), failures


def queries_from_dataset(index: ImageIndex, source: str, split: str, n: int, seed: int = 0) -> Queries:
    """n images drawn at random (seeded) from a dataset's split, e.g. test images against a train index.
    From files only the drawn ones are decoded."""
    if n < 1:
        raise ImgclsError("--n must be at least 1")
    files = dataset_files(source, flat_ok=True)
    if files is not None:
        require_single_label(files.multi_label, str(source), "search --from")
        return _queries_from_files(index, files, split, n, seed)
    data = load_dataset(source, decode_options(index, DataOptions()))
    part = getattr(data, split, None) if split in SPLITS else None
    if part is None or not len(part):
        raise ImgclsError(f"{source}: has no {split} split{_SPLIT_HINT}")
    if tuple(part.images.shape[1:]) != (index.preprocessing_.channels, *index.preprocessing_.size):
        raise ImgclsError(f"{source} holds images of {'x'.join(map(str, part.images.shape[1:]))}, the index "
                          f"{index.preprocessing_.channels}x{index.preprocessing_.size[0]}x"
                          f"{index.preprocessing_.size[1]}: query it with images like the indexed ones")
    chosen = _draw(len(part), n, seed)
    names = item_names(data, part, split)
    return _queries(index, [names[i] for i in chosen], part.images[chosen],
                    [part.class_names[int(part.labels[i])] for i in chosen])


def _queries_from_files(index: ImageIndex, files: DatasetFiles, split: str, n: int, seed: int) -> Queries:
    lists = {("train" if s == "all" else s): fl for s, fl in files.lists.items()}
    if split not in lists:
        raise ImgclsError(f"{files.root}: has no {split} split{_SPLIT_HINT}")
    paths, labels = lists[split].paths, lists[split].labels
    chosen = _draw(len(paths), n, seed)
    images, ok, bad = decode_many([paths[i] for i in chosen], index.preprocessing_)
    warn_unreadable([(str(path), reason) for path, reason in bad])
    if not ok:
        raise ImgclsError(f"{files.root}: none of the {len(chosen)} drawn files is a readable image")
    chosen = [chosen[i] for i in ok]
    return _queries(index, file_names(files, [paths[i] for i in chosen]), torch.from_numpy(images),
                    [files.classes[labels[i]] for i in chosen])


def _draw(size: int, n: int, seed: int) -> list[int]:
    return sorted(random.Random(seed).sample(range(size), min(n, size)))


def _queries(index: ImageIndex, names: list[str], images: torch.Tensor, labels: list[str]) -> Queries:
    """Queries named as the index names its items, so one that is indexed is left out of its own answer."""
    position = {item: i for i, item in enumerate(index.items_)}
    return Queries(names, images, labels, [position.get(name) for name in names])


def _indexed_image(index: ImageIndex, i: int) -> torch.Tensor:
    if index.thumbnails_ is not None:
        return index.thumbnails_[i]
    try:
        return torch.from_numpy(decode_image(index.items_[i], index.preprocessing_))
    except UnreadableImage as exc:
        raise ImgclsError(f"{index.items_[i]}: indexed, but no longer readable ({exc})") from exc


def warn_unreadable(failures: list[tuple[str, str]]) -> None:
    for path, reason in failures:
        console.print(f"[yellow]skipped[/] {path}: {reason}", highlight=False)
