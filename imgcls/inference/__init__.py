"""Inference: saved models applied to image files, models found by path or pretrained name, and
models exported for fast inference (ONNX, TorchScript)."""

from imgcls.inference.export import export_model, quantize_onnx
from imgcls.inference.onnx_model import OnnxClassifier
from imgcls.inference.predict import find_images, predict_files
from imgcls.inference.resolve import resolve_model

__all__ = ["OnnxClassifier", "export_model", "find_images", "predict_files", "quantize_onnx", "resolve_model"]
