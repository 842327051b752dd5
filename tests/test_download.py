"""Named-dataset downloads over real HTTP (a server on loopback), with checksum verification."""

import gzip
import hashlib
import http.server
import threading
from dataclasses import replace
from functools import partial

import numpy as np
import pytest

from imgcls.data import named
from imgcls.data.load import DataOptions, load_dataset
from imgcls.errors import ImgclsError


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return gzip.compress(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def mirror(tmp_path):
    """A folder of tiny MNIST-format files served over HTTP on 127.0.0.1."""
    served = tmp_path / "served"
    served.mkdir()
    rng = np.random.default_rng(0)
    arrays = {"train-images-idx3-ubyte.gz": rng.integers(0, 256, (40, 28, 28)),
              "train-labels-idx1-ubyte.gz": np.arange(40) % 10,
              "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (20, 28, 28)),
              "t10k-labels-idx1-ubyte.gz": np.arange(20) % 10}
    files = []
    for name, array in arrays.items():
        data = idx_bytes(array)
        (served / name).write_bytes(data)
        files.append((name, hashlib.md5(data).hexdigest()))
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", tuple(files)
    server.shutdown()


def test_download_verifies_and_caches(mirror, tmp_path, monkeypatch):
    url, files = mirror
    monkeypatch.setenv("IMGCLS_DATA", str(tmp_path / "cache"))
    fake = replace(named.NAMED_DATASETS["mnist"], mirrors=("http://127.0.0.1:9/", url), files=files, system_dirs=())
    monkeypatch.setitem(named.NAMED_DATASETS, "mnist", fake)
    splits = load_dataset("mnist", DataOptions(val_fraction=0.25))
    assert splits.summary() == {"train": 30, "val": 10, "test": 20}
    assert (tmp_path / "cache" / "mnist" / "train-images-idx3-ubyte.gz").is_file()
    # Second load comes from the cache, even with the mirror gone.
    monkeypatch.setitem(named.NAMED_DATASETS, "mnist", replace(fake, mirrors=("http://127.0.0.1:9/",)))
    assert len(load_dataset("mnist").test) == 20


def test_checksum_mismatch_is_a_clear_error(mirror, tmp_path, monkeypatch):
    url, files = mirror
    monkeypatch.setenv("IMGCLS_DATA", str(tmp_path / "cache"))
    wrong = tuple((name, "0" * 32) for name, _ in files)
    monkeypatch.setitem(named.NAMED_DATASETS, "mnist",
                        replace(named.NAMED_DATASETS["mnist"], mirrors=(url,), files=wrong, system_dirs=()))
    with pytest.raises(ImgclsError, match="checksum mismatch.*download it by hand"):
        load_dataset("mnist")
    assert not list((tmp_path / "cache" / "mnist").glob("*.gz"))   # nothing unverified is kept
