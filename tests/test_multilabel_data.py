"""Multi-label data: manifests with several (or no) labels per image, multi-hot arrays, iterative
stratification, BCE class weights, and the preprocessing that travels with decoded images."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from imgcls.data import load_dataset
from imgcls.data.dataset import ImageDataset
from imgcls.data.load import DataOptions, from_arrays
from imgcls.data.splits import balanced_order, class_balance_weights, stratified_kfold, stratified_split

from checks import one_line_error
from imgcls.task import MultiLabel, SingleLabel, task_from_dict

LABELS = ["beach", "dog", "person"]


@pytest.fixture
def multilabel_manifest(tmp_path, write_image):
    """manifest(cells, column='label', split=None) -> labels.csv over one image per row; each image's red
    channel encodes its row, its green channel the bit pattern of its labels."""
    def write(cells: list[str], column: str = "label", splits: list[str] | None = None) -> Path:
        lines = [["path", column] + (["split"] if splits else [])]
        for i, cell in enumerate(cells):
            bits = sum(1 << LABELS.index(name.strip()) for name in cell.split(";") if name.strip() in LABELS)
            write_image(tmp_path / "img" / f"{i}.png", np.full((8, 8, 3), (i, bits * 30, 0), dtype=np.uint8))
            lines.append([f"img/{i}.png", cell] + ([splits[i]] if splits else []))
        with (tmp_path / "labels.csv").open("w", newline="") as f:
            csv.writer(f).writerows(lines)
        return tmp_path / "labels.csv"
    return write


def _bits(part: ImageDataset) -> torch.Tensor:
    weights = torch.tensor([1 << LABELS.index(n) for n in part.class_names])
    return (part.labels.long() * weights).sum(1)


def test_semicolon_cells_make_a_multi_label_manifest(multilabel_manifest):
    cells = ["dog;beach", "person", "", "dog ; person", "beach"] * 8
    splits = load_dataset(multilabel_manifest(cells), DataOptions(val_fraction=0.2, test_fraction=0.2))
    assert splits.class_names == LABELS
    for part in (splits.train, splits.val, splits.test):
        assert part.multi_label and part.labels.dtype == torch.uint8 and part.labels.shape[1] == 3
        assert isinstance(part.task, MultiLabel)
        # every image keeps exactly its own labels through decoding and splitting
        assert torch.equal(_bits(part), part.images[:, 1, 0, 0].long() // 30)
    assert sum(len(p) for p in (splits.train, splits.val, splits.test)) == len(cells)
    assert (splits.train.labels.sum(1) == 0).any()        # images with no label are kept
    assert splits.train.class_counts() == dict(zip(LABELS, splits.train.labels.sum(0).tolist()))


def test_a_labels_column_is_multi_label_even_with_one_label_per_row(multilabel_manifest):
    cells = ["dog", "person", "beach", ""] * 6
    splits = load_dataset(multilabel_manifest(cells, column="labels"), DataOptions(val_fraction=0, test_fraction=0.25))
    assert splits.train.multi_label and splits.train.labels.sum(1).max() == 1


def test_an_empty_cell_in_a_single_label_manifest_is_an_error_that_names_the_row(multilabel_manifest):
    path = multilabel_manifest(["dog", "person", "", "dog"])
    one_line_error(lambda: load_dataset(path), "labels.csv:4", "empty label", "labels")


def test_unknown_label_and_missing_file_name_their_row(multilabel_manifest):
    splits = ["train"] * 6 + ["test"] * 2
    path = multilabel_manifest(["dog;beach", "person", "dog", "beach;person", "dog", "beach", "dog", "cat;dog"],
                               splits=splits)
    one_line_error(lambda: load_dataset(path), "labels.csv:9", "cat")
    path = multilabel_manifest(["dog;beach", "person", "dog;person"] * 3)
    (path.parent / "img" / "4.png").unlink()
    one_line_error(lambda: load_dataset(path), "labels.csv:6", "no such file", "img/4.png")


def test_labels_come_from_training_rows_and_a_label_without_images_is_an_error(multilabel_manifest):
    path = multilabel_manifest(["dog;beach", "dog", "beach"] * 4, splits=["train"] * 9 + ["test"] * 3)
    assert load_dataset(path).class_names == ["beach", "dog"]
    y = np.zeros((10, 3), dtype=np.uint8)
    y[:, 0], y[::2, 1] = 1, 1
    one_line_error(lambda: from_arrays(np.zeros((10, 4, 4)), y, class_names=LABELS), "no training image", "person")
    one_line_error(lambda: ImageDataset.from_arrays(np.zeros((2, 4, 4)), [[1, 0], [1, 2]]), "0 or 1")


def test_multi_hot_arrays_are_multi_label():
    rng = np.random.default_rng(0)
    y = (rng.random((200, 4)) < 0.3).astype(np.int64)
    y[:4] = np.eye(4, dtype=np.int64)           # every label present
    splits = from_arrays(rng.integers(0, 255, (200, 8, 8)), y)
    assert splits.class_names == ["0", "1", "2", "3"]
    assert splits.train.multi_label and splits.train.labels.shape == (len(splits.train), 4)
    one_line_error(lambda: ImageDataset.from_arrays(np.zeros((2, 4, 4)), np.ones((2, 3)), ["a", "b"]),
                   "3 columns", "2 classes")


def test_iterative_stratification_puts_rare_labels_in_every_split():
    rng = np.random.default_rng(1)
    y = (rng.random((1000, 6)) < [0.5, 0.3, 0.2, 0.1, 0.02, 0.01]).astype(np.uint8)
    kept, held = stratified_split(y, 0.2, seed=3)
    assert len(held) == 200 and len(np.intersect1d(kept, held)) == 0 and len(kept) + len(held) == 1000
    assert (y[held].sum(0) > 0).all() and (y[kept].sum(0) > 0).all()
    # each label's share in the held-out part is close to its share overall
    assert np.abs(y[held].mean(0) - y.mean(0)).max() < 0.02
    again = stratified_split(y, 0.2, seed=3)
    assert np.array_equal(again[1], held)                      # seeded
    folds = list(stratified_kfold(y, 5, seed=0))
    assert sorted(np.concatenate([v for _, v in folds]).tolist()) == list(range(1000))
    assert all((y[v].sum(0) > 0).all() for _, v in folds)


def test_balance_weights_are_bce_pos_weight_and_the_sampler_refuses_multi_label():
    y = torch.tensor([[1, 0, 0], [1, 1, 0], [1, 0, 0], [0, 0, 0]], dtype=torch.uint8)
    assert torch.allclose(class_balance_weights(y, 3), torch.tensor([1 / 3, 3.0, 1.0]))
    one_line_error(lambda: balanced_order(y, torch.Generator()), "balance=weights")


def test_tasks_round_trip_and_reject_bad_thresholds():
    assert task_from_dict(None) == SingleLabel()
    task = MultiLabel((0.2, 0.7))
    assert task_from_dict(task.to_dict()) == task
    assert task.decide(np.array([[0.3, 0.69], [0.1, 0.7]])).tolist() == [[1, 0], [0, 1]]
    for bad in (0.0, 1.0, 1.5, -0.1):
        one_line_error(lambda: MultiLabel((0.5, bad)), "strictly between 0 and 1")


@pytest.mark.parametrize("resize", ["pad", "stretch"])
def test_decoded_images_carry_their_preprocessing_through_splits(tmp_path, write_image, resize):
    for label in ("a", "b"):
        for i in range(6):
            write_image(tmp_path / "d" / label / f"{i}.png", np.full((12 + i, 20, 3), 40 * i, dtype=np.uint8))
    splits = load_dataset(tmp_path / "d", DataOptions(size=8, resize=resize))
    for part in (splits.train, splits.val, splits.test):
        assert part.preprocessing.resize == resize and part.preprocessing == splits.preprocessing
    assert splits.train.concat(splits.val).preprocessing.resize == resize


def test_data_info_shows_label_frequencies_cardinality_and_pairs(multilabel_manifest, tmp_path, capsys):
    from imgcls.cli import main
    from imgcls.data.inspect import label_stats
    cells = ["dog;beach", "person", "", "dog;person", "dog;beach;person"] * 6
    path = multilabel_manifest(cells)
    assert main(["data", "info", str(path), "--out", str(tmp_path / "info"), "--val-fraction", "0"]) == 0
    shown = capsys.readouterr().out
    assert "multi-label" in shown and "cardinality" in shown and "beach + dog" in shown
    data = ImageDataset.from_arrays(np.zeros((5, 4, 4)), [[1, 1, 0], [0, 0, 0], [1, 1, 1], [0, 1, 1], [1, 0, 0]],
                                    ["beach", "dog", "person"])
    stats = label_stats(data)
    assert stats["frequency"] == {"beach": 0.6, "dog": 0.6, "person": 0.4}
    assert stats["cardinality"] == 1.6 and stats["without_labels"] == 0.2
    assert stats["co_occurrences"][0] == {"labels": ["beach", "dog"], "images": 2, "share": 0.4}
    assert [c["labels"] for c in stats["co_occurrences"]] == [["beach", "dog"], ["dog", "person"],
                                                              ["beach", "person"]]


@pytest.mark.parametrize("command", [["doctor", "{data}"], ["index", "{data}", "--out", "{tmp}/index"],
                                     ["tune", "{data}", "--model", "knn", "--cv", "2"],
                                     ["tune", "{data}", "--model", "mlp", "--grid", "lr=0.1", "--trials", "1"]])
def test_commands_for_single_label_data_refuse_multi_label_data_in_one_line(multilabel_manifest, tmp_path, capsys,
                                                                            command):
    from imgcls.cli import main
    path = multilabel_manifest(["dog;beach", "person", "", "dog;person", "beach"] * 6)
    argv = [a.format(data=path, tmp=tmp_path) for a in command]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("imgcls: error:") and "multi-label" in err and "\n" not in err
    assert not (tmp_path / "index").exists()


def test_train_a_multi_label_manifest_end_to_end(multilabel_manifest, tmp_path, capsys):
    import json
    from imgcls.cli import main
    from imgcls.models import load_model, read_metadata
    cells = ["dog;beach", "person", "", "dog;person", "beach", "dog", "beach;person", "dog;beach;person"] * 10
    path = multilabel_manifest(cells)
    out = tmp_path / "run"
    assert main(["train", str(path), "--model", "knn", "--k", "3", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["task"] == "multi-label" and set(report["per_class"]) == set(LABELS) and "mAP" in report
    meta = read_metadata(out)
    assert meta["task"]["kind"] == "multi-label" and len(meta["task"]["thresholds"]) == 3
    assert "val_mAP" in meta["metrics"] and meta["metrics"]["mAP"] == report["mAP"]
    model = load_model(out)
    assert model.task_.multi_label
    capsys.readouterr()
    for bad, fragment in ((["--model", "linear", "--loss", "svm"], "loss=softmax"),
                          (["--model", "knn", "--threshold", "1.5"], "strictly between 0 and 1"),
                          (["--model", "mlp", "--balance", "sampler"], "balance=weights")):
        target = tmp_path / f"bad-{bad[1]}-{bad[-1]}"
        assert main(["train", str(path), *bad, "--out", str(target)]) == 2
        err = capsys.readouterr().err.strip()
        assert fragment in err and "\n" not in err
        assert not target.exists()                       # nothing half-written


def test_lr_find_and_compare_refuse_what_cannot_learn_the_data_before_writing(multilabel_manifest, tmp_path, capsys):
    from imgcls.cli import main
    path = multilabel_manifest(["dog;beach", "person", "", "dog;person", "beach"] * 6)
    assert main(["lr-find", str(path), "--model", "mlp", "--balance", "sampler", "--out", str(tmp_path / "lr")]) == 2
    assert "balance=weights" in capsys.readouterr().err and not (tmp_path / "lr").exists()
    settings = tmp_path / "settings.yaml"
    settings.write_text("linear: {loss: svm}\n")
    assert main(["compare", str(path), "--models", "knn,linear", "--settings", str(settings),
                 "--out", str(tmp_path / "c")]) == 2
    assert "loss=softmax" in capsys.readouterr().err
    assert not (tmp_path / "c" / "knn").exists()          # knn was not trained before linear was refused


def test_doctor_reports_a_manifest_row_naming_a_missing_file(multilabel_manifest, tmp_path):
    from imgcls.doctor import diagnose
    path = multilabel_manifest(["dog", "person", "beach", "dog", "person", "beach"] * 3)
    (path.parent / "img" / "4.png").unlink()
    report = diagnose(str(path), DataOptions(val_fraction=0, test_fraction=0))
    assert [u.path for u in report.unreadable] == ["img/4.png"]
