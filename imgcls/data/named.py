"""Named datasets: found in an explicit path, the cache, or a system data folder; else downloaded
from the official address and checked against the published checksum."""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from imgcls.errors import ImgclsError
from imgcls.progress import progress_bar
from imgcls.storage import cache_dir, file_digest

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
_IDX_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
              "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


@dataclass(frozen=True)
class NamedDataset:
    name: str
    kind: str                      # "idx", "cifar" or "sklearn-digits"
    description: str
    mirrors: tuple[str, ...] = ()  # base URLs, tried in order
    files: tuple[tuple[str, str], ...] = ()  # (file name, md5) under each mirror
    system_dirs: tuple[str, ...] = ()
    class_names: tuple[str, ...] = ()
    archive_folder: str = ""       # folder inside a downloaded tarball


NAMED_DATASETS = {
    d.name: d for d in [
        NamedDataset(
            "fashion-mnist", "idx", "Zalando's 70,000 28x28 grayscale clothing images, 10 classes",
            mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
                     "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"),
            files=tuple(zip(_IDX_FILES, ("8d4fb7e6c68d591d4c3dfef9ec88bf0d", "25c81989df183df01b3e8a0aad5dffbe",
                                         "bef4ecab320f06d8554ea6380940ec79", "bb300cfdad3c16e7a12a480ee83cd310"))),
            system_dirs=("/usr/share/datasets/fashion-mnist",), class_names=tuple(FASHION_CLASSES)),
        NamedDataset(
            "mnist", "idx", "70,000 28x28 grayscale handwritten digits, 10 classes",
            mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
            files=tuple(zip(_IDX_FILES, ("f68b3c2dcbeaaa9fbdd348bbdeb94873", "d53e105ee54ea40749a09fcbcd1e9432",
                                         "9fb629c4189551a2d022fa330f9573f3", "ec29112dd5afa0611ce80d1b7f02629c"))),
            system_dirs=("/usr/share/datasets/mnist",), class_names=tuple(str(d) for d in range(10))),
        NamedDataset(
            "cifar10", "cifar", "60,000 32x32 colour images, 10 classes",
            mirrors=("https://www.cs.toronto.edu/~kriz/",),
            files=(("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"),),
            system_dirs=("/usr/share/datasets/cifar10",), archive_folder="cifar-10-batches-py"),
        NamedDataset(
            "cifar100", "cifar", "60,000 32x32 colour images, 100 classes (20 coarse superclasses)",
            mirrors=("https://www.cs.toronto.edu/~kriz/",),
            files=(("cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85"),),
            system_dirs=("/usr/share/datasets/cifar100",), archive_folder="cifar-100-python"),
        NamedDataset("digits", "sklearn-digits", "scikit-learn's bundled 1,797 8x8 handwritten digits, 10 classes",
                     class_names=tuple(str(d) for d in range(10))),
    ]
}


def cache_root() -> Path:
    """Where downloaded datasets are kept: $IMGCLS_DATA, else cache_dir()/datasets."""
    return Path(os.environ.get("IMGCLS_DATA") or cache_dir() / "datasets")


def locate(dataset: NamedDataset, path: Path | None = None, download: bool = True) -> Path:
    """The folder holding the dataset's files: explicit path, cache, system folder, or a download."""
    candidates = [path] if path else [cache_root() / dataset.name, *map(Path, dataset.system_dirs)]
    for folder in candidates:
        found = _dataset_folder(dataset, folder)
        if found:
            return found
    if path:
        raise ImgclsError(f"{path}: no {dataset.name} files there")
    if not download:
        raise ImgclsError(f"{dataset.name} not found in {', '.join(map(str, candidates))} and download is off")
    return download_dataset(dataset, cache_root() / dataset.name)


def _dataset_folder(dataset: NamedDataset, folder: Path) -> Path | None:
    if not folder.is_dir():
        return None
    if dataset.kind == "idx":
        from imgcls.data.formats import is_idx_folder
        return folder if is_idx_folder(folder) else None
    from imgcls.data.formats import cifar_kind
    for candidate in (folder, folder / dataset.archive_folder):
        if candidate.is_dir() and cifar_kind(candidate):
            return candidate
    return None


def download_dataset(dataset: NamedDataset, target: Path) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    for file_name, md5 in dataset.files:
        destination = target / file_name
        if not (destination.is_file() and file_digest(destination, "md5") == md5):
            _download_from_mirrors(dataset, file_name, md5, destination)
        if file_name.endswith(".tar.gz"):
            with tarfile.open(destination) as tar:
                tar.extractall(target, filter="data")
    found = _dataset_folder(dataset, target)
    if not found:
        raise ImgclsError(f"downloaded {dataset.name} into {target} but its files are not as expected")
    return found


def _download_from_mirrors(dataset: NamedDataset, file_name: str, md5: str, destination: Path) -> None:
    errors = []
    for mirror in dataset.mirrors:
        url = mirror + file_name
        try:
            _fetch(url, destination)
        except OSError as exc:
            errors.append(f"{url}: {exc}")
            continue
        if file_digest(destination, "md5") == md5:
            return
        destination.unlink()
        errors.append(f"{url}: checksum mismatch (expected md5 {md5})")
    hint = (f"download it by hand into {destination.parent}, or point imgcls at a folder holding it"
            + (" (on Debian: apt-get install dataset-fashion-mnist)" if dataset.name == "fashion-mnist" else ""))
    raise ImgclsError(f"cannot download {dataset.name} ({'; '.join(errors)}); {hint}")


def _fetch(url: str, destination: Path) -> None:
    with urllib.request.urlopen(url, timeout=30) as response:
        total = int(response.headers.get("Content-Length") or 0)
        with tempfile.NamedTemporaryFile(dir=destination.parent, delete=False) as tmp, \
                progress_bar(total, f"downloading {destination.name}") as advance:
            while chunk := response.read(1 << 20):
                tmp.write(chunk)
                advance(len(chunk))
    shutil.move(tmp.name, destination)
