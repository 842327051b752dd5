"""imgcls compare: identical splits, one leaderboard, one HTML report."""

import json

from imgcls.cli import main
from imgcls.models import read_metadata


def test_compare_ladder(tmp_path, capsys):
    out = tmp_path / "ladder"
    assert main(["compare", "digits", "--models", "knn,linear,mlp", "--epochs", "2", "--out", str(out)]) == 0
    rows = json.loads((out / "leaderboard.json").read_text())
    assert [r["model"] for r in rows] == sorted([r["model"] for r in rows],
                                                key=lambda m: -next(r["test_accuracy"] for r in rows if r["model"] == m))
    assert {r["model"] for r in rows} == {"knn", "linear", "mlp"}
    reports = {r["model"]: json.loads((out / r["folder"] / "report.json").read_text()) for r in rows}
    assert len({json.dumps(rep["sizes"]) for rep in reports.values()}) == 1          # identical splits
    for r in rows:
        assert r["test_accuracy"] == reports[r["model"]]["accuracy"] and r["model_bytes"] > 0
    assert next(r for r in rows if r["model"] == "linear")["parameters"] == 65 * 10
    html = (out / "compare.html").read_text()
    assert html.count("data:image/png;base64,") >= 4 and "mlp/report.html" in html
    assert "Leaderboard on digits" in capsys.readouterr().out


def test_compare_rejects_unknown_models_before_training(tmp_path, capsys):
    assert main(["compare", "digits", "--models", "knn,resnet9000", "--out", str(tmp_path)]) == 2
    assert "unknown model 'resnet9000'" in capsys.readouterr().err
    assert not (tmp_path / "knn").exists()


def test_compare_takes_per_model_settings_from_yaml(tmp_path, capsys):
    settings = tmp_path / "ladder.yaml"
    settings.write_text("knn: {k: 3, metric: l1}\nlinear: {loss: svm, epochs: 2}\n")
    out = tmp_path / "ladder"
    assert main(["compare", "digits", "--models", "knn,linear", "--settings", str(settings), "--out", str(out)]) == 0
    rows = {r["model"]: r for r in json.loads((out / "leaderboard.json").read_text())}
    params = {m: read_metadata(out / rows[m]["folder"])["params"] for m in rows}
    assert params["knn"]["k"] == 3 and params["knn"]["metric"] == "l1"
    assert params["linear"]["loss"] == "svm" and params["linear"]["epochs"] == 2
    settings.write_text("mlp: {epochs: 1}\n")
    assert main(["compare", "digits", "--models", "knn", "--settings", str(settings), "--out", str(out)]) == 2
    assert "settings for mlp, which --models does not list" in capsys.readouterr().err
    settings.write_text("knn: {kay: 3}\n")
    assert main(["compare", "digits", "--models", "knn", "--settings", str(settings), "--out", str(out)]) == 2
    assert "kay" in capsys.readouterr().err


def test_a_multi_label_comparison_ranks_by_map(tmp_path, quadrants, write_image, capsys):
    x, y = quadrants(300, noise=120)
    lines = ["path,labels"]
    for i, (image, labels) in enumerate(zip(x, y)):
        write_image(tmp_path / "img" / f"{i}.png", image)
        lines.append(f"img/{i}.png," + ";".join(n for n, on in zip("abc", labels) if on))
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "ladder"
    assert main(["compare", str(tmp_path / "labels.csv"), "--models", "knn,linear,mlp", "--epochs", "3",
                 "--out", str(out)]) == 0
    rows = json.loads((out / "leaderboard.json").read_text())
    assert {r["model"] for r in rows} == {"knn", "linear", "mlp"}
    assert list(rows[0])[:5] == ["model", "test_mAP", "macro_f1", "subset_accuracy", "val_mAP"]
    assert "test_accuracy" not in rows[0] and "val_accuracy" not in rows[0]
    assert [r["test_mAP"] for r in rows] == sorted((r["test_mAP"] for r in rows), reverse=True)
    for r in rows:
        report = json.loads((out / r["folder"] / "report.json").read_text())
        assert report["task"] == "multi-label"
        assert r["test_mAP"] == report["mAP"] and r["subset_accuracy"] == report["subset_accuracy"]
        assert r["macro_f1"] == report["macro_avg"]["f1"] and r["val_mAP"] == report["val_mAP"]
        assert 0 < r["test_mAP"] <= 1 and r["model_bytes"] > 0
    assert rows[0]["test_mAP"] > 0.8
    html = (out / "compare.html").read_text()
    assert "<th>Test mAP</th><th>Macro F1</th><th>Subset accuracy</th><th>Val mAP</th>" in html
    assert "Test accuracy" not in html and "Precision-recall curves" in html and "Confusion matrix" not in html
    assert html.count("data:image/png;base64,") >= 4       # PR curves of all three, training curves of mlp
    best = rows[0]
    assert f'<b>{best["test_mAP"]:.3f}</b>' in html and f'<td>{best["subset_accuracy"]:.2%}</td>' in html
    printed = capsys.readouterr().out
    assert "mAP" in printed and "subset" in printed and "test acc" not in printed
    assert f"{best['test_mAP']:.3f}" in printed


def test_a_model_without_a_test_map_ranks_last():
    from imgcls.compare import rank_rows
    from imgcls.task import MultiLabel, SingleLabel
    rows = [{"model": "x", "test_mAP": None}, {"model": "y", "test_mAP": 0.5}, {"model": "z", "test_mAP": 0.9}]
    assert [r["model"] for r in rank_rows(rows, MultiLabel())] == ["z", "y", "x"]
    rows = [{"model": "x", "test_accuracy": 0.2}, {"model": "y", "test_accuracy": 0.7}]
    assert [r["model"] for r in rank_rows(rows, SingleLabel())] == ["y", "x"]
