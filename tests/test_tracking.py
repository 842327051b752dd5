"""--log tensorboard|mlflow, read back with the libraries' own readers (TensorBoard's
EventAccumulator, MLflow's MlflowClient) and checked against the run folder's history.json,
report.json and config.json."""

import json
import sys

import numpy as np
import pytest

from imgcls.cli import main
from imgcls.training.tracking import flat_params, report_figures

pytest.importorskip("tensorboard")
mlflow = pytest.importorskip("mlflow")


def _read(path):
    return json.loads(path.read_text())


def _fenced_json(text: str) -> dict:
    return json.loads(text.removeprefix("```json\n").removesuffix("\n```"))


def _train(out, *extra):
    assert main(["train", "digits", "--model", "mlp", "--hidden", "16", "--epochs", "2", "--out", str(out),
                 *extra]) == 0


def test_tensorboard_event_files_hold_the_epochs_config_and_report(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    out = tmp_path / "run"
    _train(out, "--log", "tensorboard")
    history, report = _read(out / "history.json"), _read(out / "report.json")
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0, "images": 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    per_epoch = {k for k in history[0] if k != "epoch"}
    assert per_epoch <= scalars and {"train_loss", "val_accuracy", "lr"} <= per_epoch
    for key in per_epoch:
        logged = events.Scalars(key)
        assert [e.step for e in logged] == [r["epoch"] for r in history]
        # Event files hold float32: equal to history.json's values at that precision.
        assert [e.value for e in logged] == [float(np.float32(r[key])) for r in history], key
    figures = report_figures(report)
    assert {"report/accuracy", "report/macro_avg/f1", "report/timings/fit_seconds"} <= set(figures)
    assert figures["report/accuracy"] == report["accuracy"]
    for name, value in figures.items():
        (event,) = events.Scalars(name)
        assert event.step == 2 and event.value == float(np.float32(value)), name
    assert scalars == per_epoch | set(figures)
    text = {tag: events.Tensors(tag)[0].tensor_proto.string_val[0].decode() for tag in events.Tags()["tensors"]}
    assert _fenced_json(text["config/text_summary"]) == _read(out / "config.json")
    assert _fenced_json(text["report/text_summary"]) == report
    assert {"figures/confusion_matrix", "figures/curves"} <= set(events.Tags()["images"])


def test_mlflow_run_holds_the_epochs_config_and_report_and_continues_on_resume(tmp_path, monkeypatch):
    from mlflow import MlflowClient
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "run"
    assert main(["train", "digits", "--model", "mlp", "--hidden", "16", "--epochs", "1", "--out", str(out),
                 "--log", "mlflow"]) == 0
    first_config = _read(out / "config.json")
    state = _read(out / "mlflow_run.json")
    assert state["tracking_uri"] == f"sqlite:///{out.resolve() / 'mlflow.db'}"
    _train(out, "--log", "mlflow", "--resume")           # one epoch more, in the same MLflow run
    assert _read(out / "mlflow_run.json") == state
    history, report, config = _read(out / "history.json"), _read(out / "report.json"), _read(out / "config.json")
    assert [r["epoch"] for r in history] == [1, 2]

    client = MlflowClient(tracking_uri=state["tracking_uri"])
    run = client.get_run(state["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert client.get_experiment(run.info.experiment_id).name == "digits"
    for key in (k for k in history[0] if k != "epoch"):
        logged = client.get_metric_history(run.info.run_id, key)
        assert [(m.step, m.value) for m in logged] == [(r["epoch"], r[key]) for r in history], key
    for name, value in report_figures(report).items():
        # The report was logged once per finish (the first run's at step 1, the resumed one's at 2).
        assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, name)][-1] == (2, value)
    # Params are immutable in MLflow: they keep the first run's values; config.json is the final one.
    assert run.data.params == flat_params(first_config) and first_config["params"]["epochs"] == 1
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.json", "report.json", "report.html", "confusion_matrix.png", "history.json"} <= artifacts
    download = tmp_path / "download"
    download.mkdir()
    for name in ("config.json", "report.json", "history.json"):
        got = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path=name,
                                                  dst_path=str(download), tracking_uri=state["tracking_uri"])
        assert json.loads(open(got).read()) == {"config.json": config, "report.json": report,
                                                 "history.json": history}[name]


def test_compare_logs_one_mlflow_run_per_model_in_one_store(tmp_path, monkeypatch):
    from mlflow import MlflowClient
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "ladder"
    assert main(["compare", "digits", "--models", "knn,linear", "--epochs", "1", "--log", "mlflow",
                 "--out", str(out)]) == 0
    client = MlflowClient(tracking_uri=f"sqlite:///{out.resolve() / 'mlflow.db'}")
    (experiment,) = [e for e in client.search_experiments() if e.name == "digits"]
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {"knn", "linear"}
    for name, run in runs.items():
        report = _read(out / name / "report.json")
        assert run.data.metrics["report/accuracy"] == report["accuracy"]
        assert run.data.params["model"] == name and run.info.status == "FINISHED"
    assert "train_loss" not in runs["knn"].data.metrics        # kNN has no epochs; linear does
    assert [m.value for m in client.get_metric_history(runs["linear"].info.run_id, "train_loss")] == \
        [r["train_loss"] for r in _read(out / "linear" / "history.json")]


@pytest.mark.parametrize("kind", ["tensorboard", "mlflow"])
def test_a_missing_tracker_package_is_one_line_naming_the_extra(kind, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, kind, None)         # what an import of an uninstalled package raises
    assert main(["train", "digits", "--model", "mlp", "--log", kind, "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err.strip() == (f"imgcls: error: --log {kind} needs the {kind} package: "
                                               f"pip install 'imgcls[{kind}]'")
    assert not (tmp_path / "run").exists()                # refused before anything was written


def test_a_run_that_raises_is_marked_failed(tmp_path, monkeypatch):
    from mlflow import MlflowClient
    from imgcls.training.tracking import tracking
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(KeyboardInterrupt):
        with tracking("mlflow", tmp_path, config={"model": "mlp"}, experiment="x", run_name="killed"):
            raise KeyboardInterrupt
    state = _read(tmp_path / "mlflow_run.json")
    run = MlflowClient(tracking_uri=state["tracking_uri"]).get_run(state["run_id"])
    assert run.info.status == "FAILED" and run.data.params == {"model": "mlp"}
