"""Self-describing saved models: one .safetensors file, tensors plus JSON metadata in its header.

The metadata holds everything needed to rebuild the model without training code: the registry
name and hyperparameters, class names and labels (classes_), what it takes (images and their
preprocessing, or feature vectors), the task, a calibration where one was fitted, metrics,
the imgcls version and, for a model that abstains, its abstention (imgcls.models.abstention).
Loading reads tensors and JSON only; nothing is ever unpickled. Files of every earlier format
version load (tests/fixtures holds some).
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from imgcls import __version__
from imgcls.data.images import Preprocessing
from imgcls.errors import ImgclsError
from imgcls.models.abstention import Abstention
from imgcls.models.calibration import calibration_from_dict
from imgcls.models.inputs import classes_from_json, classes_to_json
from imgcls.models.registry import create_model
from imgcls.run_folder import RunFolder
from imgcls.storage import atomic_path, check_format_version
from imgcls.task import task_from_dict

ABSTENTION_PREFIX = "abstention."      # tensors of the abstention, not of the classifier
FORMAT = "imgcls-model"
# 2: the task (multi-label thresholds) and the threshold hyperparameter; version 1 files load as single-label.
# 3: classes_ (the labels predict returns), inputs (images, or feature vectors of n_features), a
#    null preprocessing for feature models, and the linear model's standardisation; an older
#    imgcls would misread these, so it refuses them. Files without them predict class indices
#    of images, as they always did.
# 4: an abstention ("I don't know": a rejection score and threshold, and for knn its reference
#    vectors as the tensor abstention.reference) and/or a calibration (imgcls.models.calibration)
#    under "calibration". An older imgcls would answer every image, or give uncalibrated
#    probabilities, so models with either are written as version 4 and refused by it; every other
#    model stays version 3. Files without them never abstain and have no calibration.
UNCALIBRATED_FORMAT_VERSION = PLAIN_FORMAT_VERSION = 3
FORMAT_VERSION = 4


def save_model(model, path: str | Path) -> Path:
    """Write model to path (a .safetensors file, or a folder that gets model.safetensors). Atomic."""
    path = Path(path)
    if path.suffix != ".safetensors":
        path = RunFolder(path).model
    path.parent.mkdir(parents=True, exist_ok=True)
    abstention, calibration = model.abstention_, model.calibration_
    metadata = {
        "format": FORMAT, "imgcls_version": __version__,
        "format_version": FORMAT_VERSION if abstention is not None or calibration else PLAIN_FORMAT_VERSION,
        "model": model.model_name, "params": model.get_params(),
        "class_names": model.class_names_, "classes": classes_to_json(model.classes_),
        "inputs": _inputs_to_json(model),
        "preprocessing": model.preprocessing_.to_dict() if model.takes_images else None,
        "task": model.task_.to_dict(),
        "calibration": calibration.to_dict() if calibration else None,
        "metrics": model.metrics_,
        "abstention": abstention.to_dict() if abstention is not None else None,
        "saved_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    tensors = model.state_tensors()
    tensors.update(abstention.tensors() if abstention is not None else {})
    write_safetensors(path, tensors, metadata)
    return path


def write_safetensors(path: Path, tensors: dict, metadata: dict) -> None:
    """Tensors plus JSON metadata (under the header key "imgcls"), written atomically."""
    tensors = {name: t.contiguous() for name, t in tensors.items()}
    with atomic_path(path, sync_folder=True) as temporary:
        save_file(tensors, temporary, metadata={"imgcls": json.dumps(metadata)})


def read_safetensors_metadata(path: Path) -> dict | None:
    """The JSON metadata of a safetensors file written by write_safetensors, or None if it has none."""
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get("imgcls")
    except (SafetensorError, OSError, ValueError) as exc:
        raise ImgclsError(f"{path}: not a safetensors file ({exc})") from exc
    return None if raw is None else json.loads(raw)


def resolve_model_path(path: str | Path) -> Path:
    """A saved model file, or a run folder holding model.safetensors."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = RunFolder(path).model
    if not path.is_file():
        raise ImgclsError(f"{path}: no saved model there (expected a .safetensors file or a run folder)")
    return path


def is_saved_model(path: str | Path) -> bool:
    """Whether path is a model file (.safetensors) or a folder holding model.safetensors."""
    path = Path(path).expanduser()
    return (path.is_file() and path.suffix == ".safetensors") or RunFolder(path).model.is_file()


def read_metadata(path: str | Path) -> dict:
    path = resolve_model_path(path)
    metadata = read_safetensors_metadata(path)
    if metadata is None:
        raise ImgclsError(f"{path}: a safetensors file, but not an imgcls model (no imgcls metadata)")
    if metadata.get("format") != FORMAT:
        raise ImgclsError(f"{path}: not an imgcls model (an {metadata.get('format', 'unknown')} file)")
    check_format_version(path, "model", metadata.get("format_version", 0), FORMAT_VERSION)
    return metadata


def load_model(path: str | Path):
    """Rebuild a classifier from its saved file or run folder."""
    path = resolve_model_path(path)
    metadata = read_metadata(path)
    model = create_model(metadata["model"], **metadata["params"])
    model.class_names_ = list(metadata["class_names"])
    model.classes_ = classes_from_json(metadata.get("classes"), len(model.class_names_))
    inputs = metadata.get("inputs") or {"kind": "images"}      # absent before version 3: images
    if inputs["kind"] == "features":
        model.preprocessing_, model.n_features_in_ = None, int(inputs["n_features"])
        if inputs.get("feature_names") is not None:
            model.feature_names_in_ = np.array(inputs["feature_names"], dtype=object)
    else:
        model.preprocessing_ = Preprocessing.from_dict(metadata["preprocessing"])
        model.n_features_in_ = model.preprocessing_.channels * math.prod(model.preprocessing_.size)
    model.metrics_ = metadata.get("metrics", {})
    model.task_ = task_from_dict(metadata.get("task"))     # absent before tasks existed: single-label
    model.calibration_ = calibration_from_dict(metadata.get("calibration"))   # absent before version 4: none
    tensors = load_file(str(path))
    own = {name: tensors.pop(name) for name in list(tensors) if name.startswith(ABSTENTION_PREFIX)}
    model.abstention_ = Abstention.from_dict(metadata.get("abstention"), own)   # absent before version 4: none
    model.load_state_tensors(tensors)
    return model


def _inputs_to_json(model) -> dict:
    """What the model takes: images (decoded by its preprocessing), or feature vectors."""
    if model.takes_images:
        return {"kind": "images"}
    names = getattr(model, "feature_names_in_", None)
    return {"kind": "features", "n_features": int(model.n_features_in_),
            "feature_names": None if names is None else [str(n) for n in names]}


def update_metrics(path: str | Path, metrics: dict) -> None:
    """Record evaluation metrics in a saved model (rewrites the file atomically)."""
    model = load_model(path)
    model.metrics_ = metrics
    save_model(model, resolve_model_path(path))
