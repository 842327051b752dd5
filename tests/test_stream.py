"""Streamed datasets: images left in their files, decoded batch by batch by DataLoader workers,
must train and predict exactly as the same images decoded into memory."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest
import torch

from imgcls.data import DataOptions, load_dataset
from imgcls.data.images import crop_frames
from imgcls.errors import ImgclsError
from imgcls.fit_and_evaluate import fit_and_report
from imgcls.models import create_model

NET = dict(model="cnn", epochs=2, batch_size=16, bf16="off", augment="crop=2,flip", lr=0.05, tta="flip")


@pytest.fixture
def photos(tmp_path, write_image):
    """3 classes x 24 noisy 16x16 RGB PNGs whose mean colour tells the class."""
    rng = np.random.default_rng(0)
    for label, name in enumerate(("red", "green", "blue")):
        for i in range(24):
            pixels = rng.integers(0, 90, (16, 16, 3))
            pixels[..., label] += 150
            write_image(tmp_path / "photos" / name / f"{name}{i}.png", pixels.astype(np.uint8))
    return tmp_path / "photos"


def train(splits, **options):
    settings = {**NET, **options}
    return create_model(settings.pop("model"), **settings).fit(splits.train, validation=splits.val)


def test_streamed_training_and_prediction_equal_in_memory(photos):
    memory = load_dataset(photos, DataOptions(data_mode="memory"))
    streamed = load_dataset(photos, DataOptions(data_mode="stream"))
    assert not memory.train.streamed and streamed.train.streamed and streamed.test.streamed
    assert streamed.train.paths == memory.train.paths and torch.equal(streamed.train.labels, memory.train.labels)
    assert torch.equal(streamed.test.images[:], memory.test.images)
    a, b = train(memory), train(streamed)
    for (name, x), y in zip(a.net_.state_dict().items(), b.net_.state_dict().values()):
        assert torch.equal(x, y), name
    assert [r["val_loss"] for r in a.history_] == [r["val_loss"] for r in b.history_]
    np.testing.assert_array_equal(a.predict_proba(memory.test), b.predict_proba(streamed.test))   # flip TTA too


def test_random_resized_crops_are_cut_by_the_workers_from_the_batchs_own_draws(photos, tmp_path, monkeypatch):
    """rrc on streamed data: the workers cut each batch's crops, drawn from the batch's generator as
    in memory. From the decode cache's rows they are the in-memory crops exactly (equal weights);
    from the files they are resampled once from the file's pixels, and the trainer never again."""
    memory = load_dataset(photos, DataOptions(data_mode="memory"))
    cached = load_dataset(photos, DataOptions(data_mode="stream", cache=str(tmp_path / "cache")))
    streamed = load_dataset(photos, DataOptions(data_mode="stream"))
    settings = {"augment": "rrc=0.3,flip", "tta": "none"}
    a, b = train(memory, **settings), train(cached, **settings)
    for (name, x), y in zip(a.net_.state_dict().items(), b.net_.state_dict().values()):
        assert torch.equal(x, y), name
    from imgcls.training import augment
    cnn = create_model("cnn", **{k: v for k, v in {**NET, **settings}.items() if k != "model"})
    batches = [(0, 0), (1, 2)]
    expected = [cnn.preview_training_batch(memory.train, epoch, index) for epoch, index in batches]
    monkeypatch.setattr(augment, "crop_frames", lambda *_: pytest.fail("the trainer resampled a streamed batch"))
    for (epoch, index), (expected_positions, expected_x, _) in zip(batches, expected):
        positions, x, _ = cnn.preview_training_batch(streamed.train, epoch, index)
        assert torch.equal(positions, expected_positions)
        assert (x - expected_x).abs().mean() < 12 and (x != expected_x).any()  # the same crops, resampled once
    assert train(streamed, **settings).history_[-1]["val_accuracy"] > 0.5


def test_auto_streams_only_beyond_the_memory_budget(photos, capsys):
    assert not load_dataset(photos, DataOptions()).train.streamed
    assert load_dataset(photos, DataOptions(memory_budget=10_000)).train.streamed   # 72 x 768 bytes decoded
    assert "over the memory budget" in capsys.readouterr().err
    with pytest.raises(ImgclsError, match="data mode"):
        load_dataset(photos, DataOptions(data_mode="disk"))


def test_a_transfer_finetune_learns_from_a_streamed_folder_as_from_memory(photos):
    memory = load_dataset(photos, DataOptions(data_mode="memory"))
    streamed = load_dataset(photos, DataOptions(data_mode="stream"))
    settings = dict(mode="finetune", input_size=32, epochs=1, head_epochs=1, batch_size=16, bf16="off",
                    channels_last="off", augment="flip")
    a = create_model("transfer:efficientnet_lite0", **settings).fit(memory.train, validation=memory.val)
    b = create_model("transfer:efficientnet_lite0", **settings).fit(streamed.train, validation=streamed.val)
    for (name, x), y in zip(a.net_.state_dict().items(), b.net_.state_dict().values()):
        assert torch.equal(x, y), name
    assert [r["val_loss"] for r in a.history_] == [r["val_loss"] for r in b.history_]
    with pytest.raises(ImgclsError, match="needs its training images in memory"):   # probe embeds them all at once
        create_model("transfer:efficientnet_lite0", mode="probe", input_size=32).fit(streamed.train)


def test_a_file_spoiled_after_listing_is_skipped_and_reported(photos, tmp_path):
    splits = load_dataset(photos, DataOptions(data_mode="stream"))
    victim = splits.train.paths[3]
    (photos / victim).write_bytes(b"not a png any more")
    settings = {**NET, "epochs": 1}
    model = create_model(settings.pop("model"), **settings)
    fit_and_report(model, "cnn", splits, tmp_path / "run", {}, print_table=False)
    assert [name for name, _ in model.train_state_.unreadable] == [victim]
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert victim in [s["path"] for s in report["skipped_files"]]


def test_models_that_need_memory_refuse_streamed_training_clearly(photos):
    streamed = load_dataset(photos, DataOptions(data_mode="stream"))
    with pytest.raises(ImgclsError, match="needs its training images in memory"):
        create_model("knn").fit(streamed.train)
    memory = load_dataset(photos, DataOptions(data_mode="memory"))
    knn = create_model("knn").fit(memory.train)        # ... but any model predicts on a streamed split
    np.testing.assert_array_equal(knn.predict_proba(streamed.test), knn.predict_proba(memory.test))


def test_the_decode_cache_is_filled_once_and_never_stale(photos, tmp_path, write_image):
    cache = tmp_path / "cache"
    memory = load_dataset(photos, DataOptions(data_mode="memory"))
    cached = load_dataset(photos, DataOptions(data_mode="stream", cache=str(cache)))
    first = cached.test.images[:]                       # decodes the files and fills the cache
    assert torch.equal(first, memory.test.images)
    rows = next(cache.glob("*/rows.u8"))
    stamps = np.memmap(rows.with_name("stamps.i64"), dtype=np.int64, mode="r").reshape(-1, 2)
    assert (stamps[:, 0] > 0).all()                     # every row written, with its file's size
    again = load_dataset(photos, DataOptions(data_mode="stream", cache=str(cache)))
    assert torch.equal(again.test.images[:], first)     # read back from the rows
    changed = photos / again.test.paths[0]
    write_image(changed, np.zeros((16, 16, 3), np.uint8))
    fresh = again.test.images[:]
    assert fresh[0].sum() == 0 and torch.equal(fresh[1:], first[1:])   # the changed file decoded anew
    crops = [(2, 3, 10, 12), (0, 0, 16, 16), (4, 1, 8, 9)]             # random resized crops, as training cuts them
    cut, ok, _ = again.test.images.decode_reporting([0, 1, 2], crops)
    assert ok.all() and torch.equal(cut, crop_frames(fresh[:3], crops))
    assert train(again).predict_proba(again.test).shape == (len(again.test), 3)
    (tmp_path / "a-file").write_text("")
    with pytest.raises(ImgclsError, match="--cache .*cannot keep decoded images there"):
        load_dataset(photos, DataOptions(data_mode="stream", cache=str(tmp_path / "a-file")))


def test_the_command_line_trains_evaluates_and_reports_a_streamed_folder(photos, tmp_path, capsys):
    from imgcls.cli import main
    out = tmp_path / "run"
    assert main(["train", str(photos), "--data-mode", "stream", "--model", "cnn", "--epochs", "1", "--bf16", "off",
                 "--batch-size", "16", "--checkpoint-every", "2", "--accumulate", "2", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["sizes"]["test"] == len(load_dataset(photos).test) and 0 <= report["accuracy"] <= 1
    assert (out / "report.html").is_file() and (out / "model.safetensors").is_file()
    assert json.loads((out / "config.json").read_text())["data_options"]["data_mode"] == "stream"


def test_a_dying_worker_stops_the_run_with_one_line_and_resume_finishes_it(photos, tmp_path, monkeypatch):
    from imgcls.data import stream
    splits = load_dataset(photos, DataOptions(data_mode="stream"))
    calls, real = tmp_path / "calls", stream._BatchDecoder.__getitem__

    def dies_on_the_ninth_batch(self, positions):     # in the (forked) worker processes
        if torch.utils.data.get_worker_info() is not None:
            with open(calls, "a") as f:
                f.write(".")
            if calls.stat().st_size == 9:
                os.kill(os.getpid(), signal.SIGKILL)
        return real(self, positions)

    settings = {k: v for k, v in NET.items() if k != "model"} | {"epochs": 2, "batch_size": 8, "checkpoint_every": 2,
                                                                 "augment": "rrc=0.5,flip"}
    monkeypatch.setattr(stream._BatchDecoder, "__getitem__", dies_on_the_ninth_batch)
    with pytest.raises(ImgclsError, match=r"worker decoding the training images died .* --resume") as err:
        create_model("cnn", **settings).fit(splits.train, validation=splits.val, run_dir=tmp_path / "run")
    assert "\n" not in str(err.value)
    monkeypatch.setattr(stream._BatchDecoder, "__getitem__", real)
    resumed = create_model("cnn", **settings).fit(splits.train, validation=splits.val, run_dir=tmp_path / "run",
                                                  resume=True)
    whole = create_model("cnn", **settings).fit(splits.train, validation=splits.val, run_dir=tmp_path / "whole")
    for (name, x), y in zip(whole.net_.state_dict().items(), resumed.net_.state_dict().values()):
        assert torch.equal(x, y), name
