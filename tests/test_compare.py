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
