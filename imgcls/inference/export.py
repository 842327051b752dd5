"""Neural classifiers exported for fast inference: ONNX (optionally int8) and OpenVINO IR.

The whole ImageNetwork is exported, normalisation included, so an exported file takes the same
input as the PyTorch model: float32 images N x C x H x W with pixels in 0..255. It is
self-describing: class names, preprocessing, model name, task (with a multi-label model's
thresholds), abstention (with a knn score's reference vectors inline) and provenance travel
inside it as JSON (ONNX: metadata_props["imgcls"]; OpenVINO: the model's rt_info["imgcls"]), so
prediction from an exported file never re-declares them. The
network outputs logits; the task says which activation turns them into probabilities. A model's
temperature scaling is part of the graph (its logits come out divided by T); a sigmoid or
isotonic calibration is in the metadata, for the reader to apply (imgcls.inference.onnx_model).

Provenance is what the weights really are: ImageNet-pretrained weights that imgcls converted and
never trained carry no training settings (a pretrained model's hyperparameters are only the
defaults it was built with); a model trained here carries the settings it was trained with and
the split it was evaluated on. Where the model came from a file, its SHA-256 is recorded.

int8 is ONNX Runtime's static post-training quantisation: QDQ format, int8 weights per output
channel, uint8 activations whose ranges come from calibration images (MinMax). On x86 ONNX
Runtime runs uint8 x int8 products with VNNI/AMX instructions, which is where the speed comes from.

OpenVINO IR (model.xml + model.bin) is converted from the fp32 ONNX export by OpenVINO's ONNX
frontend and kept in fp32 (OpenVINO would compress weights to fp16 by default).

TorchScript export was removed: torch 2.14 deprecates TorchScript, and no imgcls command ever
loaded the files it wrote. ONNX is the portable format (ONNX Runtime runs it from Python, C++,
C#, Java, JavaScript and on mobile); torch.export is PyTorch's own successor.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import tempfile
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from imgcls import __version__
from imgcls.data.dataset import ImageDataset, as_image_tensor
from imgcls.data.stream import image_batches
from imgcls.errors import ImgclsError
from imgcls.progress import console
from imgcls.run_folder import RunFolder
from imgcls.storage import atomic_path, sha256_file
from imgcls.inference.onnx_model import (ABSTAINING_FORMAT_VERSION, CALIBRATED_FORMAT_VERSION, INPUT_NAME,
                                         METADATA_KEY, MULTI_LABEL_FORMAT_VERSION, OUTPUT_NAME,
                                         SINGLE_LABEL_FORMAT_VERSION)

FORMATS = ("onnx", "openvino")
SUFFIXES = {"onnx": ".onnx", "openvino": ".xml"}
TORCHSCRIPT_REMOVED = ("TorchScript export was removed (torch 2.14 deprecates TorchScript, and imgcls never loaded "
                       "it); export to ONNX (--format onnx: ONNX Runtime from Python, C++, C#, Java or mobile) "
                       "or OpenVINO IR (--format openvino)")
# The torch.export-based exporter writes opset 18 natively; lower opsets go through a version
# converter that cannot convert every operator (Pad, for the TensorFlow-style padded convolutions).
DEFAULT_OPSET = 18
CALIBRATION_IMAGES = 200
CALIBRATION_BATCH = 64      # streamed calibration images decoded at a time


def export_metadata(model, source: str | Path | None = None) -> dict:
    """What an exported file carries about its model: enough to predict from it alone, and where
    its weights came from (source: the model file or pretrained name it was loaded from)."""
    task, abstention = model.task_, model.abstention_
    calibration = model.calibration_
    outside_graph = calibration is not None and not calibration.in_logits
    version = (MULTI_LABEL_FORMAT_VERSION if task.multi_label else
               ABSTAINING_FORMAT_VERSION if abstention is not None else
               CALIBRATED_FORMAT_VERSION if outside_graph else SINGLE_LABEL_FORMAT_VERSION)
    origin = provenance(model, source)
    params = model.get_params() if origin["weights"] == "trained" else prediction_params(model)
    return {"format": "imgcls-export", "format_version": version, "imgcls_version": __version__,
            "model": model.model_name, "params": params, "class_names": list(model.class_names_),
            "preprocessing": model.preprocessing_.to_dict(), "metrics": model.metrics_,
            "task": task.to_dict(), "provenance": origin,
            **({"abstention": abstention.to_json()} if abstention is not None else {}),
            "calibration": ({**calibration.to_dict(), "in_graph": calibration.in_logits}
                            if calibration is not None else None),
            "input": f"{INPUT_NAME}: float32 N x C x H x W, pixels 0..255", "output": OUTPUT_NAME}


def is_pretrained(model) -> bool:
    """Whether model holds converted pretrained weights that imgcls never trained: the pretrained
    conversion records the weights' origin, and every run that trains records its test evaluation."""
    metrics = model.metrics_
    return "weights" in metrics and "evaluated_on" not in metrics


def provenance(model, source: str | Path | None = None) -> dict:
    """Where the exported weights came from: pretrained (which weights) or trained with imgcls
    (its training settings, and the split its metrics were measured on)."""
    metrics = model.metrics_
    if is_pretrained(model):
        origin = {"weights": "pretrained", "pretrained_weights": metrics["weights"],
                  "trained_by_imgcls": False}
    else:
        origin = {"weights": "trained", "trained_by_imgcls": True, "training_params": model.get_params(),
                  "evaluated_on": metrics.get("evaluated_on")}
    if source is not None:
        path = Path(source).expanduser()
        path = RunFolder(path).model if path.is_dir() else path
        origin["source"] = str(source)
        if path.is_file():
            origin["source_sha256"] = sha256_file(path)
    origin["exported_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return origin


def prediction_params(model) -> dict:
    """The hyperparameters that shape predictions (the network's options, tta, threshold), without
    the training settings: what a model that was never trained here honestly has."""
    from imgcls.training.config import TrainingConfig
    training = {f.name for f in dataclasses.fields(TrainingConfig)}
    return {k: v for k, v in model.get_params().items() if k not in training}


def export_model(model, path: str | Path, format: str = "onnx", *, int8: bool = False, calibration=None,
                 calibration_images: int = CALIBRATION_IMAGES, opset: int = DEFAULT_OPSET,
                 source: str | Path | None = None) -> Path:
    """Write the network of a neural classifier to path (ONNX, or OpenVINO IR: path.xml beside
    path.bin) and return path. source (the model file or pretrained name) goes into the provenance.

    int8=True (ONNX only) writes a statically quantised model instead of the fp32 one, calibrated
    on up to `calibration_images` of `calibration` (an ImageDataset or uint8 images N x C x H x W
    at the model's preprocessing size, chosen at random with a fixed seed).
    """
    if format == "torchscript":
        raise ImgclsError(TORCHSCRIPT_REMOVED)
    net = _network(model)
    if format not in FORMATS:
        raise ImgclsError(f"unknown export format {format!r}; valid: {', '.join(FORMATS)}")
    if int8 and format != "onnx":
        raise ImgclsError("int8 export is for ONNX (ONNX Runtime quantisation); use format='onnx'")
    if int8 and calibration is None:
        raise ImgclsError("int8 export needs calibration images (an ImageDataset or uint8 images)")
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    prep = model.preprocessing_
    example = torch.randint(0, 256, (2, prep.channels, *prep.size)).float()
    metadata = export_metadata(model, source)
    if format == "onnx" and not int8:
        return _export_onnx(net, example, metadata, path, opset)
    images = calibration_subset(model, calibration, calibration_images) if int8 else None
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = _export_onnx(net, example, metadata, Path(tmp) / "fp32.onnx", opset)
        return quantize_onnx(fp32, path, images) if int8 else _export_openvino(fp32, metadata, path)


def quantize_onnx(fp32_path: str | Path, int8_path: str | Path, images: torch.Tensor | np.ndarray,
                  batch_size: int = 16) -> Path:
    """Static int8 quantisation of an exported fp32 ONNX model, calibrated on uint8 images N x C x H x W."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    images = np.ascontiguousarray(np.asarray(images, dtype=np.float32))
    if images.ndim != 4 or not len(images):
        raise ImgclsError(f"calibration needs images N x C x H x W, got shape {images.shape}")

    class Batches(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(images[i:i + batch_size] for i in range(0, len(images), batch_size))

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {INPUT_NAME: batch}

    fp32_path, int8_path = Path(fp32_path), Path(int8_path)
    metadata = json.loads(_onnx_metadata(onnx.load(str(fp32_path), load_external_data=False)))
    with tempfile.TemporaryDirectory() as tmp:
        # Shape inference first, so the quantiser knows every tensor's type and rank.
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared))
        quantize_static(str(prepared), str(Path(tmp) / "int8.onnx"), Batches(), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibration_providers=["CPUExecutionProvider"])
        quantized = onnx.load(str(Path(tmp) / "int8.onnx"))
    metadata["quantization"] = {"scheme": "int8 static, QDQ, per-channel int8 weights, uint8 activations",
                                "calibration_images": len(images)}
    _set_onnx_metadata(quantized, json.dumps(metadata))
    with atomic_path(int8_path) as temporary:
        onnx.save(quantized, str(temporary))
    return int8_path


def calibration_subset(model, calibration, count: int = CALIBRATION_IMAGES) -> torch.Tensor:
    """Up to `count` uint8 images from an ImageDataset or image array, checked against the model's input.
    From a streamed dataset only the chosen files are decoded (by image_batches' workers); one that
    no longer decodes is left out."""
    images = calibration.images if isinstance(calibration, ImageDataset) else as_image_tensor(calibration)
    prep = model.preprocessing_
    if tuple(images.shape[1:]) != (prep.channels, *prep.size):
        raise ImgclsError(f"calibration images of shape {tuple(images.shape[1:])} do not fit the model's input "
                          f"{(prep.channels, *prep.size)} (channels, height, width)")
    if count < 1 or not len(images):
        raise ImgclsError("int8 calibration needs at least one image")
    if len(images) > count:
        # A random subset: datasets are often ordered by class.
        chosen = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:count]
        images = images[chosen] if isinstance(images, torch.Tensor) else images.subset(chosen)
    if isinstance(images, torch.Tensor):
        return images
    batches = list(image_batches(images, CALIBRATION_BATCH, "decoding calibration images"))
    unreadable = [reason for _, _, failed in batches for _, reason in failed]
    if len(unreadable) == len(images):
        raise ImgclsError(f"none of the {len(images)} calibration images drawn decodes any more ({unreadable[0]})")
    if unreadable:
        console.print(f"[yellow]warning:[/] {len(unreadable)} calibration image(s) no longer decode; "
                      f"calibrating on the other {len(images) - len(unreadable)}", highlight=False)
    return torch.cat([decoded for _, decoded, _ in batches])


def check_exportable(model) -> None:
    """Raise ImgclsError unless model is a fitted neural classifier (it has a PyTorch network)."""
    if model.capabilities.exported:
        raise ImgclsError(f"{model.path} is already an exported model; export the original model")
    name = model.model_name or type(model).__name__
    if not model.capabilities.network:
        raise ImgclsError(f"{name} models cannot be exported: export needs a neural network "
                          "(kNN and linear models have none)")
    if not model.is_fitted:
        raise ImgclsError(f"this {name} model is not fitted yet; nothing to export")


def _network(model) -> torch.nn.Module:
    check_exportable(model)
    # A copy, in fp32 and the default memory format, whatever prediction did to the original.
    net = copy.deepcopy(model.net_).cpu().float().to(memory_format=torch.contiguous_format).eval()
    calibration = model.calibration_
    return TemperatureScaled(net, calibration.temperature) if calibration is not None and calibration.in_logits \
        else net


class TemperatureScaled(torch.nn.Module):
    """A network whose logits are divided by a fitted temperature: temperature scaling in the graph."""

    def __init__(self, net: torch.nn.Module, temperature: float):
        super().__init__()
        self.net, self.temperature = net, float(temperature)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) / self.temperature


def _export_onnx(net: torch.nn.Module, example: torch.Tensor, metadata: dict, path: Path, opset: int) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(net, (example,), None, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                    dynamic_shapes=({0: torch.export.Dim("batch")},), opset_version=opset,
                                    dynamo=True, external_data=False, verbose=False)
    produced = program.model.opset_imports.get("")
    if produced != opset:
        raise ImgclsError(f"the ONNX exporter could not write opset {opset} for this network "
                          f"(it wrote {produced}); export with opset {produced}")
    program.model.metadata_props[METADATA_KEY] = json.dumps(metadata)
    with atomic_path(path) as temporary:
        program.save(str(temporary), external_data=False)
    return path


def _export_openvino(onnx_path: Path, metadata: dict, path: Path) -> Path:
    """OpenVINO IR converted from the fp32 ONNX export (OpenVINO's ONNX frontend), weights kept fp32."""
    from imgcls.inference.openvino_model import METADATA_RT_KEY, import_openvino
    ov = import_openvino()
    if path.suffix != ".xml":
        raise ImgclsError(f"{path}: an OpenVINO IR export is written as NAME.xml (with NAME.bin beside it)")
    converted = ov.convert_model(str(onnx_path))
    converted.set_rt_info(json.dumps(metadata), [METADATA_RT_KEY])
    ov.save_model(converted, str(path), compress_to_fp16=False)
    return path


def _onnx_metadata(proto) -> str:
    for prop in proto.metadata_props:
        if prop.key == METADATA_KEY:
            return prop.value
    raise ImgclsError("an ONNX model without imgcls metadata")


def _set_onnx_metadata(proto, value: str) -> None:
    for prop in list(proto.metadata_props):
        if prop.key == METADATA_KEY:
            proto.metadata_props.remove(prop)
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, value
