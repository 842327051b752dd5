"""Exported OpenVINO IR models (imgcls export --format openvino) run by the OpenVINO runtime,
behind the same prediction contract as an exported ONNX model.

The IR's rt_info["imgcls"] holds the same JSON metadata as an ONNX export (class names,
preprocessing, task, provenance). OpenVINO runs on its CPU plugin in fp32: on CPUs with bf16
instructions its default inference precision is bf16, which would not predict like the original.
openvino is an optional extra (pip install 'imgcls[openvino]').
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from imgcls.errors import ImgclsError
from imgcls.inference.onnx_model import FORMAT_VERSION, OUTPUT_NAME, OnnxClassifier, _cpu_count
from imgcls.storage import check_format_version

METADATA_RT_KEY = "imgcls"


def import_openvino():
    """The openvino module, or a one-line error naming the extra to install."""
    try:
        import openvino
    except ImportError:
        raise ImgclsError("OpenVINO IR needs the openvino package: pip install 'imgcls[openvino]'") from None
    return openvino


class OpenVinoClassifier(OnnxClassifier):
    """An exported .xml (+ .bin) OpenVINO IR model: predict / predict_proba / score, not fit or save."""

    description = "an exported OpenVINO IR model, run by the OpenVINO runtime"
    runtime = "OpenVINO"

    @classmethod
    def load(cls, path: str | Path, threads: int | None = None) -> OpenVinoClassifier:
        """Compile an exported IR for the CPU, in fp32, on all of this process's CPUs."""
        ov = import_openvino()
        path = Path(path).expanduser()
        if not path.is_file():
            raise ImgclsError(f"{path}: no such OpenVINO IR file")
        core = ov.Core()
        try:
            model = core.read_model(str(path))
        except RuntimeError as exc:
            raise ImgclsError(f"{path}: not a readable OpenVINO IR model ({str(exc).splitlines()[0]})") from exc
        if not model.has_rt_info([METADATA_RT_KEY]):
            raise ImgclsError(f"{path}: an OpenVINO model, but not one exported by imgcls (no imgcls metadata)")
        metadata = json.loads(model.get_rt_info([METADATA_RT_KEY]).astype(str))
        check_format_version(path, "export", metadata.get("format_version", 0), FORMAT_VERSION)
        compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                     "INFERENCE_NUM_THREADS": threads or _cpu_count()})
        return cls(compiled, metadata, path)

    def logits(self, images: torch.Tensor) -> np.ndarray:
        """Float32 logits for uint8 images (N, C, H, W), in batches."""
        # An infer request per call: a compiled model's own default request is not safe to share
        # between threads (the server predicts from several).
        request, output = self.session_.create_infer_request(), self.session_.output(OUTPUT_NAME)
        outputs = [request.infer(images[i:i + self.batch_size].numpy().astype(np.float32))[output].copy()
                   for i in range(0, len(images), self.batch_size)]
        return np.concatenate(outputs) if outputs else np.empty((0, len(self.class_names_)), np.float32)
