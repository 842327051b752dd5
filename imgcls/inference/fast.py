"""Fast by default: networks run through ONNX Runtime where that is measured to be faster.

`imgcls predict`, `eval` and `serve` take `--runtime auto|torch|onnx` (default: $IMGCLS_RUNTIME,
else auto). For a pretrained model or a saved network, auto exports the network once to fp32
ONNX (export.export_model, the same export as `imgcls export`), checks its parity with PyTorch
on the sample photos (parity.parity: top-1 must agree on every one), times a short batch through
both, and runs the faster. A CPU flag would be a guess (Intel AMX and AMD EPYC differ, and so do
networks), so the choice is measured, once per machine (CPU model, thread count, torch and ONNX
Runtime versions), and recorded beside the export.

The cache lives in storage.cache_dir() / "onnx" / KEY, where KEY is a digest of the source
model file's SHA-256 (for a pretrained model: its name and its weights file's SHA-256) with the
imgcls and torch versions that export. Never the export's own bytes: an export embeds its
`exported_at` time. Each entry holds:

- model.onnx, the export;
- entry.json, written last: the source, the export's size and SHA-256, the parity check, any
  export error, and the measured choice per machine.

An entry whose entry.json is missing or unreadable, or whose model.onnx does not match the size
and SHA-256 recorded there (an interrupted export, a truncated copy), is rebuilt. Every file is
written to a temporary name and renamed into place, and building or measuring holds an
exclusive lock on the entry (fcntl, where the platform has it), so concurrent processes wait
for one export instead of corrupting it. kNN and linear models have no network and always run
as they are.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Callable

import torch

from imgcls import __version__
from imgcls.errors import ImgclsError
from imgcls.fastpath import cpu_model, race
from imgcls.inference.onnx_model import OnnxClassifier, _cpu_count
from imgcls.progress import console
from imgcls.storage import atomic_path, cache_dir, sha256_file, write_text

RUNTIMES = ("auto", "torch", "onnx")
RUNTIME_ENV = "IMGCLS_RUNTIME"
RUNTIME_NAMES = {"torch": "PyTorch", "onnx": "ONNX Runtime"}
ENTRY_FILE, EXPORT_FILE, LOCK_FILE = "entry.json", "model.onnx", ".lock"
ENTRY_VERSION = 1
MEASURE_IMAGES = 8          # a short batch: what one request or a few files cost


def default_runtime() -> str:
    """$IMGCLS_RUNTIME if set (auto, torch or onnx), else auto."""
    return check_runtime(os.environ.get(RUNTIME_ENV) or "auto", source=RUNTIME_ENV)


def check_runtime(runtime: str, source: str = "--runtime") -> str:
    if runtime not in RUNTIMES:
        raise ImgclsError(f"{source} {runtime!r}: expected one of {', '.join(RUNTIMES)}")
    return runtime


def entry_dir(source_sha256: str, name: str | None = None) -> Path:
    """The cache entry of a model file with this SHA-256 (name: a pretrained model's name)."""
    material = "|".join([source_sha256, name or "", f"imgcls {__version__}", f"torch {torch.__version__}"])
    return cache_dir() / "onnx" / hashlib.sha256(material.encode()).hexdigest()[:32]


def machine_key() -> str:
    """What a measured choice holds for: this CPU, thread counts, library versions and GPU."""
    import onnxruntime
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return "|".join([cpu_model(), f"torch {torch.__version__} ({torch.get_num_threads()} threads)",
                     f"onnxruntime {onnxruntime.__version__} ({_cpu_count()} threads)", gpu])


def accelerated(load: Callable[[], object], file: Path, runtime: str, label: str, name: str | None = None):
    """The model to predict with: the network loaded by `load` (from `file`, a saved model or a
    pretrained model's weights file), or its cached ONNX export in ONNX Runtime.

    runtime "auto" runs the export where it passed parity and was measured faster here; "onnx"
    runs it regardless of speed (an export that fails is an ImgclsError). label names the model in
    messages; name keys a pretrained model's cache entry.
    """
    model = None
    if not file.is_file():          # a pretrained model writes its weights file on first use
        model = load()
    entry = CacheEntry(entry_dir(sha256_file(file), name))
    machine = machine_key()
    record = entry.read()
    if record is not None:
        settled = _settled(entry, record, runtime, machine, label, load)
        if settled is not None:
            return settled if settled != "torch" else model or load()
    with entry.locked():
        record = entry.read()           # another process may have built it while we waited
        model = model or load()
        original = model
        onnx = entry.try_load(lambda: original) if record is not None and "error" not in record else None
        fresh = record is None or ("error" not in record and onnx is None)    # absent, or no longer opens
        if fresh:
            record = entry.build(model, file, label)
            onnx = entry.try_load(lambda: original) if "error" not in record else None
        if "error" in record:
            if runtime == "onnx":
                raise _cannot_export(label, record)
            if fresh:
                _say(f"{label} runs in PyTorch: its ONNX export failed ({record['error']})")
            return model
        agrees = _agrees(record)
        if not agrees and (fresh or runtime == "onnx"):
            _say(f"{'warning: ' if runtime == 'onnx' else f'{label} runs in PyTorch: '}its ONNX export's top-1 "
                 f"differs from PyTorch's ({record['parity_summary']})")
        if runtime == "auto" and not agrees:
            return model
        if onnx is None:                # build opened it a moment ago; something removed it since
            raise ImgclsError(f"{entry.export_path}: the cached ONNX export does not open; delete {entry.folder}")
        if runtime == "onnx":
            return onnx
        choice = record["decisions"].get(machine, {}).get("runtime") or entry.measure(model, onnx, machine, label)
    return onnx if choice == "onnx" else model


def _settled(entry: CacheEntry, record: dict, runtime: str, machine: str, label: str, load: Callable[[], object]):
    """What a complete record already decides, without building or measuring: an OnnxClassifier,
    "torch", or None (measure first, or the cached export does not load and is rebuilt)."""
    if "error" in record:
        if runtime == "onnx":
            raise _cannot_export(label, record)
        return "torch"
    if not _agrees(record):
        if runtime == "auto":
            return "torch"
        _say(f"warning: {label}'s ONNX export's top-1 differs from PyTorch's ({record['parity_summary']})")
    if runtime == "auto" and machine not in record["decisions"]:
        return None
    if runtime == "auto" and record["decisions"][machine]["runtime"] == "torch":
        return "torch"
    return entry.try_load(load)


def _agrees(record: dict) -> bool:
    """Whether the export's top-1 label equalled PyTorch's on every image of its parity check."""
    return record.get("parity", {}).get("top1_agreement", 0) >= 1


def _cannot_export(label: str, record: dict) -> ImgclsError:
    return ImgclsError(f"--runtime onnx: {label} cannot be exported to ONNX ({record['error']}); "
                       "use --runtime torch")


def _say(message: str) -> None:
    console.print(f"imgcls: {message}", highlight=False, soft_wrap=True)


class ExportedNetwork(OnnxClassifier):
    """A pretrained model or saved network running through its cached ONNX export: predictions
    come from ONNX Runtime; explanations (Grad-CAM and the other attribution maps) and the first
    layer's filters from the original PyTorch network, loaded the first time one is asked for, so
    `serve`'s explain=true and `eval`'s report figures work whichever runtime predicts."""

    capabilities = dataclasses.replace(OnnxClassifier.capabilities, explained_by="network")
    description = "a network run by ONNX Runtime through its cached export"

    def with_original(self, load: Callable[[], object]) -> ExportedNetwork:
        self._load_original, self._original = load, None
        return self

    def original(self):
        """The PyTorch model this was exported from."""
        if self._original is None:
            self._original = self._load_original()
        return self._original

    @property
    def device(self) -> str:
        return self.original().device

    def attribution_network(self):
        return self.original().attribution_network()

    def first_layer_filters(self):
        return self.original().first_layer_filters()

    def __deepcopy__(self, memo: dict) -> ExportedNetwork:
        # The ONNX Runtime session is shared (it may be run from several threads); the network is copied.
        twin = copy.copy(self)
        twin._original = copy.deepcopy(self._original, memo)
        return twin


class CacheEntry:
    """One model's cached ONNX export and what was measured of it (see the module docstring)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.export_path, self.entry_path = folder / EXPORT_FILE, folder / ENTRY_FILE

    def read(self) -> dict | None:
        """The record, if the entry is complete and its export is the file the record describes."""
        try:
            record = json.loads(self.entry_path.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(record, dict) or record.get("entry_version") != ENTRY_VERSION:
            return None
        if "error" in record:
            return record
        try:
            if (self.export_path.stat().st_size != record["export_bytes"]
                    or sha256_file(self.export_path) != record["export_sha256"]):
                return None
        except (OSError, KeyError):
            return None
        return record if isinstance(record.get("decisions"), dict) else None

    def load(self, original: Callable[[], object]) -> ExportedNetwork:
        """The cached export, explaining through `original` (a loader of the PyTorch model)."""
        return ExportedNetwork.load(self.export_path).with_original(original)

    def try_load(self, original: Callable[[], object]) -> ExportedNetwork | None:
        """load(original), or None where ONNX Runtime does not open the file."""
        try:
            return self.load(original)
        except ImgclsError:
            return None

    @contextlib.contextmanager
    def locked(self):
        """An exclusive lock on this entry, held while it is built or measured."""
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            import fcntl
        except ImportError:         # no fcntl (Windows): renames alone keep each file whole
            yield
            return
        with open(self.folder / LOCK_FILE, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def build(self, model, source: Path, label: str) -> dict:
        """Export model, check its parity with PyTorch and record both (or why the export failed)."""
        from imgcls.inference.export import export_model
        from imgcls.inference.parity import check_images, parity
        _say(f"exporting {label} to ONNX for faster inference (once; cached in {self.folder})")
        record = {"entry_version": ENTRY_VERSION, "source": str(source), "source_sha256": sha256_file(source),
                  "imgcls_version": __version__, "torch_version": torch.__version__}
        try:
            with atomic_path(self.export_path) as temporary:      # in place only once its parity is known
                export_model(model, temporary, source=source)
                exported = OnnxClassifier.load(temporary)
                check = parity(model, exported, *check_images(model))
        except OSError:
            raise
        except Exception as exc:      # the exporter raises many kinds; any of them means "run in PyTorch"
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            return self._write({**record, "error": reason})
        record |= {"export_bytes": self.export_path.stat().st_size, "export_sha256": sha256_file(self.export_path),
                   "parity": check.to_dict(), "parity_summary": check.summary(), "decisions": {}}
        return self._write(record)

    def measure(self, model, onnx: OnnxClassifier, machine: str, label: str) -> str:
        """Time a short batch through both runtimes; record and say which is faster ("onnx"/"torch")."""
        from imgcls.inference.parity import check_images
        images, _ = check_images(model)
        images = images.repeat((MEASURE_IMAGES + len(images) - 1) // len(images), 1, 1, 1)[:MEASURE_IMAGES]
        seconds = race({"onnx": lambda: onnx.predict_proba(images), "torch": lambda: model.predict_proba(images)})
        speedup = seconds["torch"] / max(seconds["onnx"], 1e-9)
        choice = "onnx" if speedup > 1 else "torch"
        record = self.read()
        if record is None:          # changed under us (it should not: we hold the lock); measure next time
            return choice
        record["decisions"][machine] = {"runtime": choice, "onnx_vs_torch_speed": round(speedup, 3),
                                                       "seconds": {k: round(v, 6) for k, v in seconds.items()},
                                                       "images": MEASURE_IMAGES}
        _say(f"{label} runs in {RUNTIME_NAMES[choice]} (ONNX Runtime measured at {speedup:.2f}x PyTorch's speed "
             f"on this machine; cached in {self.folder})")
        self._write(record)
        return choice

    def _write(self, record: dict) -> dict:
        """Replace entry.json atomically."""
        write_text(self.entry_path, json.dumps(record, indent=1, sort_keys=True))
        return record


def runtime_name(model) -> str:
    """The runtime a model predicts in, for messages: ONNX Runtime, OpenVINO or PyTorch."""
    return model.runtime if model.capabilities.exported else RUNTIME_NAMES["torch"]
