"""WebDataset shards (`imgcls shards`): webdataset reads them, and imgcls trains from them exactly as
from the source they were written from; a shard cut short is named, at load time and mid-training."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from safetensors.torch import load_file

from imgcls.cli import main
from imgcls.data import DataOptions, load_dataset
from imgcls.data.formats import read_idx
from imgcls.errors import ImgclsError
from imgcls.fit_and_evaluate import fit_and_report
from imgcls.models import create_model

NET = dict(model="cnn", epochs=1, batch_size=8, bf16="off", augment="crop=2,flip", lr=0.05)
FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture
def jpegs(tmp_path, write_image):
    """3 classes x 16 noisy JPEGs of 16-18 x 16 px whose mean colour tells the class."""
    rng = np.random.default_rng(0)
    for label, name in enumerate(("red", "green", "blue")):
        for i in range(16):
            pixels = rng.integers(0, 90, (16 + i % 3, 16, 3))
            pixels[..., label] += 150
            write_image(tmp_path / "jpegs" / name / f"{name}{i}.jpg", pixels.astype(np.uint8), quality=90)
    return tmp_path / "jpegs"


def shards(source, out: Path, size: str = "4KB") -> Path:
    assert main(["shards", str(source), "--out", str(out), "--shard-size", size]) == 0
    return out


def webdataset_samples(folder: Path) -> list[dict]:
    return list(wds.WebDataset(sorted(str(p) for p in folder.glob("*.tar")), shardshuffle=False))


def test_webdataset_reads_the_original_bytes_and_labels(jpegs, tmp_path, capsys):
    out = shards(jpegs, tmp_path / "shards")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["classes"] == ["blue", "green", "red"] and list(manifest["splits"]) == ["all"]
    assert len(manifest["splits"]["all"]["shards"]) > 3           # 4KB: a few images per shard
    assert main(["shards", str(out), "--out", str(tmp_path / "again")]) == 2
    assert "shards: already shards; write new ones from the dataset they came from" in capsys.readouterr().err
    samples = webdataset_samples(out)
    assert len(samples) == 48
    for sample in samples:
        meta = json.loads(sample["json"])
        assert sample["jpg"] == (jpegs / meta["name"]).read_bytes()          # not re-encoded
        assert meta["label"] == Path(meta["name"]).parts[0]
        assert manifest["classes"][int(sample["cls"])] == meta["label"]


def test_training_from_shards_equals_training_from_the_folder(jpegs, tmp_path):
    out = shards(jpegs, tmp_path / "shards")
    folder = load_dataset(jpegs, DataOptions(data_mode="memory"))
    streamed = load_dataset(out, DataOptions(data_mode="stream"))
    in_memory = load_dataset(out, DataOptions(data_mode="memory"))
    assert streamed.train.streamed and not in_memory.train.streamed and streamed.name == folder.name
    for split in ("train", "val", "test"):                  # the same seeded splits, the same pixels
        a, b, c = (getattr(s, split) for s in (folder, streamed, in_memory))
        assert a.paths == b.paths == c.paths and torch.equal(a.labels, b.labels)
        assert torch.equal(a.images, b.images[:]) and torch.equal(a.images, c.images)
    runs = []
    for data in (jpegs, out):                               # imgcls train, streamed, from each
        runs.append(tmp_path / f"run-{data.name}")
        assert main(["train", str(data), "--data-mode", "stream", "--model", "cnn", "--epochs", "1", "--bf16", "off",
                     "--batch-size", "16", "--augment", "crop=2,flip", "--out", str(runs[-1])]) == 0
    a, b = (load_file(run / "model.safetensors") for run in runs)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    reports = [json.loads((run / "report.json").read_text()) for run in runs]
    assert reports[0]["accuracy"] == reports[1]["accuracy"] and reports[0]["sizes"] == reports[1]["sizes"]


def test_arrays_become_png_shards_of_the_same_images_and_labels(tmp_path):
    """A small Fashion-MNIST (the real files' first images) keeps its official test split and ids."""
    source = tmp_path / "fashion-mnist"
    source.mkdir()
    for name, count in (("train-images-idx3-ubyte", 60), ("train-labels-idx1-ubyte", 60),
                        ("t10k-images-idx3-ubyte", 20), ("t10k-labels-idx1-ubyte", 20)):
        array = read_idx(FASHION / f"{name}.gz")[:count]
        header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
        (source / f"{name}.gz").write_bytes(gzip.compress(header + array.tobytes()))
    out = shards(source, tmp_path / "shards", "20KB")
    assert sorted(p.name for p in out.glob("*.tar"))[0] == "test-000000.tar"
    original = load_dataset(source)
    for mode in ("memory", "stream"):
        loaded = load_dataset(out, DataOptions(data_mode=mode))
        assert loaded.class_names == original.class_names and loaded.summary() == original.summary()
        for split in ("train", "val", "test"):
            a, b = getattr(original, split), getattr(loaded, split)
            assert a.ids == b.ids and torch.equal(a.labels, b.labels) and torch.equal(a.images, b.images[:])
    by_key = {s["__key__"]: s for s in webdataset_samples(out)}
    assert len(by_key) == 80 and int(by_key["test_00000019"]["cls"]) == int(original.test.labels[-1])


def test_multi_label_manifests_keep_their_labels(tmp_path, quadrants, write_image):
    x, y = quadrants(24)
    rows = ["path,labels"]
    for i, (image, hot) in enumerate(zip(x, y)):
        write_image(tmp_path / "q" / f"{i}.png", image)
        rows.append(f"q/{i}.png,{';'.join(n for n, on in zip('abc', hot) if on)}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    out = shards(tmp_path / "labels.csv", tmp_path / "shards")
    original, loaded = load_dataset(tmp_path / "labels.csv"), load_dataset(out)
    assert loaded.train.multi_label and loaded.train.paths == original.train.paths
    assert torch.equal(loaded.train.labels, original.train.labels)
    meta = json.loads(webdataset_samples(out)[0]["json"])
    assert meta["labels"] == [n for n, on in zip("abc", y[0]) if on]


def test_a_shard_cut_short_is_named_when_loading(jpegs, tmp_path, capsys):
    out = shards(jpegs, tmp_path / "shards")
    victim = out / "all-000002.tar"
    victim.write_bytes(victim.read_bytes()[:1000])
    with pytest.raises(ImgclsError, match=r"all-000002\.tar: shard cut short: 1,000 of"):
        load_dataset(out)
    assert main(["train", str(out), "--model", "cnn", "--epochs", "1", "--out", str(tmp_path / "run")]) == 2
    assert "all-000002.tar: shard cut short" in capsys.readouterr().err
    (out / "all-000003.tar").unlink()
    victim.write_bytes(b"")
    with pytest.raises(ImgclsError, match=r"all-00000[23]\.tar: shard (missing|cut short)"):
        load_dataset(out)


@pytest.mark.parametrize("augment", ["crop=2,flip", "rrc,flip"])      # rrc: the workers crop while decoding
def test_a_shard_cut_short_mid_training_skips_its_samples_and_names_it(tmp_path, write_image, augment):
    """The shard is cut after loading: training goes on without its lost samples, and the run's
    report lists them with the shard's name; the test split (another shard) is evaluated as usual."""
    rng = np.random.default_rng(1)
    for split, count in (("train", 12), ("test", 4)):
        for label, name in enumerate(("dark", "light")):
            for i in range(count):
                pixels = rng.integers(0, 60, (8, 8, 3)) + 150 * label
                write_image(tmp_path / "split" / split / name / f"{i}.png", pixels.astype(np.uint8))
    out = shards(tmp_path / "split", tmp_path / "shards", "1GB")
    splits = load_dataset(out, DataOptions(data_mode="stream", val_fraction=0))
    victim = out / "train-000000.tar"
    manifest = json.loads((out / "manifest.json").read_text())["splits"]["train"]["samples"]
    cut = manifest["offset"][16]                          # the last 8 samples lose their bytes
    victim.write_bytes(victim.read_bytes()[:cut])
    settings = dict(NET, augment=augment)
    model = create_model(settings.pop("model"), **settings)
    fit_and_report(model, "cnn", splits, tmp_path / "run", {}, print_table=False)
    lost = {name: reason for name, reason in model.train_state_.unreadable}
    assert set(lost) == set(manifest["name"][16:]) and all(str(victim) in reason for reason in lost.values())
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert set(manifest["name"][16:]) <= {s["path"] for s in report["skipped_files"]}
    assert report["sizes"]["test"] == 8 and (tmp_path / "run" / "model.safetensors").is_file()


@pytest.mark.parametrize("size", ["1XB", "GB", "-1GB", "0"])
def test_a_bad_shard_size_is_a_clear_error(jpegs, tmp_path, capsys, size):
    with pytest.raises(SystemExit) as exit_:
        main(["shards", str(jpegs), "--out", str(tmp_path / "s"), f"--shard-size={size}"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--shard-size" in err and ("not a size" in err or "must be positive" in err)
    assert not (tmp_path / "s").exists()


def test_byte_sizes():
    from imgcls.commands.shards import byte_size
    assert byte_size("1GB") == 10**9 and byte_size("500MB") == 5 * 10**8 and byte_size("64MiB") == 64 * 2**20
    assert byte_size("2.5gb") == 2_500_000_000 and byte_size("4096") == 4096
