"""The data layer: odd files, resize policies, every source format, one-line errors, and seeded splits.

Every dataset here is written into tmp_path by the test itself (a few 8x8 images), except the named
ones: scikit-learn's bundled digits, and Fashion-MNIST when the system folder holds it.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imgcls.data import (DataOptions, Preprocessing, decode_image, from_arrays, load_dataset, stratified_kfold,
                         stratified_split)
from imgcls.data.images import decode_many
from imgcls.data.inspect import write_info
from imgcls.data.named import FASHION_CLASSES

from checks import one_line_error


def assert_labels_match_pixels(*parts) -> None:
    """Images written by class_tree carry their class in the red channel (40 * label)."""
    for part in parts:
        assert torch.equal(part.images[:, 0, 0, 0].long() // 40, part.labels)


def decode_file(path: Path, channels: int) -> np.ndarray:
    """Decode at the file's own (EXIF-rotated) size, so no resizing is involved."""
    with Image.open(path) as img:
        width, height = img.size
    return decode_image(path, Preprocessing(channels=channels, size=(height, width)))


# ---------------------------------------------------------------------------------------- odd files


def test_cmyk_jpeg_decodes_to_rgb(tmp_path, write_image):
    cmyk = [(0, 0, 0, 0), (255, 0, 0, 0), (0, 0, 0, 255), (0, 255, 255, 0)]  # white, cyan, black, red
    blocks = np.repeat(np.array([cmyk], dtype=np.uint8), 8, axis=1).repeat(8, axis=0)  # 8 x 32 x 4
    path = write_image(tmp_path / "cmyk.jpg", Image.fromarray(blocks, "CMYK"), quality=95)
    assert Image.open(path).mode == "CMYK"
    rgb = decode_file(path, channels=3)
    assert rgb.shape == (3, 8, 32) and rgb.dtype == np.uint8
    centres = rgb[:, 4, [4, 12, 20, 28]].T.astype(int)
    expected = [(255, 255, 255), (0, 255, 255), (0, 0, 0), (255, 0, 0)]
    np.testing.assert_allclose(centres, expected, atol=8)


def test_16bit_grayscale_png_is_scaled_to_8_bits(tmp_path, write_image):
    values = np.array([[0, 256, 32768, 65535]], dtype=np.uint16)
    path = write_image(tmp_path / "deep.png", values)
    assert Image.open(path).mode.startswith("I;16")
    np.testing.assert_array_equal(decode_file(path, channels=1), [[[0, 1, 128, 255]]])
    np.testing.assert_array_equal(decode_file(path, channels=3)[:, 0, 2], [128, 128, 128])


def test_dark_16bit_png_stays_dark(tmp_path, write_image):
    # Values below 256 out of 65535 are nearly black; reading them as 8-bit values would brighten them.
    path = write_image(tmp_path / "dark.png", np.array([[0, 100, 200, 255]], dtype=np.uint16))
    np.testing.assert_array_equal(decode_file(path, channels=1), [[[0, 0, 0, 0]]])


def _palette_image() -> Image.Image:
    img = Image.fromarray(np.array([[0, 1, 2, 2]], dtype=np.uint8), "P")
    img.putpalette([255, 0, 0, 0, 0, 255, 10, 20, 30] + [0] * (256 * 3 - 9))
    return img


def test_palette_png_without_transparency(tmp_path, write_image):
    path = write_image(tmp_path / "palette.png", _palette_image())
    assert Image.open(path).mode == "P"
    rgb = decode_file(path, channels=3)
    np.testing.assert_array_equal(rgb[:, 0].T, [(255, 0, 0), (0, 0, 255), (10, 20, 30), (10, 20, 30)])


def test_palette_png_transparent_index_becomes_white(tmp_path, write_image):
    path = write_image(tmp_path / "palette.png", _palette_image(), transparency=2)
    rgb = decode_file(path, channels=3)
    np.testing.assert_array_equal(rgb[:, 0].T, [(255, 0, 0), (0, 0, 255), (255, 255, 255), (255, 255, 255)])


def test_grayscale_alpha_is_composited_onto_white(tmp_path, write_image):
    gray_alpha = np.array([[[50, 255], [50, 0], [50, 128]]], dtype=np.uint8)  # opaque, transparent, half
    path = write_image(tmp_path / "la.png", Image.fromarray(gray_alpha, "LA"))
    assert Image.open(path).mode == "LA"
    gray = decode_file(path, channels=1)
    assert gray.shape == (1, 1, 3)
    half = 50 * 128 / 255 + 255 * 127 / 255
    np.testing.assert_allclose(gray[0, 0], [50, 255, half], atol=1)


def test_rgba_transparent_pixels_become_white(tmp_path, write_image):
    rgba = np.array([[[200, 10, 10, 255], [200, 10, 10, 0], [0, 0, 0, 0]]], dtype=np.uint8)
    path = write_image(tmp_path / "rgba.png", rgba)
    rgb = decode_file(path, channels=3)
    np.testing.assert_array_equal(rgb[:, 0].T, [(200, 10, 10), (255, 255, 255), (255, 255, 255)])


def _rotated_jpeg(path: Path, write_image) -> np.ndarray:
    """A 20-wide, 10-high JPEG (black left half, white right half) tagged EXIF orientation 6.

    Returns what a viewer shows: the stored pixels turned 90 degrees clockwise (10 wide, 20 high).
    """
    stored = np.zeros((10, 20), dtype=np.uint8)
    stored[:, 10:] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    write_image(path, stored, exif=exif, quality=95)
    return np.rot90(stored, k=-1)


def test_exif_rotated_jpeg_is_decoded_upright(tmp_path, write_image):
    upright = _rotated_jpeg(tmp_path / "rotated.jpg", write_image)
    decoded = decode_image(tmp_path / "rotated.jpg", Preprocessing(channels=1, size=(20, 10)))
    assert decoded.shape == (1, 20, 10)
    assert decoded[0, :8].max() < 40 and decoded[0, 12:].min() > 215  # black on top, white below
    assert np.abs(decoded[0].astype(int) - upright).mean() < 8


def test_exif_rotation_sets_the_dataset_size(tmp_path, write_image):
    for name in ("up", "down"):
        for i in range(5):
            _rotated_jpeg(tmp_path / "rot" / name / f"{i}.jpg", write_image)
    splits = load_dataset(tmp_path / "rot")
    assert splits.train.preprocessing == Preprocessing(channels=1, size=(20, 10))
    assert splits.train.images[:, 0, :8].max() < 40 and splits.train.images[:, 0, 12:].min() > 215


def _write_unreadable_files(cat: Path, write_image) -> set[str]:
    """A truncated JPEG, a truncated PNG and a text file named .jpg; returns their relative names."""
    noise = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    for name in ("cut.jpg", "cut.png"):
        path = write_image(cat / name, noise)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    (cat / "notes.jpg").write_text("not an image\n")
    return {f"{cat.name}/{name}" for name in ("cut.jpg", "cut.png", "notes.jpg")}


def test_unreadable_files_are_skipped_with_a_warning(tmp_path, class_tree, write_image, capsys):
    root = class_tree(tmp_path / "pets", {"cat": 5, "dog": 5})
    bad = _write_unreadable_files(root / "cat", write_image)
    splits = load_dataset(root)
    assert {s.path for s in splits.skipped} == bad
    reasons = {s.path: s.reason for s in splits.skipped}
    assert reasons["cat/notes.jpg"] == "not an image file"
    assert all(reasons.values())
    assert sum(splits.summary().values()) == 10  # only the readable images are loaded
    err = " ".join(capsys.readouterr().err.split())
    assert "warning" in err and "skipped 3 unreadable file(s)" in err and "cat/notes.jpg" in err


def test_strict_makes_an_unreadable_file_an_error(tmp_path, class_tree, write_image):
    root = class_tree(tmp_path / "pets", {"cat": 5, "dog": 5})
    (root / "dog" / "notes.jpg").write_text("not an image\n")
    one_line_error(lambda: load_dataset(root, DataOptions(strict=True)), "dog/notes.jpg", "not an image file")


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("limit", [1000, 500], ids=["warned-by-pil", "refused-by-pil"])
def test_decompression_bomb_is_skipped(tmp_path, class_tree, write_image, monkeypatch, limit):
    # A 40x40 image has 1,600 pixels: PIL only warns below twice its limit and refuses above it.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    root = class_tree(tmp_path / "pets", {"cat": 5, "dog": 5})
    write_image(root / "cat" / "bomb.png", np.zeros((40, 40), dtype=np.uint8))
    splits = load_dataset(root)
    assert [(s.path, s.reason) for s in splits.skipped] == [("cat/bomb.png", f"too many pixels (limit {limit:,})")]
    assert sum(splits.summary().values()) == 10


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_bomb_check_holds_in_parallel_decoding_and_leaves_warnings_alone(tmp_path, write_image, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    small = write_image(tmp_path / "small.png", np.zeros((8, 8), dtype=np.uint8))
    bomb = write_image(tmp_path / "bomb.png", np.zeros((40, 40), dtype=np.uint8))
    filters_before = list(warnings.filters)
    paths = [small, bomb] * 500
    _, ok, bad = decode_many(paths, Preprocessing(channels=1, size=(8, 8)))
    assert {paths[i] for i in ok} == {small} and len(ok) == 500
    assert {path for path, _ in bad} == {bomb} and len(bad) == 500
    assert warnings.filters == filters_before


# ---------------------------------------------------------------------------------------- resizing

RED, GREEN, BLUE, YELLOW = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)


@pytest.fixture
def stripes(tmp_path, write_image) -> Path:
    """20 wide, 10 high: four 5-pixel vertical stripes, red | green (left half), blue | yellow (right)."""
    row = np.repeat(np.array([RED, GREEN, BLUE, YELLOW], dtype=np.uint8), 5, axis=0)  # 20 x 3
    return write_image(tmp_path / "stripes.png", np.repeat(row[None], 10, axis=0))


def _columns(*colours_and_widths) -> np.ndarray:
    return np.concatenate([np.tile(c, (w, 1)) for c, w in colours_and_widths]).T  # 3 x width


def test_crop_keeps_the_centre(stripes):
    out = decode_image(stripes, Preprocessing(channels=3, size=(10, 10), resize="crop"))
    assert out.shape == (3, 10, 10)
    expected = _columns((GREEN, 5), (BLUE, 5))
    np.testing.assert_array_equal(out, np.repeat(expected[:, None], 10, axis=1))


def test_pad_keeps_everything_and_fills_with_black(stripes):
    out = decode_image(stripes, Preprocessing(channels=3, size=(20, 20), resize="pad"))
    assert out.shape == (3, 20, 20)
    np.testing.assert_array_equal(out[:, :5], 0)
    np.testing.assert_array_equal(out[:, 15:], 0)
    expected = _columns((RED, 5), (GREEN, 5), (BLUE, 5), (YELLOW, 5))
    np.testing.assert_array_equal(out[:, 5:15], np.repeat(expected[:, None], 10, axis=1))


def test_stretch_distorts_to_fill(stripes):
    out = decode_image(stripes, Preprocessing(channels=3, size=(20, 20), resize="stretch"))
    assert out.shape == (3, 20, 20)
    expected = _columns((RED, 5), (GREEN, 5), (BLUE, 5), (YELLOW, 5))
    np.testing.assert_array_equal(out, np.repeat(expected[:, None], 20, axis=1))


def test_resize_option_reaches_file_datasets(tmp_path, write_image):
    row = np.repeat(np.array([RED, GREEN, BLUE, YELLOW], dtype=np.uint8), 5, axis=0)
    for name in ("a", "b"):
        for i in range(5):
            write_image(tmp_path / "wide" / name / f"{i}.png", np.repeat(row[None], 10, axis=0))
    train = load_dataset(tmp_path / "wide", DataOptions(size=20, resize="pad")).train
    assert train.images.shape[1:] == (3, 20, 20)
    assert train.images[:, :, :5].max() == 0 and train.images[:, 0, 10, 0].min() == 255


def test_unknown_resize_policy_lists_the_valid_ones():
    one_line_error(lambda: Preprocessing(channels=3, size=(8, 8), resize="squash"), "squash", "crop, pad, stretch")


def test_default_preprocessing(tmp_path, write_image):
    # Grayscale only when every image is; the common size when all agree, else the median short side.
    for i, (name, size) in enumerate([("a", (8, 8)), ("a", (12, 16)), ("a", (12, 12)),
                                      ("b", (8, 8)), ("b", (16, 12)), ("b", (12, 20))]):
        write_image(tmp_path / "mixed" / name / f"{i}.png", np.full(size, 90, dtype=np.uint8))
    assert load_dataset(tmp_path / "mixed").train.preprocessing == Preprocessing(channels=1, size=(12, 12))
    write_image(tmp_path / "mixed" / "b" / "colour.png", np.full((8, 8, 3), 90, dtype=np.uint8))
    assert load_dataset(tmp_path / "mixed").train.images.shape[1] == 3
    for i in range(4):
        write_image(tmp_path / "same" / "ab"[i % 2] / f"{i}.png", np.zeros((6, 9), dtype=np.uint8))
    options = DataOptions(test_fraction=0.5, val_fraction=0)
    assert load_dataset(tmp_path / "same", options).train.preprocessing.size == (6, 9)


# ------------------------------------------------------------------------------------ file sources


def test_class_folders_count_nested_files_and_ignore_hidden_ones(tmp_path, class_tree, write_image):
    root = class_tree(tmp_path / "pets", {"cat": 6, "dog": 5, "eel": 4})
    (root / "cat" / ".DS_Store").write_bytes(b"\0\1")
    write_image(root / "dog" / ".thumbs" / "x.png", np.zeros((8, 8, 3), dtype=np.uint8))
    splits = load_dataset(root)
    assert splits.class_names == ["cat", "dog", "eel"]
    parts = [splits.train, splits.val, splits.test]
    counts = {name: sum(p.class_counts()[name] for p in parts) for name in splits.class_names}
    assert counts == {"cat": 6, "dog": 5, "eel": 4}
    all_paths = {path for p in parts for path in p.paths}
    assert "cat/nested/deeper/cat5.png" in all_paths and len(all_paths) == 15
    assert splits.skipped == []
    assert_labels_match_pixels(*parts)


def test_split_folders_are_used_as_given(tmp_path, class_tree):
    classes = ["cat", "dog", "eel"]
    class_tree(tmp_path / "ds" / "train", dict.fromkeys(classes, 4))
    class_tree(tmp_path / "ds" / "val", dict.fromkeys(classes, 1))
    class_tree(tmp_path / "ds" / "test", dict.fromkeys(classes, 2))
    splits = load_dataset(tmp_path / "ds")
    assert splits.summary() == {"train": 12, "val": 3, "test": 6}
    for name, part in [("train", splits.train), ("val", splits.val), ("test", splits.test)]:
        assert all(path.startswith(f"{name}/") for path in part.paths)
    assert_labels_match_pixels(splits.train, splits.val, splits.test)


def test_split_folders_without_val_carve_it_from_train(tmp_path, class_tree):
    class_tree(tmp_path / "ds" / "train", {"cat": 5, "dog": 5})
    class_tree(tmp_path / "ds" / "test", {"cat": 2, "dog": 2})
    splits = load_dataset(tmp_path / "ds")
    assert len(splits.train) + len(splits.val) == 10 and len(splits.test) == 4
    assert splits.val.class_counts() == {"cat": 1, "dog": 1}
    assert all(path.startswith("train/") for path in splits.val.paths)


def test_test_folder_with_fewer_classes_keeps_the_train_numbering(tmp_path, write_image, colour):
    classes = ["ant", "bee", "cat"]
    for split, names, count in [("train", classes, 4), ("test", ["bee", "cat"], 2)]:
        for name in names:
            for i in range(count):
                write_image(tmp_path / "ds" / split / name / f"{i}.png",
                            np.full((8, 8, 3), colour(classes.index(name), i), dtype=np.uint8))
    splits = load_dataset(tmp_path / "ds")
    assert splits.test.class_names == classes
    assert splits.test.class_counts() == {"ant": 0, "bee": 2, "cat": 2}
    assert_labels_match_pixels(splits.test, splits.train)


def test_unknown_class_in_test_folder_is_an_error(tmp_path, class_tree):
    class_tree(tmp_path / "ds" / "train", {"cat": 4, "dog": 4})
    class_tree(tmp_path / "ds" / "test", {"cat": 1, "dog": 1, "eel": 1})
    one_line_error(lambda: load_dataset(tmp_path / "ds"), "eel", "test")


@pytest.fixture
def manifest(tmp_path, write_image, colour, monkeypatch):
    """manifest(rows of (file, label, split), split_column) -> data/labels.csv over data/img/<file>.

    Each image is coloured by its label's index; the working directory is elsewhere, because paths
    are relative to the CSV, not to where the command runs.
    """
    def write(rows: list[tuple[str, str, str]], split_column: bool) -> Path:
        data = tmp_path / "data"
        classes = sorted({label for _, label, _ in rows})
        lines = [["path", "label", "split"] if split_column else ["path", "label"]]
        for i, (name, label, split) in enumerate(rows):
            write_image(data / "img" / name, np.full((8, 8, 3), colour(classes.index(label), i % 20), dtype=np.uint8))
            lines.append([f"img/{name}", label, split] if split_column else [f"img/{name}", label])
        with (data / "labels.csv").open("w", newline="") as f:
            csv.writer(f).writerows(lines)
        (tmp_path / "elsewhere").mkdir()
        monkeypatch.chdir(tmp_path / "elsewhere")
        return data / "labels.csv"
    return write


def test_manifest_without_split_column(manifest):
    rows = [(f"{label}{i}.png", label, "") for label in ("cat", "dog", "eel") for i in range(5)]
    splits = load_dataset(manifest(rows, split_column=False))
    assert splits.name == "labels" and splits.class_names == ["cat", "dog", "eel"]
    parts = [splits.train, splits.val, splits.test]
    assert sorted(path for p in parts for path in p.paths) == sorted(f"img/{name}" for name, _, _ in rows)
    assert all(p.class_counts()[c] >= 1 for p in parts for c in splits.class_names)
    assert_labels_match_pixels(*parts)


def test_manifest_with_split_column(manifest):
    plan = {"train": 4, "val": 1, "test": 2}
    rows = [(f"{split}-{label}{i}.png", label, split)
            for split, count in plan.items() for label in ("cat", "dog") for i in range(count)]
    splits = load_dataset(manifest(rows, split_column=True))
    assert splits.summary() == {"train": 8, "val": 2, "test": 4}
    assert sorted(splits.test.paths) == sorted(f"img/{name}" for name, _, split in rows if split == "test")
    assert_labels_match_pixels(splits.train, splits.val, splits.test)


def test_manifest_unknown_label_in_test_rows_is_an_error(manifest):
    rows = [(f"{label}{i}.png", label, "train") for label in ("cat", "dog") for i in range(3)]
    rows += [("t0.png", "cat", "test"), ("t1.png", "eel", "test")]
    path = manifest(rows, split_column=True)
    one_line_error(lambda: load_dataset(path), "labels.csv:9", "eel")


# ----------------------------------------------------------------------------------- array formats

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _pickle(path: Path, obj) -> None:
    with path.open("wb") as f:
        pickle.dump(obj, f)


def _cifar_rows(red: list[int], first_id: int) -> np.ndarray:
    """Rows in CIFAR's layout (1024 red, 1024 green, 1024 blue values, each plane row-major): the
    red plane holds `red`, green the image's id; pixel (row 0, column 1) of the red plane is 255."""
    rows = np.empty((len(red), 3072), dtype=np.uint8)
    rows[:, :1024] = np.asarray(red)[:, None]
    rows[:, 1024:2048] = (first_id + np.arange(len(red)))[:, None]
    rows[:, 2048:] = 200
    rows[:, 1] = 255
    return rows


def _write_cifar10(folder: Path) -> None:
    folder.mkdir()
    _pickle(folder / "batches.meta", {b"label_names": [n.encode() for n in CIFAR10_NAMES],
                                      b"num_cases_per_batch": 10, b"num_vis": 3072})
    for b in range(1, 6):
        labels = list(range(10))
        _pickle(folder / f"data_batch_{b}", {b"batch_label": f"training batch {b} of 5".encode(),
                                             b"labels": labels, b"data": _cifar_rows(labels, 10 * b),
                                             b"filenames": [b"x.png"] * 10})
    labels = list(range(10)) * 2
    _pickle(folder / "test_batch", {b"batch_label": b"testing batch 1 of 1", b"labels": labels,
                                    b"data": _cifar_rows(labels, 0), b"filenames": [b"x.png"] * 20})


def test_cifar10_python_folder(tmp_path):
    _write_cifar10(tmp_path / "cifar-10-batches-py")
    splits = load_dataset(tmp_path / "cifar-10-batches-py")
    assert splits.name == "cifar10" and splits.class_names == CIFAR10_NAMES
    assert len(splits.train) + len(splits.val) == 50 and len(splits.test) == 20
    for part in (splits.train, splits.val, splits.test):
        assert part.images.shape[1:] == (3, 32, 32)
        assert torch.equal(part.images[:, 0, 0, 0].long(), part.labels)
        assert (part.images[:, 0, 0, 1] == 255).all() and (part.images[:, 0, 1, 0] != 255).all()
        assert (part.images[:, 2] == 200).all()
    np.testing.assert_array_equal(splits.test.images[:, 1, 0, 0], np.arange(20))  # official order kept
    train_ids = torch.cat([splits.train.images[:, 1, 0, 0], splits.val.images[:, 1, 0, 0]])
    assert sorted(train_ids.tolist()) == list(range(10, 60))


def _write_cifar100(folder: Path) -> None:
    folder.mkdir()
    _pickle(folder / "meta", {b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
                              b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)]})
    for split, copies in (("train", 2), ("test", 1)):
        fine = list(range(100)) * copies
        _pickle(folder / split, {b"batch_label": split.encode(), b"fine_labels": fine,
                                 b"coarse_labels": [f // 5 for f in fine], b"data": _cifar_rows(fine, 0),
                                 b"filenames": [b"x.png"] * len(fine)})


def test_cifar100_python_folder_fine_and_coarse(tmp_path):
    _write_cifar100(tmp_path / "cifar-100-python")
    fine = load_dataset(tmp_path / "cifar-100-python")
    assert fine.name == "cifar100" and fine.class_names == [f"fine{i}" for i in range(100)]
    assert len(fine.train) + len(fine.val) == 200 and len(fine.test) == 100
    coarse = load_dataset(tmp_path / "cifar-100-python", DataOptions(coarse=True))
    assert coarse.name == "cifar100-coarse" and coarse.class_names == [f"coarse{i}" for i in range(20)]
    assert len(coarse.train) + len(coarse.val) == 200 and len(coarse.test) == 100
    for part in (fine.train, fine.val, fine.test):
        assert torch.equal(part.images[:, 0, 0, 0].long(), part.labels)
    for part in (coarse.train, coarse.val, coarse.test):
        assert torch.equal(part.images[:, 0, 0, 0].long() // 5, part.labels)


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_cifar_pickle_that_imports_code_is_refused(tmp_path):
    _write_cifar10(tmp_path / "cifar")
    marker = tmp_path / "code-ran"
    _pickle(tmp_path / "cifar" / "data_batch_1", {b"labels": [0], b"data": _RunsCode(marker)})
    one_line_error(lambda: load_dataset(tmp_path / "cifar"), "data_batch_1", "system")
    assert not marker.exists()


def _idx_bytes(array: np.ndarray) -> bytes:
    """IDX: two zero bytes, type 0x08 (uint8), the number of dimensions, then each size big-endian."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.tobytes()


def _write_idx(folder: Path, gz: bool, classes: int = 3, per_class: tuple[int, int] = (4, 2)):
    """MNIST-style files; returns the arrays written: train images, labels, test images, labels."""
    rng = np.random.default_rng(1)
    folder.mkdir()
    arrays = []
    for split, prefix in (("train", "train"), ("test", "t10k")):
        labels = np.tile(np.arange(classes), per_class[split == "test"]).astype(np.uint8)
        images = rng.integers(0, 256, (len(labels), 5, 6), dtype=np.uint8)
        for kind, array, dims in (("images", images, 3), ("labels", labels, 1)):
            raw = _idx_bytes(array)
            assert raw[:4] == (0x800 + dims).to_bytes(4, "big")
            name = f"{prefix}-{kind}-idx{dims}-ubyte" + (".gz" if gz else "")
            (folder / name).write_bytes(gzip.compress(raw) if gz else raw)
        arrays += [images, labels]
    return arrays


@pytest.mark.parametrize("gz", [True, False], ids=["gzipped", "plain"])
def test_idx_folder(tmp_path, gz):
    train_x, train_y, test_x, test_y = _write_idx(tmp_path / "idx", gz)
    splits = load_dataset(tmp_path / "idx")
    assert splits.name == "idx" and splits.class_names == ["0", "1", "2"]
    np.testing.assert_array_equal(splits.test.images[:, 0], test_x)
    np.testing.assert_array_equal(splits.test.labels, test_y)
    loaded = {(img.tobytes(), int(y)) for part in (splits.train, splits.val)
              for img, y in zip(part.images[:, 0].numpy(), part.labels)}
    assert loaded == {(img.tobytes(), int(y)) for img, y in zip(train_x, train_y)}


def test_idx_folder_named_like_a_known_dataset_gets_its_class_names(tmp_path):
    _write_idx(tmp_path / "fashion-mnist", gz=True, classes=10, per_class=(2, 1))
    splits = load_dataset(tmp_path / "fashion-mnist")
    assert splits.name == "fashion-mnist" and splits.class_names == FASHION_CLASSES


@pytest.mark.parametrize("damage, fragment", [
    ("data", "truncated"), ("header", "truncated"), ("gzip", "corrupt gzip")])
def test_truncated_idx_is_an_error(tmp_path, damage, fragment):
    _write_idx(tmp_path / "idx", gz=damage == "gzip")
    path = next((tmp_path / "idx").glob("train-images*"))
    raw = path.read_bytes()
    path.write_bytes({"data": raw[:-7], "header": raw[:8], "gzip": raw[: len(raw) // 2]}[damage])
    one_line_error(lambda: load_dataset(tmp_path / "idx"), path.name, fragment)


@pytest.mark.parametrize("layout", ["NHW", "NHWC", "NCHW", "NHWC-float"])
def test_from_arrays_layouts(layout):
    rng = np.random.default_rng(2)
    nchw = rng.integers(0, 256, (12, 1 if layout == "NHW" else 3, 5, 7), dtype=np.uint8)
    given = {"NHW": nchw[:, 0], "NHWC": nchw.transpose(0, 2, 3, 1), "NCHW": nchw,
             "NHWC-float": nchw.transpose(0, 2, 3, 1) / 255.0}[layout]
    labels = np.arange(12) % 3
    splits = from_arrays(given[:9], labels[:9], given[9:], labels[9:], ["a", "b", "c"],
                         options=DataOptions(val_fraction=0))
    assert splits.val is None and splits.class_names == ["a", "b", "c"]
    np.testing.assert_array_equal(splits.train.images.numpy(), nchw[:9])
    np.testing.assert_array_equal(splits.test.images.numpy(), nchw[9:])
    np.testing.assert_array_equal(splits.test.labels.numpy(), labels[9:])


def test_from_arrays_without_test_carves_test_and_val():
    images = np.arange(20, dtype=np.uint8)[:, None, None].repeat(4, 1).repeat(4, 2)  # image i is all i
    labels = np.arange(20) % 2
    splits = from_arrays(images, labels)
    assert splits.class_names == ["0", "1"] and splits.summary() == {"train": 14, "val": 2, "test": 4}
    for part in (splits.train, splits.val, splits.test):
        assert torch.equal(part.images[:, 0, 0, 0].long() % 2, part.labels)
    ids = torch.cat([p.images[:, 0, 0, 0] for p in (splits.train, splits.val, splits.test)])
    assert sorted(ids.tolist()) == list(range(20))


# ---------------------------------------------------------------------------------------- errors


def test_wrong_path_is_an_error(tmp_path):
    one_line_error(lambda: load_dataset(tmp_path / "nowhere"), "nowhere", "no such file or folder")


def test_empty_class_folder_is_an_error(tmp_path, class_tree):
    root = class_tree(tmp_path / "pets", {"cat": 3, "dog": 3})
    (root / "eel").mkdir()
    (root / "eel" / ".DS_Store").write_bytes(b"\0")
    one_line_error(lambda: load_dataset(root), "eel", "empty")


def test_single_class_is_an_error(tmp_path, class_tree):
    root = class_tree(tmp_path / "pets", {"cat": 4})
    one_line_error(lambda: load_dataset(root), "1 class", "cat", "at least 2")


def test_folder_of_unreadable_files_is_an_error(tmp_path):
    for name in ("cat", "dog"):
        (tmp_path / "pets" / name).mkdir(parents=True)
        (tmp_path / "pets" / name / "a.jpg").write_text("not an image\n")
    one_line_error(lambda: load_dataset(tmp_path / "pets"), "none of the 2 files is a readable image")


def test_class_with_only_unreadable_files_is_an_error(tmp_path, class_tree):
    root = class_tree(tmp_path / "pets", {"cat": 3, "dog": 3})
    (root / "eel").mkdir()
    (root / "eel" / "a.jpg").write_text("not an image\n")
    one_line_error(lambda: load_dataset(root), "no readable images", "eel")


# ---------------------------------------------------------------------------------------- splits


@pytest.fixture
def uneven_labels() -> np.ndarray:
    return np.random.default_rng(3).permutation(np.repeat(np.arange(4), [10, 23, 31, 7]))


def test_stratified_split_is_seeded_stratified_disjoint_and_complete(uneven_labels):
    kept, held = stratified_split(uneven_labels, 0.25, seed=5)
    again_kept, again_held = stratified_split(uneven_labels, 0.25, seed=5)
    assert np.array_equal(kept, again_kept) and np.array_equal(held, again_held)
    assert not np.array_equal(held, stratified_split(uneven_labels, 0.25, seed=6)[1])
    assert not set(kept) & set(held)
    assert sorted([*kept, *held]) == list(range(len(uneven_labels)))
    counts = np.bincount(uneven_labels)
    assert np.all(np.abs(np.bincount(uneven_labels[held], minlength=4) - 0.25 * counts) <= 1)


def test_stratified_kfold_is_seeded_stratified_disjoint_and_complete(uneven_labels):
    folds = list(stratified_kfold(uneven_labels, 5, seed=5))
    again = list(stratified_kfold(uneven_labels, 5, seed=5))
    assert len(folds) == 5
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds, again))
    vals = [set(val.tolist()) for _, val in folds]
    assert sorted(i for v in vals for i in v) == list(range(len(uneven_labels)))  # each index once
    counts = np.bincount(uneven_labels)
    for train, val in folds:
        assert set(train.tolist()) == set(range(len(uneven_labels))) - set(val.tolist())
        assert np.all(np.abs(np.bincount(uneven_labels[val], minlength=4) - counts / 5) <= 1)


def test_kfold_needs_enough_images_per_class(uneven_labels):
    one_line_error(lambda: list(stratified_kfold(uneven_labels, 8, seed=0)), "8-fold", "smallest class has 7")


def test_load_dataset_splits_are_reproducible_from_the_seed(tmp_path, class_tree):
    root = class_tree(tmp_path / "pets", {"cat": 10, "dog": 10, "eel": 10})

    def paths(seed):
        splits = load_dataset(root, DataOptions(seed=seed))
        return [sorted(part.paths) for part in (splits.train, splits.val, splits.test)]
    assert paths(7) == paths(7)
    assert paths(7) != paths(8)


def test_named_digits():
    splits = load_dataset("digits")
    parts = [splits.train, splits.val, splits.test]
    assert sum(len(p) for p in parts) == 1797 and splits.class_names == [str(d) for d in range(10)]
    images = torch.cat([p.images for p in parts])
    assert images.shape[1:] == (1, 8, 8) and images.min() == 0 and images.max() == 255
    assert set(images.unique().tolist()) <= {round(k * 255 / 16) for k in range(17)}  # 0..16 scaled


def test_write_info_counts_every_split_and_draws_a_row_per_class(tmp_path):
    splits = load_dataset("digits")
    info, paths = write_info(splits, tmp_path / "info", seed=1)
    assert json.loads(paths["json"].read_text()) == info
    assert info["sizes"] == {"train": len(splits.train), "val": len(splits.val), "test": len(splits.test)}
    for split, part in (("train", splits.train), ("val", splits.val), ("test", splits.test)):
        assert {name: counts[split] for name, counts in info["counts"].items()} == part.class_counts()
    assert info["pixels"]["mean"] == [pytest.approx(splits.train.images.double().mean().item() / 255, abs=1e-4)]
    with Image.open(paths["png"]) as png:
        assert png.size[1] == 10 * 110          # one 1.1-inch row at 100 dpi per class


FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not FASHION.is_dir(), reason=f"{FASHION} is not installed")
def test_named_fashion_mnist_from_the_system_folder():
    splits = load_dataset("fashion-mnist", DataOptions(download=False))
    assert splits.source == str(FASHION) and splits.class_names == FASHION_CLASSES
    assert len(splits.train) + len(splits.val) == 60_000 and len(splits.test) == 10_000
    assert splits.test.images.shape[1:] == (1, 28, 28)
    assert splits.test.class_counts() == dict.fromkeys(FASHION_CLASSES, 1000)
