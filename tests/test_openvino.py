"""OpenVINO IR exports against the PyTorch original, each test in a child process of its own.

Why a child process: after OpenVINO's runtime has run in a process, that process later crashed
(SIGSEGV in the interpreter) while running other tests of the suite (DataLoader workers, then a
subprocess); `imgcls` commands themselves run one job per process and were not seen to crash.
Isolating OpenVINO keeps the rest of the suite safe while it stays checked in full."""

from __future__ import annotations

import multiprocessing
import re

import numpy as np
import pytest

pytest.importorskip("openvino")


def in_child(test, *args) -> None:
    """Run test(*args) in a fresh (spawned) interpreter; its assertion errors fail this test."""
    child = multiprocessing.get_context("spawn").Process(target=test, args=args)
    child.start()
    child.join(600)
    assert child.exitcode == 0, f"{test.__name__} failed in its child process (exit code {child.exitcode})"


def _trained(name: str):
    from imgcls.data import load_dataset
    from imgcls.models import create_model
    digits = load_dataset("digits")
    params = {"hidden": "32"} if name == "mlp" else {}
    return digits, create_model(name, epochs=1, bf16="off", **params).fit(digits.train)


def _matches_pytorch(name: str, folder: str) -> None:
    import openvino as ov
    from imgcls.inference import OpenVinoClassifier, export_model, resolve_model
    digits, model = _trained(name)
    path = export_model(model, f"{folder}/m.xml", format="openvino")
    assert path.with_suffix(".bin").is_file()
    # OpenVINO's own runtime on the raw IR, in fp32: the reference, independent of OpenVinoClassifier
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    images = digits.test.images
    raw = compiled(images.numpy().astype(np.float32))[compiled.output("logits")]
    expected = model.logits(images).numpy()
    np.testing.assert_allclose(raw, expected, atol=1e-4 * np.abs(expected).max())
    exported = resolve_model(str(path))
    assert isinstance(exported, OpenVinoClassifier)
    for batch in (images[:1], images):                   # the batch axis is dynamic
        np.testing.assert_allclose(exported.logits(batch), expected[:len(batch)], atol=1e-4 * np.abs(expected).max())
    np.testing.assert_allclose(exported.predict_proba(digits.test), model.predict_proba(digits.test), atol=1e-5)
    assert (exported.predict(digits.test) == model.predict(digits.test)).all()
    assert exported.class_names_ == model.class_names_ and exported.preprocessing_ == model.preprocessing_
    assert exported.task_ == model.task_ and exported.get_params() == model.get_params()


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_openvino_matches_pytorch(name, tmp_path):
    in_child(_matches_pytorch, name, str(tmp_path))


def _export_reports_parity_and_eval_reads_the_ir(folder: str) -> None:
    import contextlib
    import io
    from imgcls.cli import main
    digits, model = _trained("cnn")
    model.save(f"{folder}/run")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["export", f"{folder}/run", "--format", "openvino"]) == 0
    assert re.search(r"^parity with the original \(PyTorch, fp32\) on 5 sample photos .*: top-1 agreement "
                     r"100\.0% \(5/5\), max \|Δp\| \d\.\d\de-\d\d$", out.getvalue(), re.M), out.getvalue()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):           # eval takes the IR as it takes the ONNX file
        assert main(["eval", f"{folder}/run/model.xml", "digits"]) == 0
    assert f"accuracy {model.score(digits.test):.2%}" in out.getvalue(), out.getvalue()


def test_openvino_export_reports_its_parity_and_evaluates(tmp_path):
    in_child(_export_reports_parity_and_eval_reads_the_ir, str(tmp_path))
