"""`imgcls doctor`: every finding on a tiny dataset built with one problem of each kind, the exit
status for CI, the quarantine, the HTML report, and the near-duplicate search against scipy."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.spatial.distance import pdist, squareform
from sklearn.datasets import load_digits

from imgcls.cli import main
from imgcls.data.load import DataOptions, from_arrays, load_dataset
from imgcls.doctor import DoctorOptions, check_quarantine, diagnose
from imgcls.doctor.detection import near_pairs
from imgcls.errors import ImgclsError

SIDE = 8


def noise(seed: int, shape=(SIDE, SIDE, 3), dtype=np.uint8, high=256) -> np.ndarray:
    """A random image: any two of them differ by about 0.4 RMS, far from every threshold."""
    return np.random.default_rng(seed).integers(0, high, shape).astype(dtype)


@pytest.fixture
def sick(tmp_path, write_image) -> Path:
    """train/val/test folders with one problem of each kind (see the asserts of test_every_finding)."""
    root = tmp_path / "sick"
    for i in range(12):
        write_image(root / "train/cat" / f"c{i}.png", noise(i))
    write_image(root / "train/cat/cmyk.jpg", Image.fromarray(noise(100, (SIDE, SIDE, 4)), "CMYK"), quality=95)
    jpeg = write_image(tmp_path / "whole.jpg", noise(101), quality=95).read_bytes()
    (root / "train/cat/truncated.jpg").write_bytes(jpeg[:len(jpeg) - 120])
    for i in range(2):
        write_image(root / "train/dog" / f"d{i}.png", noise(200 + i))
    write_image(root / "train/dog/deep.png", noise(202, (SIDE, SIDE), np.uint16, 65536))   # 16-bit grayscale
    write_image(root / "train/dog/as_jpg.jpg", noise(203), format="PNG")                     # a PNG named .jpg
    write_image(root / "val/cat/v0.png", noise(300))
    write_image(root / "val/dog/v1.png", noise(301))
    write_image(root / "test/cat/t0.png", noise(400))
    shutil.copy(root / "train/cat/c0.png", root / "test/cat/copy_of_c0.png")                 # leaked, byte for byte
    write_image(root / "test/dog/t1.png", noise(401))
    nudged = noise(200).astype(int) + np.random.default_rng(9).integers(-3, 4, (SIDE, SIDE, 3))
    write_image(root / "test/dog/near_d0.png", nudged.clip(0, 255).astype(np.uint8))        # near-duplicate
    (root / "test/dog/notes.png").write_text("not an image, whatever the name says\n")
    return root


@pytest.fixture
def clean(tmp_path, write_image) -> Path:
    root = tmp_path / "clean"
    for i in range(24):
        write_image(root / ("ab"[i % 2]) / f"{i}.png", noise(i))
    return root


def names(items) -> set:
    return {(i.path, i.split) for i in items}


def test_every_finding(sick):
    report = diagnose(sick, DataOptions())
    assert report.sizes == {"train": 17, "val": 2, "test": 4}
    assert {(f.path, f.split) for f in report.unreadable} == {("train/cat/truncated.jpg", "train"),
                                                            ("test/dog/notes.png", "test")}
    assert {f.path: f.reason for f in report.unreadable}["train/cat/truncated.jpg"] == "truncated or corrupt image"
    assert {f.path: f.reason for f in report.mismatched} == {"train/dog/as_jpg.jpg": "PNG content named .jpg",
                                                           "test/dog/notes.png": "text content named .png"}
    [group] = report.duplicates
    assert [(r.name, r.split, r.label) for r in group.images] == [("train/cat/c0.png", "train", "cat"),
                                                                 ("test/cat/copy_of_c0.png", "test", "cat")]
    assert group.same_bytes and group.splits == "train-test"
    [pair] = report.near_duplicates
    assert (pair.a.name, pair.b.name, pair.splits) == ("train/dog/d0.png", "test/dog/near_d0.png", "train-test")
    a, b = (report.images[r.row].double() for r in (pair.a, pair.b))
    assert pair.distance == pytest.approx(((a - b) ** 2).mean().sqrt().item() / 255)
    assert report.leakage == [group, pair]
    assert report.class_counts["train"] == {"cat": 13, "dog": 4}
    assert report.imbalance["train"] == pytest.approx(13 / 4)
    assert report.tiny_classes == {"dog": 4}
    stats = report.file_stats()
    assert stats["files"] == 25 and stats["opened"] == 24          # all but the text file
    assert stats["modes"] == {"RGB": 22, "CMYK": 1, "I;16": 1} and stats["formats"] == {"PNG": 22, "JPEG": 2}
    assert stats["width"] == {"min": SIDE, "median": SIDE, "max": SIDE}
    found = {c.name: c.findings for c in report.checks()}
    assert found == {"corrupt": 2, "mismatch": 2, "duplicates": 1, "near-duplicates": 1, "leakage": 2,
                     "imbalance": 1, "tiny": 1, "label-errors": 0}
    assert not {c.name: c for c in report.checks()}["label-errors"].applies     # only with label_errors=True


def test_unsplit_folders_report_the_split_each_file_lands_in(tmp_path, write_image):
    root = tmp_path / "flat"
    for i in range(20):
        write_image(root / ("ab"[i % 2]) / f"{i}.png", noise(i))
    shutil.copy(root / "a/0.png", root / "a/0_copy.png")
    options = DataOptions(seed=3)
    report = diagnose(root, options)
    splits = load_dataset(root, options)
    landed = {name: split for split in ("train", "val", "test") for name in getattr(splits, split).paths}
    assert {r.name: r.split for r in report.files} == landed
    [group] = report.duplicates
    assert {r.name: r.split for r in group.images} == {n: landed[n] for n in ("a/0.png", "a/0_copy.png")}
    assert group.leaked == (landed["a/0.png"] != landed["a/0_copy.png"])


def test_cli_fail_on_leakage_exits_1_and_a_clean_dataset_0(sick, clean, tmp_path, capsys):
    assert main(["doctor", str(sick), "--out", str(tmp_path / "sick-out"), "--fail-on", "leakage"]) == 1
    captured = capsys.readouterr()
    assert "failing checks: leakage" in captured.err and "copy_of_c0.png" in captured.out
    data = json.loads((tmp_path / "sick-out/doctor.json").read_text())
    assert data["checks"]["leakage"]["status"] == "FAIL" and data["checks"]["corrupt"]["status"] == "WARN"
    assert main(["doctor", str(sick), "--out", str(tmp_path / "sick-out"), "--fail-on", "imbalance,tiny",
                 "--imbalance", "4", "--tiny", "3"]) == 0
    assert main(["doctor", str(clean), "--out", str(tmp_path / "clean-out"), "--fail-on", "any", "--tiny", "5"]) == 0
    assert json.loads((tmp_path / "clean-out/doctor.json").read_text())["duplicates"] == []


def test_cli_unknown_check_is_a_usage_error(sick, tmp_path, capsys):
    assert main(["doctor", str(sick), "--out", str(tmp_path), "--fail-on", "leakage,typo"]) == 2
    err = capsys.readouterr().err
    assert "typo" in err and "near-duplicates" in err and "any" in err


def test_html_is_self_contained_and_names_the_duplicates(sick, tmp_path):
    main(["doctor", str(sick), "--out", str(tmp_path / "out")])
    html = (tmp_path / "out/doctor.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.IGNORECASE)
    for name in ("train/cat/c0.png", "test/cat/copy_of_c0.png", "train/dog/d0.png", "test/dog/near_d0.png",
                 "train/cat/truncated.jpg", "train/dog/as_jpg.jpg"):
        assert name in html
    assert html.count("data:image/png;base64,") == 4   # two images per finding, drawn side by side


def test_quarantine_moves_the_unreadable_files_and_the_leaked_copy(sick, tmp_path, capsys):
    quarantine = tmp_path / "quarantine"
    assert main(["doctor", str(sick), "--out", str(tmp_path / "out"), "--quarantine", str(quarantine)]) == 0
    moved = {"train/cat/truncated.jpg", "test/dog/notes.png", "test/cat/copy_of_c0.png"}
    assert {str(p.relative_to(quarantine)) for p in quarantine.rglob("*") if p.is_file()} == moved | {"quarantine.json"}
    assert not any((sick / name).exists() for name in moved)
    assert (sick / "train/cat/c0.png").exists() and (sick / "test/dog/near_d0.png").exists()
    log = json.loads((quarantine / "quarantine.json").read_text())["moves"]
    assert {(Path(m["from"]), Path(m["to"])) for m in log} == {((sick / n).resolve(), (quarantine / n).resolve())
                                                              for n in moved}
    assert {m["reason"] for m in log} >= {"byte-identical copy of train/cat/c0.png", "truncated or corrupt image"}
    assert "moved" in capsys.readouterr().out
    # the quarantined dataset is clean of both, and a second run finds nothing more to move
    assert main(["doctor", str(sick), "--out", str(tmp_path / "out"), "--fail-on", "corrupt,duplicates",
                 "--quarantine", str(quarantine)]) == 0
    assert len(json.loads((quarantine / "quarantine.json").read_text())["moves"]) == 3


def test_quarantine_never_overwrites_and_refuses_what_it_cannot_do(sick, tmp_path, capsys):
    quarantine = tmp_path / "quarantine"
    (quarantine / "test/dog").mkdir(parents=True)
    (quarantine / "test/dog/notes.png").write_text("already here")
    assert main(["doctor", str(sick), "--out", str(tmp_path / "out"), "--quarantine", str(quarantine)]) == 2
    assert "already there, nothing moved" in capsys.readouterr().err
    assert (sick / "train/cat/truncated.jpg").exists()
    assert (quarantine / "test/dog/notes.png").read_text() == "already here"
    with pytest.raises(ImgclsError, match="not a dataset of image files"):
        check_quarantine("digits", quarantine)
    with pytest.raises(ImgclsError, match="outside the dataset folder"):
        check_quarantine(sick, sick / "train" / "quarantine")


def test_in_memory_dataset_finds_an_injected_leak():
    digits = load_digits()
    images = np.round(digits.images * 255 / 16).astype(np.uint8)
    test_x = images[1500:].copy()
    test_x[5] = images[17]
    splits = from_arrays(images[:1500], digits.target[:1500], test_x, digits.target[1500:],
                         options=DataOptions(val_fraction=0))
    report = diagnose(splits, options=DoctorOptions(fail_on=("leakage",)))
    [group] = report.duplicates
    assert [(r.name, r.split) for r in group.images] == [("arrays/train/17", "train"), ("arrays/test/5", "test")]
    assert group.same_bytes is None and report.failed() == ["leakage"]
    assert not any(c.applies for c in report.checks() if c.name in ("corrupt", "mismatch"))
    assert all(not p.leaked or {p.a.name, p.b.name} != {"arrays/train/17", "arrays/test/5"} for p in report.near_duplicates)


@pytest.mark.parametrize("kind", ["uint8", "unit"])
def test_near_pairs_match_brute_force(kind):
    gen = torch.Generator().manual_seed(0)
    base = torch.randint(0, 256, (150, 48), generator=gen)
    near = (base[:40] + torch.randint(-6, 7, (40, 48), generator=gen)).clamp(0, 255)   # planted close copies
    vectors = torch.cat([base, near]).to(torch.uint8)
    if kind == "unit":
        vectors = torch.nn.functional.normalize(vectors.double() - 128, dim=1).float()
    reference = squareform(pdist(vectors.double().numpy()))
    limit = float(np.quantile(reference[np.triu_indices(len(vectors), 1)], 0.003))
    expected = {(i, j) for i, j in zip(*np.nonzero(np.triu(reference <= limit, 1)))}
    assert 40 <= len(expected) < 100
    for k in (len(vectors) - 1, 3):     # every neighbour, and only the 3 nearest (enough here)
        found = near_pairs(vectors, limit, k)
        assert {(i, j) for i, j, _ in found} == expected
        assert [d for *_, d in found] == pytest.approx([reference[i, j] for i, j, _ in found], rel=1e-5)


def test_classes_too_small_to_split_or_all_corrupt_are_findings_not_errors(tmp_path, write_image, capsys):
    root = tmp_path / "small"
    for i in range(6):
        write_image(root / "many" / f"m{i}.png", noise(i))
    write_image(root / "single" / "s0.png", noise(50))                   # 1 image: cannot be split
    (root / "broken").mkdir()
    (root / "broken" / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")   # only file unreadable
    report = diagnose(root, DataOptions(), DoctorOptions(tiny=3))
    assert "cannot split as `imgcls train` would" in report.split_note
    assert report.tiny_classes == {"single": 1, "broken": 0}
    assert [f.path for f in report.unreadable] == ["broken/b.png"]
    assert main(["doctor", str(root), "--out", str(tmp_path / "r"), "--fail-on", "tiny"]) == 1
    tiny = json.loads((tmp_path / "r" / "doctor.json").read_text())["checks"]["tiny"]
    assert tiny["status"] == "FAIL" and "too few to split" in tiny["summary"]


def test_a_manifest_listing_a_file_twice_is_a_label_conflict_not_a_copy(tmp_path, write_image, capsys):
    for i in range(6):
        write_image(tmp_path / "img" / f"{i}.png", noise(i))
    rows = [f"img/{i}.png,{'ab'[i % 2]}" for i in range(6)] + ["img/0.png,b"]
    (tmp_path / "labels.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    report = diagnose(tmp_path / "labels.csv", DataOptions(val_fraction=0, test_fraction=0))
    [group] = report.duplicates
    assert group.conflicting and {r.label for r in group.images} == {"a", "b"}
    assert main(["doctor", str(tmp_path / "labels.csv"), "--val-fraction", "0", "--test-fraction", "0",
                 "--out", str(tmp_path / "r"), "--quarantine", str(tmp_path / "q")]) == 0
    assert "conflicting labels" in capsys.readouterr().out.replace("\n", " ")
    assert (tmp_path / "img" / "0.png").exists() and not (tmp_path / "q" / "img" / "0.png").exists()


def test_default_report_folder_is_named_after_the_dataset(tmp_path, write_image, monkeypatch):
    for i in range(6):
        write_image(tmp_path / "pets" / "ab"[i % 2] / f"{i}.png", noise(i))
    monkeypatch.chdir(tmp_path)
    assert main(["doctor", "pets", "--val-fraction", "0"]) == 0
    assert (tmp_path / "pets-doctor" / "doctor.html").is_file()
    monkeypatch.chdir(tmp_path / "pets")
    assert main(["doctor", ".", "--val-fraction", "0"]) == 2          # ./pets-doctor would become a class


def test_images_without_files_keep_their_source_names_after_carving():
    digits = load_digits()
    images = np.round(digits.images * 255 / 16).astype(np.uint8)
    images[1000] = images[3]                                  # the same digit twice in the source's train
    splits = from_arrays(images, digits.target, options=DataOptions(val_fraction=0.2, test_fraction=0.2))
    [group] = diagnose(splits).duplicates
    assert sorted(r.name for r in group.images) == ["arrays/train/1000", "arrays/train/3"]


def test_a_flat_folder_can_be_checked_and_quarantined(tmp_path, write_image, capsys):
    for i in range(4):
        write_image(tmp_path / "photos" / f"{i}.png", noise(i))
    (tmp_path / "photos" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n cut")
    assert main(["doctor", str(tmp_path / "photos"), "--val-fraction", "0", "--test-fraction", "0",
                 "--out", str(tmp_path / "r"), "--quarantine", str(tmp_path / "q")]) == 0
    assert (tmp_path / "q" / "broken.png").is_file() and not (tmp_path / "photos" / "broken.png").exists()


def test_near_duplicates_by_a_networks_embedding(tmp_path):
    from imgcls.models import create_model
    digits = load_digits()
    images = np.round(digits.images * 255 / 16).astype(np.uint8)
    test_x = images[1500:].copy()
    test_x[7] = np.clip(images[40].astype(int) + 6, 0, 255)         # a brightened copy of train image 40
    splits = from_arrays(images[:1500], digits.target[:1500], test_x, digits.target[1500:],
                         options=DataOptions(val_fraction=0))
    create_model("mlp", epochs=2, hidden="32", bf16="off").fit(splits.train).save(tmp_path / "net")
    report = diagnose(splits, options=DoctorOptions(features=str(tmp_path / "net"), near=0.01))
    assert report.scale == "cosine distance of the embeddings" and report.near == 0.01
    leaks = {(p.a.name, p.b.name) for p in report.near_duplicates if p.leaked}
    assert ("arrays/train/40", "arrays/test/7") in leaks
    assert all(p.distance <= 0.01 for p in report.near_duplicates)
