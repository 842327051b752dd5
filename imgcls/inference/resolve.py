"""What a model argument names: a saved model, an exported .onnx file or a pretrained model.

It sits in inference, above models, because an exported file is opened with inference's
OnnxClassifier; the commands that take a model (predict, eval, export, serve, index) all ask here.
"""

from __future__ import annotations

from pathlib import Path

from imgcls.errors import ImgclsError
from imgcls.inference.onnx_model import OnnxClassifier
from imgcls.models.artifact import load_model
from imgcls.models.pretrained import DEFAULT_MODEL, PRETRAINED, pretrained_model


def resolve_model(spec: str | None):
    """A saved model (file or run folder), an exported .onnx file, or a pretrained model name;
    None means the default."""
    spec = spec or DEFAULT_MODEL
    if spec in PRETRAINED:
        return pretrained_model(spec)
    path = Path(spec).expanduser()
    if path.suffix.lower() == ".onnx":
        return OnnxClassifier.load(path)
    if path.exists():
        model = load_model(path)
        if not model.takes_images:
            raise ImgclsError(f"{spec}: this model was fitted on feature vectors ({model.n_features_in_} values "
                              "each), not images, so it cannot classify image files; use it from Python "
                              "(imgcls.models.load_model) on vectors like the ones it learned from")
        return model
    raise ImgclsError(f"{spec}: neither a saved model (file or run folder) nor a pretrained model "
                      f"({', '.join(PRETRAINED)})")
