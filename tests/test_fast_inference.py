"""Fast by default (imgcls.inference.fast): a saved network runs through its cached ONNX export
where that predicts like PyTorch and is measured faster; the cache is keyed by the source file's
SHA-256, rebuilt when an entry is incomplete or corrupt, and safe for concurrent processes."""

import hashlib
import json
import sys
import threading

import pytest
from PIL import Image

from imgcls.cli import main
from imgcls.errors import ImgclsError
from imgcls.inference import OnnxClassifier, resolve_model
from imgcls.inference import fast
from imgcls.inference.parity import Parity
from imgcls.models import create_model
from imgcls.models.artifact import update_metrics


@pytest.fixture(scope="module")
def cnn(digits):
    """A tiny CNN, one epoch on digits, predicting in fp32."""
    return create_model("cnn", epochs=1, bf16="off").fit(digits.train)


@pytest.fixture
def run(cnn, tmp_path, monkeypatch):
    """The CNN saved in a run folder; the runtime cache empty in tmp_path; IMGCLS_RUNTIME unset."""
    monkeypatch.setenv("IMGCLS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("IMGCLS_RUNTIME")
    cnn.save(tmp_path / "run")
    return tmp_path / "run"


def entries(tmp_path) -> list:
    return sorted((tmp_path / "cache" / "onnx").glob("*/entry.json"))


def top_labels(capsys, *argv) -> tuple[list, str]:
    """`imgcls predict ARGV --json`: each file's top label, and what it said on stderr."""
    assert main(["predict", *argv, "--json"]) == 0
    said = capsys.readouterr()
    return [(p["path"], p["predictions"][0]["label"]) for p in json.loads(said.out)], said.err


def test_the_default_exports_once_keyed_by_the_model_file_and_predicts_like_pytorch(run, digit_pngs, tmp_path,
                                                                                   capsys):
    pytorch, _ = top_labels(capsys, str(run), str(digit_pngs), "--runtime", "torch")
    assert not (tmp_path / "cache" / "onnx").exists()          # torch never exports

    labels, said = top_labels(capsys, str(run), str(digit_pngs))
    assert labels == pytorch and said.count("exporting") == 1
    [entry] = entries(tmp_path)
    record = json.loads(entry.read_text())
    assert record["source_sha256"] == hashlib.sha256((run / "model.safetensors").read_bytes()).hexdigest()
    assert record["parity"]["top1_agreement"] == 1.0
    assert record["decisions"][fast.machine_key()]["runtime"] in ("onnx", "torch")
    exported = entry.parent / "model.onnx"
    stamp = exported.stat().st_mtime_ns

    for runtime in ("onnx", "auto"):
        labels, said = top_labels(capsys, str(run), str(digit_pngs), "--runtime", runtime)
        assert labels == pytorch and "exporting" not in said
    assert exported.stat().st_mtime_ns == stamp and entries(tmp_path) == [entry]   # not exported again


def test_the_first_run_says_it_is_exporting_and_later_runs_say_nothing(run, capsys):
    model = resolve_model(str(run), "auto")
    said = capsys.readouterr().err
    assert said.count("exporting") == 1 and "runs in" in said
    assert resolve_model(str(run), "auto").predict_proba is not None
    assert capsys.readouterr().err == ""
    onnx = resolve_model(str(run), "onnx")
    assert isinstance(onnx, OnnxClassifier) and capsys.readouterr().err == ""
    assert isinstance(model, OnnxClassifier) == (json.loads((onnx.path.parent / "entry.json").read_text())
                                                 ["decisions"][fast.machine_key()]["runtime"] == "onnx")


def test_a_changed_model_file_is_exported_again(run, tmp_path, capsys):
    before = resolve_model(str(run), "onnx")
    update_metrics(run, {"note": "changed"})           # a new file: new bytes, new SHA-256
    capsys.readouterr()
    after = resolve_model(str(run), "onnx")
    assert "exporting" in capsys.readouterr().err
    assert after.path != before.path and len(entries(tmp_path)) == 2
    assert after.metrics_ == {"note": "changed"}


@pytest.mark.parametrize("damage", ["truncated export", "no entry.json", "garbage entry.json", "export gone",
                                    "export replaced", "export that no longer opens"])
def test_a_corrupt_or_partial_entry_is_rebuilt(run, digits, damage, capsys):
    reference = resolve_model(str(run), "torch").predict(digits.test.images[:50])
    exported = resolve_model(str(run), "onnx").path
    entry = exported.parent / "entry.json"
    if damage == "truncated export":
        exported.write_bytes(exported.read_bytes()[:1000])
    elif damage == "no entry.json":         # an export interrupted before its record was written
        entry.unlink()
    elif damage == "garbage entry.json":
        entry.write_text('{"entry_version": 1, "export_b')
    elif damage == "export gone":
        exported.unlink()
    elif damage == "export replaced":       # same size, other bytes
        data = bytearray(exported.read_bytes())
        data[len(data) // 2] ^= 0xFF
        exported.write_bytes(bytes(data))
    else:                                   # as recorded, but ONNX Runtime refuses it (another version, say)
        exported.write_bytes(b"not an onnx graph")
        record = json.loads(entry.read_text())
        record.update(export_bytes=17, export_sha256=hashlib.sha256(b"not an onnx graph").hexdigest())
        entry.write_text(json.dumps(record))
    capsys.readouterr()
    rebuilt = resolve_model(str(run), "onnx")
    assert "exporting" in capsys.readouterr().err
    assert (rebuilt.predict(digits.test.images[:50]) == reference).all()
    assert json.loads(entry.read_text())["export_sha256"] == hashlib.sha256(exported.read_bytes()).hexdigest()
    assert not list(exported.parent.glob("*.tmp"))


def test_the_choice_is_measured_not_guessed(run, monkeypatch, capsys):
    timings = {"onnx": 1.0, "torch": 3.0}
    monkeypatch.setattr(fast, "race", lambda candidates: dict(timings))
    assert isinstance(resolve_model(str(run), "auto"), OnnxClassifier)
    assert "ONNX Runtime measured at 3.00x PyTorch's speed" in capsys.readouterr().err
    # Another machine (here: another thread count) measures again, and may choose otherwise.
    monkeypatch.setattr(fast, "machine_key", lambda: "another machine")
    timings.update(onnx=2.0, torch=1.0)
    model = resolve_model(str(run), "auto")
    assert not isinstance(model, OnnxClassifier) and model.model_name == "cnn"
    assert "runs in PyTorch (ONNX Runtime measured at 0.50x" in capsys.readouterr().err
    assert not isinstance(resolve_model(str(run), "auto"), OnnxClassifier)   # cached: no new measurement
    assert capsys.readouterr().err == ""


def test_a_failed_export_falls_back_to_pytorch_and_says_why_once(run, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError("unsupported operator Foo\nmore details")
    monkeypatch.setattr("imgcls.inference.export.export_model", broken)
    model = resolve_model(str(run), "auto")
    assert model.model_name == "cnn" and not isinstance(model, OnnxClassifier)
    said = capsys.readouterr().err
    assert "runs in PyTorch: its ONNX export failed (unsupported operator Foo)" in said
    assert not isinstance(resolve_model(str(run), "auto"), OnnxClassifier) and capsys.readouterr().err == ""
    with pytest.raises(ImgclsError, match="--runtime onnx: .* cannot be exported to ONNX \\(unsupported operator"):
        resolve_model(str(run), "onnx")


def test_an_export_that_does_not_predict_alike_is_not_used(run, monkeypatch, capsys):
    # (the module by its full name: imgcls.inference.parity is also the function the package exports)
    monkeypatch.setattr(sys.modules["imgcls.inference.parity"], "parity",
                        lambda *a: Parity(5, "5 sample photos", 0.8, 0.4))
    assert not isinstance(resolve_model(str(run), "auto"), OnnxClassifier)
    assert "runs in PyTorch: its ONNX export's top-1 differs" in capsys.readouterr().err
    assert isinstance(resolve_model(str(run), "onnx"), OnnxClassifier)      # asked for: used, with a warning
    assert "warning:" in capsys.readouterr().err


def test_knn_runs_as_it_is_and_explicit_onnx_is_a_one_line_error(digits, digit_pngs, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("IMGCLS_CACHE", str(tmp_path / "cache"))
    create_model("knn", k=3).fit(digits.train).save(tmp_path / "knn")
    assert main(["predict", str(tmp_path / "knn"), str(digit_pngs), "--runtime", "auto"]) == 0
    assert not (tmp_path / "cache" / "onnx").exists()
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "knn"), str(digit_pngs), "--runtime", "onnx"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("imgcls: error: --runtime onnx:") and "knn" in err and "\n" not in err
    assert main(["eval", str(tmp_path / "knn"), "digits", "--runtime", "onnx"]) == 2
    assert "no network to export" in capsys.readouterr().err


def test_an_exported_file_runs_in_its_own_runtime(run, digit_pngs, monkeypatch, capsys):
    path = resolve_model(str(run), "onnx").path
    assert isinstance(resolve_model(str(path), "auto"), OnnxClassifier)
    with pytest.raises(ImgclsError, match="--runtime torch: .* exported model, which runs in ONNX Runtime only"):
        resolve_model(str(path), "torch")
    monkeypatch.setenv("IMGCLS_RUNTIME", "torch")      # a default for networks, not an order for exports
    assert main(["predict", str(path), str(digit_pngs)]) == 0
    assert main(["predict", str(path), str(digit_pngs), "--runtime", "torch"]) == 2
    assert "exported model, which runs in ONNX Runtime only" in capsys.readouterr().err


def test_imgcls_runtime_sets_the_default_and_is_checked(run, digit_pngs, monkeypatch, capsys):
    monkeypatch.setenv("IMGCLS_RUNTIME", "onnx")
    assert main(["predict", str(run), str(digit_pngs)]) == 0
    assert "exporting" in capsys.readouterr().err
    monkeypatch.setenv("IMGCLS_RUNTIME", "fast")
    assert main(["predict", str(run), str(digit_pngs)]) == 2
    assert "IMGCLS_RUNTIME 'fast': expected one of auto, torch, onnx" in capsys.readouterr().err


def test_eval_in_onnx_scores_like_pytorch_and_keeps_the_network_figures(run, cnn, digits, tmp_path, capsys):
    assert main(["eval", str(run), "digits", "--runtime", "onnx", "--out", str(tmp_path / "report")]) == 0
    assert f"accuracy {cnn.score(digits.test):.2%}" in capsys.readouterr().out
    assert (tmp_path / "report" / "filters.png").is_file()      # drawn from the PyTorch network


def test_serve_passes_the_runtime_through(run, monkeypatch, capsys):
    import uvicorn
    served = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: served.update(app=app, **kwargs))
    assert main(["serve", str(run), "--runtime", "onnx", "--port", "0"]) == 0
    assert "(ONNX Runtime)" in capsys.readouterr().out and served["port"] == 0
    assert main(["serve", str(run), "--runtime", "torch", "--port", "0"]) == 0
    assert "(PyTorch)" in capsys.readouterr().out


def test_concurrent_exports_wait_for_one_and_share_the_entry(run, tmp_path, capsys):
    # Threads, each opening the entry's lock file itself: flock excludes them as it does processes.
    found = []
    threads = [threading.Thread(target=lambda: found.append(resolve_model(str(run), "onnx"))) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert len(found) == 3 and all(isinstance(model, OnnxClassifier) for model in found)
    assert capsys.readouterr().err.count("exporting") == 1
    [entry] = entries(tmp_path)
    assert not list(entry.parent.glob("*.tmp"))


def test_a_network_run_by_onnx_runtime_still_explains_through_its_original(run, digits):
    import copy

    import numpy as np

    from imgcls.explain import explain
    onnx, pytorch = resolve_model(str(run), "onnx"), resolve_model(str(run), "torch")
    assert isinstance(onnx, OnnxClassifier) and onnx.capabilities.explained_by == "network"
    images = digits.test.images[:4]
    for method in ("gradcam", "saliency"):
        got, expected = explain(onnx, images, method=method), explain(pytorch, images, method=method)
        assert [e.target for e in got] == [e.target for e in expected]
        for a, b in zip(got, expected):
            np.testing.assert_allclose(a.map, b.map, atol=1e-5)
    np.testing.assert_array_equal(onnx.first_layer_filters(), pytorch.first_layer_filters())
    twin = copy.deepcopy(onnx)        # the server explains through its own copy
    assert twin.session_ is onnx.session_ and (twin.predict(images) == pytorch.predict(images)).all()


def test_the_default_server_explains_its_predictions(run, digits):
    import io

    import httpx
    from test_serving import LiveServer

    from imgcls.serving.app import create_app
    model = resolve_model(str(run), "onnx")
    buffer = io.BytesIO()
    Image.fromarray(digits.test.images[0, 0].numpy()).save(buffer, format="PNG")
    with LiveServer(create_app(model)) as live:
        assert httpx.get(live.url + "/v1/model").json()["explains"] == "network"
        answer = httpx.post(live.url + "/v1/classify?explain=true", timeout=120,
                            files=[("file", ("d.png", buffer.getvalue(), "image/png"))])
        assert answer.status_code == 200, answer.text
        result = answer.json()["results"][0]
        assert result["explanations"][0]["label"] == result["predictions"][0]["label"]


def test_a_pretrained_model_is_keyed_by_its_name_and_weights_and_predicts_like_pytorch(tmp_path, monkeypatch,
                                                                                      capsys):
    import skimage.data

    from imgcls.models.pretrained import model_cache
    monkeypatch.setenv("IMGCLS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("IMGCLS_RUNTIME")
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("chelsea", "coffee"):
        Image.fromarray(getattr(skimage.data, name)()).save(photos / f"{name}.jpg", quality=95)

    def top5(*argv):
        assert main(["predict", str(photos), "--json", *argv]) == 0
        said = capsys.readouterr()
        return [[p["label"] for p in r["predictions"]] for r in json.loads(said.out)], said.err

    labels, said = top5()
    assert "exporting efficientnet_lite0" in said
    assert top5("--runtime", "torch")[0] == labels and labels[1][0] == "espresso"
    weights = model_cache() / "efficientnet_lite0" / "model.safetensors"
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    [entry] = entries(tmp_path)
    assert entry.parent == fast.entry_dir(sha, "efficientnet_lite0")
    assert json.loads(entry.read_text())["source_sha256"] == sha
    assert top5() == (labels, "")                   # cached: no export, no measurement, nothing said


def test_decoding_files_in_process_leaves_torch_threads_alone(cnn, digit_pngs):
    # A few files are decoded in this process, not by DataLoader workers; the network that runs
    # next (and the measurement that compares runtimes) must keep every thread.
    import torch

    from imgcls.inference import find_images, predict_files
    threads = torch.get_num_threads()
    predict_files(cnn, find_images([digit_pngs])[:2])
    assert torch.get_num_threads() == threads
