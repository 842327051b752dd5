"""eval, predict over a folder, index, doctor and export --calibrate read images through one
streamed path (imgcls.data.stream.image_batches): streamed, they must give exactly what they give
with the images decoded into memory, decode a few batches at a time, never the whole folder, and
report a file that stops decoding instead of crashing."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import imgcls.data.files
import imgcls.doctor.detection
import imgcls.doctor.nearest
import imgcls.evaluation
import imgcls.inference.export
import imgcls.similarity.build
from imgcls.cli import main
from imgcls.data import DataOptions, load_dataset
from imgcls.data.images import decode_many
from imgcls.data.stream import PREFETCH, ImageFiles, image_batches
from imgcls.doctor import DoctorOptions, diagnose
from imgcls.doctor.detection import near_pairs
from imgcls.doctor.nearest import Rows
from imgcls.evaluation import evaluate_model, write_report
from imgcls.evaluation.report import RunInfo
from imgcls.inference import find_images, predict_files
from imgcls.inference.export import calibration_subset, export_model
from imgcls.inference.onnx_model import OnnxClassifier
from imgcls.inference.predict import predictions
from imgcls.models import create_model
from imgcls.similarity import ImageIndex, index_dataset

SIDE = 16
MODES = ("memory", "stream")


def _photo(rng, label: int, shape) -> np.ndarray:
    """A smooth picture tinted by its class, with a little noise: it survives JPEG nearly intact."""
    h, w = shape
    ramp = np.linspace(0, 120, w)[None, :, None] + np.linspace(0, 60, h)[:, None, None]
    pixels = ramp + rng.integers(0, 40, (h, w, 3))
    pixels[..., label] += 90
    return pixels.clip(0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """3 classes x 16 JPEGs of 20 to 40 px, decoded at 16 px."""
    root = tmp_path_factory.mktemp("jpegs") / "photos"
    rng = np.random.default_rng(0)
    for label, name in enumerate(("red", "green", "blue")):
        (root / name).mkdir(parents=True)
        for i in range(16):
            shape = tuple(rng.integers(20, 41, 2))
            Image.fromarray(_photo(rng, label, shape)).save(root / name / f"{name}{i}.jpg", quality=90)
    return root


def options(mode: str, **more) -> DataOptions:
    return DataOptions(size=SIDE, data_mode=mode, **more)


@pytest.fixture(scope="module")
def cnn_run(photos, tmp_path_factory) -> Path:
    """A small CNN trained a little on the photos, saved as a run folder."""
    splits = load_dataset(photos, options("memory"))
    model = create_model("cnn", epochs=1, batch_size=16, bf16="off", tta="flip").fit(splits.train)
    out = tmp_path_factory.mktemp("cnn")
    model.save(out)
    return out


@pytest.fixture
def copy_of(photos, tmp_path):
    """copy_of(): a fresh copy of the photos folder, to spoil."""
    def make() -> Path:
        return Path(shutil.copytree(photos, tmp_path / "photos"))
    return make


@pytest.fixture
def decodes(monkeypatch, tmp_path):
    """Records the size of every decode of streamed rows, in whichever process (DataLoader
    workers included: they fork after the patch); calling the fixture lists them."""
    log = tmp_path / "decodes"
    log.mkdir()
    real = ImageFiles.decode_reporting

    def logged(self, positions, *crops):
        (log / f"{os.getpid()}-{time.perf_counter_ns()}").write_text(str(len(positions)))
        return real(self, positions, *crops)
    monkeypatch.setattr(ImageFiles, "decode_reporting", logged)
    return lambda: [int(p.read_text()) for p in sorted(log.iterdir())]


def _jpeg_bytes(pixels: np.ndarray, tmp_path: Path) -> bytes:
    Image.fromarray(pixels).save(tmp_path / "whole.jpg", quality=90)
    return (tmp_path / "whole.jpg").read_bytes()


# -- predict over a folder ---------------------------------------------------------------------------

def test_predict_over_a_folder_streams_what_decoding_in_memory_predicts(cnn_run, copy_of, tmp_path, decodes):
    from imgcls.models.artifact import load_model
    folder = copy_of()
    (folder / "red" / "notes.jpg").write_text("not a picture")
    jpeg = (folder / "blue" / "blue3.jpg").read_bytes()
    (folder / "blue" / "cut.jpg").write_bytes(jpeg[:len(jpeg) // 2])         # its header still reads
    model, paths = load_model(cnn_run), find_images([folder])
    found, failures = predict_files(model, paths, k=3, batch_size=8)
    expected, expected_failures = [], []       # the loop predict ran before streaming: decode_many, in memory
    for start in range(0, len(paths), 8):
        images, ok, bad = decode_many(paths[start:start + 8], model.preprocessing_)
        expected_failures += [(str(p), reason) for p, reason in bad]
        expected += predictions(model.predict_proba(images), model.class_names_, model.task_, 3,
                                [str(paths[start + i]) for i in ok])
    assert found == expected and len(found) == 48
    assert failures == expected_failures
    assert {Path(p).name: reason for p, reason in failures} == {"notes.jpg": "not an image file",
                                                                "cut.jpg": "truncated or corrupt image"}
    assert max(decodes()) <= 8 and sum(decodes()) == len(paths)    # a batch at a time, every file once


# -- eval --------------------------------------------------------------------------------------------

def _report(out: Path) -> dict:
    report = json.loads((out / "report.json").read_text())
    return {k: v for k, v in report.items() if k not in ("timings", "created")}


def test_eval_of_a_streamed_folder_reports_what_memory_reports(cnn_run, photos, tmp_path, capsys):
    reports = {}
    for mode in MODES:
        assert main(["eval", str(cnn_run), str(photos), "--data-mode", mode, "--out", str(tmp_path / mode)]) == 0
        reports[mode] = _report(tmp_path / mode)
    assert reports["stream"] == reports["memory"] and reports["memory"]["support"] == 10


def test_streamed_evaluation_in_many_batches_equals_memory(photos, monkeypatch, decodes):
    monkeypatch.setattr(imgcls.evaluation, "rows_per_read", lambda shape: 4)
    memory, streamed = (load_dataset(photos, options(mode, test_fraction=0.5)) for mode in MODES)
    knn = create_model("knn", k=3).fit(memory.train)
    a, _ = evaluate_model(knn, memory.test)
    b, _ = evaluate_model(knn, streamed.test)
    np.testing.assert_array_equal(a.proba, b.proba)
    assert a.to_dict() == b.to_dict() and b.rows is None
    assert max(decodes()) <= 4 and sum(decodes()) == len(streamed.test)


def test_a_file_spoiled_before_a_streamed_evaluation_is_skipped_and_listed(copy_of, tmp_path):
    folder = copy_of()
    memory = load_dataset(folder, options("memory"))
    streamed = load_dataset(folder, options("stream"))
    knn = create_model("knn", k=3).fit(memory.train)
    victim = streamed.test.paths[2]
    (folder / victim).write_text("spoiled after listing")
    skipped = []
    evaluation, _ = evaluate_model(knn, streamed.test, skipped)
    assert [(s.path, s.reason) for s in skipped] == [(victim, "not an image file")]
    kept = [i for i in range(len(streamed.test)) if i != 2]
    assert evaluation.rows.tolist() == kept
    np.testing.assert_array_equal(evaluation.proba, knn.predict_proba(memory.test.subset(kept)))
    info = RunInfo(title="t", model="knn", params={}, dataset="photos", skipped_files=[s.to_dict() for s in skipped])
    write_report(evaluation, info, tmp_path / "report", images=streamed.test.images)   # the right images, no crash
    assert json.loads((tmp_path / "report" / "report.json").read_text())["skipped_files"][0]["path"] == victim


# -- index -------------------------------------------------------------------------------------------

def test_a_streamed_index_holds_and_finds_what_one_built_in_memory_does(photos, monkeypatch, decodes):
    monkeypatch.setattr(imgcls.similarity.build, "PREDICT_BATCH", 8)
    indexes = {}
    for mode in MODES:
        indexes[mode] = ImageIndex()
        result = index_dataset(indexes[mode], str(photos), None, options(mode))
        assert result.added == 48
    a, b = indexes["memory"], indexes["stream"]
    assert a.items_ == b.items_ and a.splits_ == b.splits_ and a.class_names_ == b.class_names_
    assert torch.equal(a.vectors_, b.vectors_) and torch.equal(a.labels_, b.labels_)
    queries = load_dataset(photos, options("memory", val_fraction=0, test_fraction=0)).train.images[::7]
    assert [[n.to_dict() for n in hits] for hits in a.search(queries, k=4)] == \
           [[n.to_dict() for n in hits] for hits in b.search(queries, k=4)]
    assert max(decodes()) <= 8 and sum(decodes()) == 48


# -- doctor ------------------------------------------------------------------------------------------

@pytest.fixture
def sick_photos(copy_of, tmp_path) -> Path:
    """The photos with a byte copy, a re-encoded near copy, a truncated JPEG and a text file."""
    folder = copy_of()
    shutil.copy(folder / "red" / "red0.jpg", folder / "red" / "red0_copy.jpg")
    Image.open(folder / "green" / "green1.jpg").save(folder / "green" / "green1_again.jpg", quality=75)
    whole = _jpeg_bytes(_photo(np.random.default_rng(5), 2, (30, 30)), tmp_path)
    (folder / "blue" / "cut.jpg").write_bytes(whole[:len(whole) - 200])
    (folder / "blue" / "notes.jpg").write_text("not a picture")
    return folder


@pytest.mark.parametrize("features", ["pixels", "cnn"])
def test_the_doctor_finds_the_same_streamed_as_in_memory(sick_photos, features, cnn_run, monkeypatch, decodes):
    monkeypatch.setattr(imgcls.doctor.detection, "PREDICT_BATCH", 8)
    monkeypatch.setattr(imgcls.data.files, "VERIFY_BATCH", 8)
    monkeypatch.setattr(imgcls.doctor.nearest, "BLOCK_BYTES", 5 * SIDE * SIDE * 3)   # 5 pixel rows a block
    doctor = DoctorOptions(features="pixels" if features == "pixels" else str(cnn_run),
                           near=None if features == "pixels" else 0.002)
    memory = diagnose(sick_photos, options("memory"), doctor)
    streamed = diagnose(sick_photos, options("stream"), doctor)
    assert isinstance(streamed.images, ImageFiles)
    assert streamed.to_dict() == memory.to_dict()
    found = {c.name: c.findings for c in memory.checks()}
    assert found["corrupt"] == 2 and found["duplicates"] == 1 and found["near-duplicates"] >= 1
    assert {f.path for f in memory.unreadable} == {"blue/cut.jpg", "blue/notes.jpg"}
    assert max(decodes()) <= 8


def test_the_blocked_near_duplicate_search_equals_one_search(tmp_path):
    gen = torch.Generator().manual_seed(0)
    base = torch.randint(0, 256, (90, 48), generator=gen)
    near = (base[:30] + torch.randint(-6, 7, (30, 48), generator=gen)).clamp(0, 255)
    vectors = torch.cat([base, near, base[:5]]).to(torch.uint8)        # ties too: exact copies
    spilled = Rows(tmp_path, block_bytes=48 * 7)                        # 7 rows a block, in a file
    for start in range(0, len(vectors), 11):
        spilled.append(vectors[start:start + 11])
    assert spilled.block_rows == 7 and torch.equal(spilled.block(0, len(vectors)), vectors)
    for k in (3, 20):
        assert near_pairs(spilled, 400.0, k) == near_pairs(vectors, 400.0, k)


# -- export --calibrate ------------------------------------------------------------------------------

def test_streamed_calibration_draws_the_same_images(cnn_run, photos, monkeypatch, decodes, tmp_path):
    from imgcls.models.artifact import load_model
    monkeypatch.setattr(imgcls.inference.export, "CALIBRATION_BATCH", 4)
    model = load_model(cnn_run)
    memory, streamed = (load_dataset(photos, DataOptions(preprocessing=model.preprocessing_, val_fraction=0,
                                                         data_mode=mode)) for mode in MODES)
    drawn = calibration_subset(model, streamed.train, 10)
    assert torch.equal(drawn, calibration_subset(model, memory.train, 10))
    assert max(decodes()) <= 4 and sum(decodes()) == 10        # only the drawn files, a batch at a time
    out = tmp_path / "stream.int8.onnx"
    assert main(["export", str(cnn_run), "--int8", "--calibrate", str(photos), "--calibration-images", "10",
                 "--data-mode", "stream", "--out", str(out)]) == 0
    reference = export_model(model, tmp_path / "memory.int8.onnx", int8=True, calibration=memory.train,
                             calibration_images=10)
    images = memory.test.images
    np.testing.assert_array_equal(OnnxClassifier.load(out).predict_proba(images),
                                  OnnxClassifier.load(reference).predict_proba(images))


# -- bounded memory ----------------------------------------------------------------------------------

def test_streaming_decodes_only_the_batches_in_flight(photos, tmp_path, monkeypatch):
    """A slow reader: however far the workers could run ahead, decoded-but-unread batches stay
    within workers x PREFETCH (+ the one being read), not the folder."""
    started = tmp_path / "started"
    started.mkdir()
    real = ImageFiles.decode_reporting

    def marked(self, positions, *crops):
        (started / f"{positions[0]:04d}").touch()
        return real(self, positions, *crops)
    monkeypatch.setattr(ImageFiles, "decode_reporting", marked)
    paths = find_images([photos])
    files = ImageFiles(paths, load_dataset(photos, options("memory")).preprocessing, workers=2)
    ahead, read = [], 0
    for positions, images, failed in image_batches(files, 2, "reading"):
        time.sleep(0.03)
        read += 1
        ahead.append(len(list(started.iterdir())) - read)
        assert len(images) == len(positions) == 2 and not failed
    assert read == 24 and max(ahead) <= 2 * PREFETCH + 1
