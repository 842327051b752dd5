"""A zoo of datasets imgcls has not been tuned on: `imgcls train DATA` with no flags against the
best of a few hand-tuned flag sets per dataset, test accuracy and wall time side by side.

Every dataset is built here from data that ships offline (no download) and written where
imgcls reads it as a user's data: MNIST-family IDX folders, folders of class folders with
train/ and test/, a CSV manifest. Built once under --data-dir and reused:

    fashion-500, fashion-2000, fashion-60k  Fashion-MNIST training subsets (stratified), its own
                                            10,000 test images (/usr/share/datasets/fashion-mnist)
    digits                                  scikit-learn's 8x8 digits, 1,347 train / 450 test
    digits-translated                       those digits pasted at random places on noisy 48 px
                                            canvases (what a position-specific dense head cannot learn)
    photos                                  600 crops of 6 of scikit-image's photographs, a class per
                                            photograph, JPEGs of 256-500 px (bench/stream.py's crops)
    lfw                                     scikit-image's LFW subset: 100 faces, 100 non-faces, 25x25
    mosaics                                 multi-label: 2x2 mosaics of Fashion-MNIST items, 56 px,
                                            labelled by the classes shown (bench/multilabel.py)
    imbalanced                              Fashion-MNIST with 5 classes 20x as common as the other 5
    tiny                                    Fashion-MNIST, 10 training images per class

For each it runs `imgcls train DATA` with no model flags (--time-budget is passed on when given)
and each hand-tuned flag set, every one a fresh process, and prints: the sizes, the no-flags
test accuracy (mAP for the multi-label mosaics) and wall time, the best hand-tuned flags with
theirs, the difference in points and in test images, and whether it meets the aim: within 2
points or 2 test images of the best, whichever is more. Hand-tuned results do not depend on
imgcls's automatic choices, so they are cached in --data-dir (JSON keyed by dataset, size and
flags) and only the missing ones run (--rerun-hand-tuned runs them again).

    python bench/defaults.py --quick                          # small subsets, short runs
    python bench/defaults.py --datasets digits,lfw,tiny
    python bench/defaults.py --time-budget 5m --json /tmp/defaults.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from machine import banner  # bench/machine.py: the CPU and its flags

ROOT = Path(__file__).resolve().parent.parent
FASHION = Path("/usr/share/datasets/fashion-mnist")
AIM_POINTS, AIM_IMAGES = 2.0, 2
BUILT = ".built"
PHOTO_CLASSES = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry")


# -- the datasets ------------------------------------------------------------------------------

def write_idx(folder: Path, train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray]) -> Path:
    """Grayscale uint8 images (N, H, W) and labels as an MNIST-family IDX folder."""
    import struct
    folder.mkdir(parents=True, exist_ok=True)
    for split, (images, labels) in (("train", train), ("t10k", test)):
        for kind, array in (("images", np.asarray(images, np.uint8)), ("labels", np.asarray(labels, np.uint8))):
            header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
            (folder / f"{split}-{kind}-idx{array.ndim}-ubyte").write_bytes(header + array.tobytes())
    return folder


def write_class_folders(folder: Path, splits: dict[str, tuple[np.ndarray, np.ndarray]], names: list[str]) -> Path:
    """Images (N, H, W) or (N, H, W, 3) as PNGs in folder/<split>/<class>/."""
    for split, (images, labels) in splits.items():
        for i, (image, label) in enumerate(zip(images, labels)):
            path = folder / split / names[label] / f"{i:05d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.asarray(image, np.uint8)).save(path)
    return folder


def fashion() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from imgcls.data.formats import read_idx_split
    return {split: read_idx_split(FASHION, split) for split in ("train", "test")}


def per_class(labels: np.ndarray, counts: dict[int, int] | int, rng: np.random.Generator) -> np.ndarray:
    """Indices of a seeded random sample with counts[c] images of class c (an int: the same for all)."""
    classes = np.unique(labels)
    counts = counts if isinstance(counts, dict) else {int(c): counts for c in classes}
    chosen = [rng.choice(np.flatnonzero(labels == c), counts[int(c)], replace=False) for c in classes]
    return np.sort(np.concatenate(chosen))


def fashion_subset(folder: Path, train_per_class, test_per_class, seed: int = 0) -> Path:
    data, rng = fashion(), np.random.default_rng(seed)
    parts = []
    for split, counts in (("train", train_per_class), ("test", test_per_class)):
        images, labels = data[split]
        keep = per_class(labels, counts, rng) if counts is not None else np.arange(len(labels))
        parts.append((images[keep], labels[keep]))
    return write_idx(folder, *parts)


def digits_split(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's digits as 0..255 uint8, and a seeded 1,347 / 450 train / test split (its 75/25)."""
    from sklearn.datasets import load_digits
    digits = load_digits()
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)
    order = np.random.default_rng(seed).permutation(len(images))
    return images, digits.target, order


def digits_folder(folder: Path, quick: bool) -> Path:
    images, labels, order = digits_split()
    train, test = order[:1347], order[1347:]
    return write_idx(folder, (images[train], labels[train]), (images[test], labels[test]))


def translated_digits(canvas: int = 48, noise: float = 40.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits pasted at a random place each on a canvas x canvas of noise
    (|N(0, noise)|, the digit's strokes kept where brighter): (images uint8 N x canvas x canvas, labels)."""
    images, labels, _ = digits_split()
    rng = np.random.default_rng(seed)
    out = np.abs(rng.normal(0, noise, (len(images), canvas, canvas))).clip(0, 255)
    places = rng.integers(0, canvas - 8 + 1, (len(images), 2))
    for image, digit, (top, left) in zip(out, images, places):
        image[top:top + 8, left:left + 8] = np.maximum(image[top:top + 8, left:left + 8], digit)
    return out.astype(np.uint8), labels


def translated_folder(folder: Path, quick: bool, canvas: int = 48) -> Path:
    images, labels = translated_digits(canvas)
    _, _, order = digits_split()
    train, test = order[:1347], order[1347:]
    return write_idx(folder, (images[train], labels[train]), (images[test], labels[test]))


def photos_folder(folder: Path, quick: bool) -> Path:
    """600 (quick: 300) JPEG crops of 6 scikit-image photographs, class folders (imgcls holds out test)."""
    from stream import _write_some
    count = 300 if quick else 600
    for name in PHOTO_CLASSES:
        (folder / name).mkdir(parents=True, exist_ok=True)
    _write_some((folder, PHOTO_CLASSES, 0, count, 0))
    return folder


def lfw_folder(folder: Path, quick: bool) -> Path:
    """scikit-image's lfw_subset: 100 faces then 100 non-faces, 25x25; a seeded 150 / 50 split."""
    import skimage.data
    images = np.round(skimage.data.lfw_subset() * 255).astype(np.uint8)
    labels = np.repeat([0, 1], 100)
    rng = np.random.default_rng(0)
    test = np.sort(np.r_[rng.choice(100, 25, replace=False), 100 + rng.choice(100, 25, replace=False)])
    train = np.setdiff1d(np.arange(200), test)
    return write_class_folders(folder, {"train": (images[train], labels[train]), "test": (images[test], labels[test])},
                               ["face", "non-face"])


def mosaics_folder(folder: Path, quick: bool) -> Path:
    """Multi-label mosaics of Fashion-MNIST items as PNGs and a manifest with a split column."""
    import torch
    from multilabel import mosaics
    data = fashion()
    names = ["T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    sizes = {"train": 1000 if quick else 6000, "test": 500 if quick else 2000}
    rows = []
    for seed, (split, n) in enumerate(sizes.items()):
        images, labels = data[split]
        tiles, hot = mosaics(torch.from_numpy(images[:, None]), torch.from_numpy(labels), n, seed)
        (folder / split).mkdir(parents=True, exist_ok=True)
        for i, (tile, row) in enumerate(zip(tiles, hot)):
            name = f"{split}/{i:05d}.png"
            Image.fromarray(tile[0].numpy()).save(folder / name)
            rows.append((name, ";".join(names[c] for c in np.flatnonzero(row.numpy())), split))
    with open(folder / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "labels", "split"])
        writer.writerows(rows)
    return folder / "labels.csv"


@dataclass
class Dataset:
    kind: str
    build: object                     # (folder, quick) -> the DATA path imgcls reads
    hand_tuned: list[list[str]]       # flag sets an expert would try, each about 5 minutes or less
    quick_epochs: int = 3             # networks' --epochs in --quick runs


def vgg(widths: str, epochs: int, *extra: str) -> list[str]:
    return ["--model", "vgg", "--widths", widths, "--epochs", str(epochs), *extra]


PROBE = ["--model", "transfer:efficientnet_lite0"]
RECIPE_5MIN = ["--config", str(ROOT / "recipes/fashion-5min.yaml")]
RECIPE_MOSAIC = ["--config", str(ROOT / "recipes/fashion-mosaic-multilabel.yaml")]

DATASETS: dict[str, Dataset] = {
    "fashion-500": Dataset("grayscale 28 px, 10 classes", lambda f, q: fashion_subset(f, 50, 200 if q else None),
                           [["--model", "knn"], vgg("32,64,128", 40, "--augment", "crop=2,flip"), PROBE]),
    "fashion-2000": Dataset("grayscale 28 px, 10 classes", lambda f, q: fashion_subset(f, 200, 200 if q else None),
                            [["--model", "knn"], vgg("32,64,128", 30, "--augment", "crop=2,flip"), PROBE]),
    "fashion-60k": Dataset("grayscale 28 px, 10 classes",
                           lambda f, q: fashion_subset(f, 600 if q else None, 200 if q else None),
                           [["--model", "knn"], RECIPE_5MIN]),
    "digits": Dataset("grayscale 8 px, 10 classes", digits_folder,
                      [["--model", "knn"], ["--model", "linear", "--epochs", "30"], vgg("32,64", 30)]),
    "digits-translated": Dataset("grayscale 48 px, 10 classes, objects anywhere", translated_folder,
                                 [["--model", "knn"], vgg("32,64,128", 15)]),
    "photos": Dataset("colour photographs 256-500 px, 6 classes", photos_folder,
                      [["--model", "knn"], PROBE, [*PROBE, "--mode", "knn"]]),
    "lfw": Dataset("grayscale 25 px faces / non-faces, 2 classes", lfw_folder,
                   [["--model", "knn"], ["--model", "linear", "--epochs", "30"], vgg("16,32", 30, "--augment", "flip"),
                    PROBE]),
    "mosaics": Dataset("multi-label, grayscale 56 px, 10 labels", mosaics_folder,
                       [["--model", "knn"], [*RECIPE_MOSAIC, "--epochs", "20"]]),
    "imbalanced": Dataset("grayscale 28 px, 10 classes at 20:1",
                          lambda f, q: fashion_subset(f, {c: (200 if q else 1000) if c < 5 else (10 if q else 50)
                                                          for c in range(10)},
                                                      {c: (100 if q else 500) if c < 5 else (5 if q else 25)
                                                       for c in range(10)}),
                          [["--model", "knn"], vgg("32,64,128", 15, "--augment", "crop=2,flip"),
                           vgg("32,64,128", 15, "--augment", "crop=2,flip", "--balance", "weights")]),
    "tiny": Dataset("grayscale 28 px, 10 classes, 10 images each", lambda f, q: fashion_subset(f, 10, 100),
                    [["--model", "knn", "--k", "1"], ["--model", "linear", "--epochs", "50"], PROBE]),
}


def build(name: str, data_dir: Path, quick: bool) -> Path:
    """The dataset's DATA path, built under data_dir once (a marker file records the path)."""
    folder = data_dir / ("quick" if quick else "full") / name
    marker = folder / BUILT
    if marker.is_file():
        return Path(marker.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    path = DATASETS[name].build(folder, quick)
    marker.write_text(str(path))
    print(f"built {name} in {time.perf_counter() - start:.0f} s: {path}", flush=True)
    return path


# -- running imgcls ------------------------------------------------------------------------------

def headline(report: dict) -> tuple[str, float]:
    """(name, value) of the figure compared: accuracy, or mAP for a multi-label report."""
    return ("mAP", report["mAP"]) if "mAP" in report else ("accuracy", report["accuracy"])


def with_quick_epochs(flags: list[str], epochs: int) -> list[str]:
    """flags with --epochs set to epochs for a network (a recipe's too), as they are otherwise."""
    model = flags[flags.index("--model") + 1] if "--model" in flags else None
    if "--config" not in flags and (model is None or model in ("knn", "transfer:efficientnet_lite0")):
        return flags
    if "--epochs" in flags:
        at = flags.index("--epochs") + 1
        return [*flags[:at], str(epochs), *flags[at + 1:]]
    return [*flags, "--epochs", str(epochs)]


def run_train(data: Path, flags: list[str], out: Path) -> dict:
    """`imgcls train DATA FLAGS --out OUT` in a fresh process of this checkout: its figures and wall time."""
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "imgcls.cli", "train", str(data), *flags, "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
           "IMGCLS_PROGRESS": "0"}
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    result = {"flags": shown(flags), "seconds": seconds}
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        return {**result, "error": lines[-1] if lines else f"exit status {done.returncode}"}
    report = json.loads((out / "report.json").read_text())
    metric, value = headline(report)
    return {**result, "metric": metric, "value": value, "sizes": report["sizes"], "model": report["model"],
            "warnings": report.get("warnings", [])}


def shown(flags: list[str]) -> list[str]:
    """Flags as the table shows them: a recipe by its file name."""
    return [Path(f).name if f.endswith(".yaml") else f for f in flags]


class HandTuned:
    """Hand-tuned results in a JSON file, keyed by dataset, size (quick or full) and flags."""

    def __init__(self, path: Path):
        self.path = path
        self.results = json.loads(path.read_text()) if path.is_file() else {}

    @staticmethod
    def key(name: str, quick: bool, flags: list[str]) -> str:
        return f"{name}|{'quick' if quick else 'full'}|{' '.join(shown(flags))}"

    def get(self, key: str) -> dict | None:
        return self.results.get(key)

    def put(self, key: str, result: dict) -> None:
        self.results[key] = result
        self.path.write_text(json.dumps(self.results, indent=2))


def compare(name: str, data: Path, runs: Path, cache: HandTuned, quick: bool, budget: str | None,
            rerun: bool) -> dict:
    """The no-flags run and each hand-tuned flag set (cached) on one dataset."""
    dataset = DATASETS[name]
    default = run_train(data, ["--time-budget", budget] if budget else [], runs / name / "no-flags")
    print(f"  {name}: no flags: {describe(default)}", flush=True)
    tuned = []
    for i, flags in enumerate(dataset.hand_tuned):
        flags = with_quick_epochs(flags, dataset.quick_epochs) if quick else flags
        key = HandTuned.key(name, quick, flags)
        result = None if rerun else cache.get(key)
        if result is None:
            result = run_train(data, flags, runs / name / f"hand-tuned-{i}")
            cache.put(key, result)
            print(f"  {name}: {' '.join(result['flags'])}: {describe(result)}", flush=True)
        else:
            print(f"  {name}: {' '.join(result['flags'])}: {describe(result)} (cached)", flush=True)
        tuned.append(result)
    return {"dataset": name, "kind": dataset.kind, "no_flags": default, "hand_tuned": tuned}


def describe(result: dict) -> str:
    if "error" in result:
        return f"failed in {result['seconds']:.0f} s: {result['error']}"
    return f"{figure(result)} in {result['seconds']:.0f} s"


def figure(result: dict) -> str:
    return f"{result['value']:.3f} mAP" if result["metric"] == "mAP" else f"{result['value']:.2%}"


def verdict(row: dict) -> dict:
    """The best hand-tuned result, and how far the no-flags run is from it: in points, in test
    images (accuracy only), and whether that is within the aim (2 points or 2 test images, the more)."""
    default, tuned = row["no_flags"], [t for t in row["hand_tuned"] if "error" not in t]
    if not tuned:
        return {}
    best = max(tuned, key=lambda t: t["value"])
    out = {"best": best}
    if "error" in default:
        return out
    test_images = best["sizes"].get("test", 0)
    gap = best["value"] - default["value"]
    allowed = max(AIM_POINTS, 100 * AIM_IMAGES / test_images) if test_images else AIM_POINTS
    return {**out, "points": 100 * gap, "images": round(gap * test_images) if default["metric"] == "accuracy" else None,
            "allowed_points": allowed, "meets_aim": 100 * gap <= allowed}


def table(rows: list[dict]) -> str:
    """A Markdown table: one row per dataset."""
    head = ("dataset", "kind", "train / val / test", "no flags", "s", "best hand-tuned flags", "best", "s",
            "gap (points)", "gap (test images)", "aim met")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        default, v = row["no_flags"], verdict(row)
        sizes = default.get("sizes") or (v["best"]["sizes"] if v else {})
        cells = [row["dataset"], row["kind"], " / ".join(f"{sizes.get(s, 0):,}" for s in ("train", "val", "test")),
                 "failed" if "error" in default else figure(default), f"{default['seconds']:.0f}"]
        if v:
            best = v["best"]
            cells += ["`" + " ".join(best["flags"]) + "`", figure(best), f"{best['seconds']:.0f}"]
        else:
            cells += ["(all failed)", "", ""]
        if "points" in v:
            cells += [f"{v['points']:+.1f}", "-" if v["images"] is None else f"{v['images']:+d}",
                      "yes" if v["meets_aim"] else "no"]
        else:
            cells += ["", "", ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "imgcls-defaults",
                        help="where the datasets, the runs and the hand-tuned results live (default: %(default)s)")
    parser.add_argument("--datasets", default=",".join(DATASETS), help=f"comma-separated, of: {', '.join(DATASETS)}")
    parser.add_argument("--quick", action="store_true", help="small subsets and short runs, to check the bench")
    parser.add_argument("--time-budget", default=None, help="passed to the no-flags run as --time-budget")
    parser.add_argument("--rerun-hand-tuned", action="store_true", help="run the cached hand-tuned flag sets again")
    parser.add_argument("--json", default=None, help="write the results here too")
    args = parser.parse_args()
    names = [n.strip() for n in args.datasets.split(",") if n.strip()]
    unknown = [n for n in names if n not in DATASETS]
    if unknown:
        parser.error(f"unknown dataset(s) {', '.join(unknown)}; valid: {', '.join(DATASETS)}")
    print(banner())
    print("load average: {:.2f}, {:.2f}, {:.2f}".format(*os.getloadavg()), flush=True)
    args.data_dir.mkdir(parents=True, exist_ok=True)
    cache = HandTuned(args.data_dir / "hand_tuned.json")
    runs = args.data_dir / "runs" / ("quick" if args.quick else "full")
    rows = []
    for name in names:
        data = build(name, args.data_dir, args.quick)
        rows.append(compare(name, data, runs, cache, args.quick, args.time_budget, args.rerun_hand_tuned))
    print("\nload average: {:.2f}, {:.2f}, {:.2f}".format(*os.getloadavg()))
    print(f"no flags: `imgcls train DATA{' --time-budget ' + args.time_budget if args.time_budget else ''}`; "
          f"{'quick: small subsets, networks at a few epochs' if args.quick else 'full size'}\n")
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"quick": args.quick, "time_budget": args.time_budget,
                                               "rows": [{**r, "verdict": verdict(r)} for r in rows]}, indent=2))


if __name__ == "__main__":
    main()
