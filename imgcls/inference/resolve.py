"""What a model argument names: a saved model, an exported .onnx or OpenVINO .xml file, or a
pretrained model, and which runtime runs it (imgcls.inference.fast: a network through its cached
ONNX export where that is faster).

It sits in inference, above models, because an exported file is opened with inference's
OnnxClassifier or OpenVinoClassifier; the commands that take a model (predict, eval, export,
serve, index) all ask here.
"""

from __future__ import annotations

from pathlib import Path

from imgcls.errors import ImgclsError
from imgcls.inference.fast import accelerated, check_runtime
from imgcls.inference.onnx_model import OnnxClassifier
from imgcls.inference.openvino_model import OpenVinoClassifier
from imgcls.models.artifact import load_model, read_metadata, resolve_model_path
from imgcls.models.pretrained import DEFAULT_MODEL, PRETRAINED, model_cache, pretrained_model
from imgcls.models.registry import model_class
from imgcls.run_folder import RunFolder


def resolve_model(spec: str | None, runtime: str | None = None):
    """A saved model (file or run folder), an exported .onnx or OpenVINO .xml file, or a pretrained
    model name; None means the default. TorchScript files (no longer written) are refused by name.

    runtime: None runs a model as it is (a network in PyTorch, an exported file in its runtime);
    "auto" runs a pretrained model or saved network through its cached ONNX export where that
    passed parity and is measured faster (imgcls.inference.fast); "torch" and "onnx" choose.
    """
    spec = spec or DEFAULT_MODEL
    if runtime is not None:
        check_runtime(runtime)
    if spec in PRETRAINED:
        if runtime in (None, "torch"):
            return pretrained_model(spec)
        cached = RunFolder(model_cache() / spec).model
        return accelerated(lambda: pretrained_model(spec), cached, runtime, spec, name=spec)
    path = Path(spec).expanduser()
    suffix = path.suffix.lower()
    own_runtime = {".onnx": "onnx", ".xml": "openvino"}.get(suffix)
    if own_runtime and runtime not in (None, "auto", own_runtime):
        raise ImgclsError(f"--runtime {runtime}: {spec} is an exported model, which runs in "
                          f"{'ONNX Runtime' if own_runtime == 'onnx' else 'OpenVINO'} only; drop --runtime")
    if suffix == ".onnx":
        return OnnxClassifier.load(path)
    if suffix == ".xml":
        return OpenVinoClassifier.load(path)
    if suffix == ".torchscript":
        raise ImgclsError(f"{spec}: TorchScript files are not loaded (TorchScript is deprecated in torch 2.14, "
                          "and imgcls no longer exports it); export the original model to ONNX instead: "
                          "imgcls export MODEL")
    if path.exists():
        if runtime in (None, "torch"):
            return _image_model(spec)
        name = read_metadata(path)["model"]
        if not model_class(name).capabilities.network:
            if runtime == "onnx":
                raise ImgclsError(f"--runtime onnx: {spec} is a {name} model, which has no network to export "
                                  "(it runs in imgcls as it is); drop --runtime onnx")
            return _image_model(spec)
        return accelerated(lambda: _image_model(spec), resolve_model_path(path), runtime, str(spec))
    raise ImgclsError(f"{spec}: neither a saved model (file or run folder) nor a pretrained model "
                      f"({', '.join(PRETRAINED)})")


def _image_model(spec: str):
    """The saved model at spec, which must classify images."""
    model = load_model(spec)
    if not model.takes_images:
        raise ImgclsError(f"{spec}: this model was fitted on feature vectors ({model.n_features_in_} values "
                          "each), not images, so it cannot classify image files; use it from Python "
                          "(imgcls.models.load_model) on vectors like the ones it learned from")
    return model
