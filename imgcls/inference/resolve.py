"""What a model argument names: a saved model, an exported .onnx or OpenVINO .xml file, or a
pretrained model.

It sits in inference, above models, because an exported file is opened with inference's
OnnxClassifier or OpenVinoClassifier; the commands that take a model (predict, eval, export,
serve, index) all ask here.
"""

from __future__ import annotations

from pathlib import Path

from imgcls.errors import ImgclsError
from imgcls.inference.onnx_model import OnnxClassifier
from imgcls.inference.openvino_model import OpenVinoClassifier
from imgcls.models.artifact import load_model
from imgcls.models.pretrained import DEFAULT_MODEL, PRETRAINED, pretrained_model


def resolve_model(spec: str | None):
    """A saved model (file or run folder), an exported .onnx or OpenVINO .xml file, or a pretrained
    model name; None means the default. TorchScript files (no longer written) are refused by name."""
    spec = spec or DEFAULT_MODEL
    if spec in PRETRAINED:
        return pretrained_model(spec)
    path = Path(spec).expanduser()
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return OnnxClassifier.load(path)
    if suffix == ".xml":
        return OpenVinoClassifier.load(path)
    if suffix == ".torchscript":
        raise ImgclsError(f"{spec}: TorchScript files are not loaded (TorchScript is deprecated in torch 2.14, "
                          "and imgcls no longer exports it); export the original model to ONNX instead: "
                          "imgcls export MODEL")
    if path.exists():
        model = load_model(path)
        if not model.takes_images:
            raise ImgclsError(f"{spec}: this model was fitted on feature vectors ({model.n_features_in_} values "
                              "each), not images, so it cannot classify image files; use it from Python "
                              "(imgcls.models.load_model) on vectors like the ones it learned from")
        return model
    raise ImgclsError(f"{spec}: neither a saved model (file or run folder) nor a pretrained model "
                      f"({', '.join(PRETRAINED)})")
