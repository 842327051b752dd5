"""Exported ONNX models (imgcls.inference.export) run by ONNX Runtime, behind the classifier contract.

An exported file carries its class names, preprocessing, model name and task (single-label, or
multi-label with its thresholds), so `imgcls predict`, `imgcls eval` and serving take a .onnx file
wherever they take a saved model. The graph ends in logits; the task's activation (softmax or one
sigmoid per label) is applied here, as the PyTorch model applies it.

Calibration travels too: temperature scaling is inside the graph (its "logits" output is the
calibrated logits / T), and a sigmoid or isotonic calibration, which the graph does not hold, is
recorded in the metadata and applied here to the graph's probabilities, as the saved model applies it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from imgcls.data.images import Preprocessing
from imgcls.errors import ImgclsError
from imgcls.models.abstention import Abstention
from imgcls.models.base import Capabilities, Classifier
from imgcls.models.calibration import calibration_from_dict
from imgcls.runtime import with_tta
from imgcls.storage import check_format_version
from imgcls.task import task_from_dict

# The file format, written by imgcls.inference.export and read here: the graph's input and output
# names, and the metadata_props key that holds the JSON metadata. Version 2 marks multi-label
# exports, whose logits need a sigmoid: an imgcls that reads only version 1 (and would apply a
# softmax) refuses them. Version 3 marks what an older reader would silently ignore: a model
# that abstains (metadata "abstention"), which it would let answer every image, or a sigmoid or
# isotonic calibration that the graph cannot hold and the reader must apply. Other single-label
# exports stay version 1 (temperature scaling is inside their graph); files without a task are
# single-label.
FORMAT_VERSION = 3
CALIBRATED_FORMAT_VERSION = ABSTAINING_FORMAT_VERSION = 3
MULTI_LABEL_FORMAT_VERSION = 2
SINGLE_LABEL_FORMAT_VERSION = 1
METADATA_KEY = "imgcls"
INPUT_NAME, OUTPUT_NAME = "images", "logits"


class OnnxClassifier(Classifier):
    """The prediction half of the contract (predict / predict_proba / predict_with_proba / score)
    for an exported .onnx file. It is not fitted or saved: it is already a file; export again instead."""

    description = "an exported ONNX model, run by ONNX Runtime"
    capabilities = Capabilities(exported=True)
    runtime = "ONNX Runtime"        # what runs the file

    def __init__(self, session, metadata: dict, path: Path, batch_size: int = 64):
        self.session_, self.metadata_, self.path, self.batch_size = session, metadata, path, batch_size
        self._logit_scale = 1.0     # without_calibration's copy undoes the temperature inside the graph
        self.model_name = metadata["model"]
        self.class_names_ = list(metadata["class_names"])
        self.preprocessing_ = Preprocessing.from_dict(metadata["preprocessing"])
        self.metrics_ = metadata.get("metrics", {})
        self.task_ = task_from_dict(metadata.get("task"))
        self.calibration_ = calibration_from_dict(metadata.get("calibration"))
        self.quantization = metadata.get("quantization")
        self.abstention_ = Abstention.from_dict(metadata.get("abstention"))    # inline reference (to_json)

    @classmethod
    def load(cls, path: str | Path, threads: int | None = None) -> OnnxClassifier:
        """Open an exported model with ONNX Runtime's CPU provider on all of this process's CPUs."""
        import onnxruntime as ort
        path = Path(path).expanduser()
        if not path.is_file():
            raise ImgclsError(f"{path}: no such ONNX file")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or _cpu_count()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:   # onnxruntime's own exception types are not public
            raise ImgclsError(f"{path}: not a readable ONNX model ({str(exc).splitlines()[0]})") from exc
        raw = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        if raw is None:
            raise ImgclsError(f"{path}: an ONNX model, but not one exported by imgcls (no imgcls metadata)")
        metadata = json.loads(raw)
        check_format_version(path, "export", metadata.get("format_version", 0), FORMAT_VERSION)
        return cls(session, metadata, path)

    def get_params(self, deep: bool = True) -> dict:
        return dict(self.metadata_.get("params", {}))

    def fit(self, *args, **kwargs):
        raise ImgclsError(f"{self.path} is an exported model and cannot be trained; train the original model "
                          "and export it again")

    def save(self, path):
        raise ImgclsError(f"{self.path} is an exported model; copy the file instead of saving it")

    def logits(self, images: torch.Tensor) -> np.ndarray:
        """Float32 logits for uint8 images (N, C, H, W), in batches."""
        outputs = [self.session_.run([OUTPUT_NAME], {INPUT_NAME: images[i:i + self.batch_size].numpy()
                                                     .astype(np.float32)})[0]
                   for i in range(0, len(images), self.batch_size)]
        return np.concatenate(outputs) if outputs else np.empty((0, len(self.class_names_)), np.float32)

    @property
    def has_logits(self) -> bool:
        return True

    def calibrated_logits(self, images: torch.Tensor) -> torch.Tensor:
        """The graph's logits: calibrated already where the model had temperature scaling (the
        division by T is in the graph); the uncalibrated ones for without_calibration's copy."""
        return torch.from_numpy(self.logits(images)) * self._logit_scale

    def without_calibration(self) -> OnnxClassifier:
        """A copy predicting uncalibrated probabilities: the graph's logits times the temperature it
        divides them by, where it holds one (a sigmoid or isotonic calibration is simply not applied)."""
        raw = super().without_calibration()
        if self.calibration_ is not None and self.calibration_.in_logits:
            raw._logit_scale = self.calibration_.temperature
        return raw

    def _logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.calibrated_logits(images)

    @property
    def parameter_count(self) -> None:
        return None         # the weights are constants inside the graph, not parameters imgcls knows

    def _predict_proba(self, images: torch.Tensor) -> torch.Tensor:
        # The original NeuralClassifier's tta travels in the exported params, so both predict alike.
        tta = self.get_params().get("tta", "none")
        return with_tta(self.calibrated_logits, images, tta, self.task_.activation)


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
