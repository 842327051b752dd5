"""Inference: saved models applied to image files, models found by path or pretrained name, and
models exported for fast inference (ONNX, OpenVINO IR) and checked against their originals."""

from imgcls.inference.export import export_model, quantize_onnx
from imgcls.inference.onnx_model import OnnxClassifier
from imgcls.inference.openvino_model import OpenVinoClassifier
from imgcls.inference.parity import Parity, check_images, parity
from imgcls.inference.predict import find_images, predict_files
from imgcls.inference.resolve import resolve_model

__all__ = ["OnnxClassifier", "OpenVinoClassifier", "Parity", "check_images", "export_model", "find_images", "parity",
           "predict_files", "quantize_onnx", "resolve_model"]
