"""Shared fixtures: tiny images written into tmp_path, so every test builds its own data in milliseconds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="session")
def fast_path_cache(tmp_path_factory) -> Path:
    """One cache of measured bf16 choices for the whole run (and the processes it starts), so each
    network is timed once and every run of it trains in the same precision."""
    return tmp_path_factory.mktemp("imgcls-cache")


@pytest.fixture(autouse=True)
def quiet_and_isolated(monkeypatch, tmp_path, fast_path_cache):
    """No progress bars, and named datasets never come from (or go to) the user's own cache.
    Networks predict in PyTorch (IMGCLS_RUNTIME=torch) unless a test asks for auto or onnx: the
    default would export each test's network to ONNX first (seconds for EfficientNet-Lite0), which
    tests/test_fast_inference.py tests on its own."""
    monkeypatch.setenv("IMGCLS_PROGRESS", "0")
    monkeypatch.setenv("IMGCLS_RUNTIME", "torch")
    monkeypatch.setenv("IMGCLS_DATA", str(tmp_path / "cache"))
    monkeypatch.setenv("IMGCLS_MODELS", str(tmp_path / "models"))
    monkeypatch.setenv("IMGCLS_CACHE", str(fast_path_cache))


def _colour(label: int, index: int) -> tuple[int, int, int]:
    return (40 * label, 10 * index, 200)


@pytest.fixture
def colour():
    """colour(label, index): encodes the class in red (label * 40) and the image's index in green."""
    return _colour


@pytest.fixture
def write_image():
    """write_image(path, array or PIL image, **save_options) -> path; parent folders are created."""
    def write(path: Path, image, **options) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not isinstance(image, Image.Image):
            image = Image.fromarray(np.asarray(image))
        image.save(path, **options)
        return path
    return write


@pytest.fixture
def class_tree(write_image):
    """class_tree(root, {class: count}) writes 8x8 PNGs whose colour encodes the class (see `colour`).

    The last image of every class goes into a nested sub-folder, which must count for that class.
    """
    def make(root: Path, counts: dict[str, int], size: tuple[int, int] = (8, 8)) -> Path:
        for label, (name, count) in enumerate(sorted(counts.items())):
            for i in range(count):
                folder = root / name / (Path("nested", "deeper") if i == count - 1 else Path())
                write_image(folder / f"{name}{i}.png", np.full((*size, 3), _colour(label, i), dtype=np.uint8))
        return root
    return make


@pytest.fixture
def stop_after():
    """stop_after(epoch): a training hook that simulates a crash right after that epoch's checkpoint."""
    from imgcls.training.trainer import Hook

    class StopAfter(Hook):
        def __init__(self, epoch):
            self.epoch = epoch

        def on_epoch_end(self, trainer, record):
            if trainer.state.epoch == self.epoch:
                raise KeyboardInterrupt
    return StopAfter


def _quadrants(n: int, seed: int = 0, noise: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """8x8 images whose labels a, b, c each light one quadrant; any set of them (or none) per image."""
    rng = np.random.default_rng(seed)
    y = (rng.random((n, 3)) < 0.4).astype(np.uint8)
    x = rng.integers(0, noise, (n, 8, 8))
    x[:, :4, :4] += 150 * y[:, 0, None, None]
    x[:, 4:, :4] += 150 * y[:, 1, None, None]
    x[:, :4, 4:] += 150 * y[:, 2, None, None]
    return x.astype(np.uint8), y


@pytest.fixture(scope="session")
def quadrants():
    """quadrants(n, seed=0, noise=60) -> (images (N, 8, 8) uint8, multi-hot labels (N, 3)): a small
    multi-label dataset whose labels a, b, c each light one quadrant of the image."""
    return _quadrants


@pytest.fixture(scope="session")
def quadrant_model(quadrants):
    """A linear multi-label model trained on 600 quadrant images, its thresholds chosen on validation."""
    from imgcls.data.load import DataOptions, from_arrays
    from imgcls.models import create_model
    x, y = quadrants(600)
    splits = from_arrays(x, y, class_names=["a", "b", "c"], options=DataOptions(val_fraction=0.15, test_fraction=0.2))
    return create_model("linear", epochs=20).fit(splits.train, validation=splits.val)


@pytest.fixture(scope="module")
def digits():
    """scikit-learn's 8x8 digits, split as imgcls splits them."""
    from imgcls.data import load_dataset
    return load_dataset("digits")


@pytest.fixture(scope="module")
def digit_pngs(tmp_path_factory, digits):
    """The first 20 test digits as PNG files in one folder."""
    folder = tmp_path_factory.mktemp("pngs")
    for i in range(20):
        Image.fromarray(digits.test.images[i, 0].numpy()).save(folder / f"digit{i:02d}.png")
    return folder
