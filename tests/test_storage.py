"""imgcls.storage: atomic replacement (fsync, a normal file's permissions), file digests and the cache
folder rule, with the writers and readers that use them."""

from __future__ import annotations

import hashlib
import json
import os
import sys

import pytest
import torch

from imgcls.errors import ImgclsError
from imgcls.storage import atomic_path, cache_dir, check_format_version, file_digest, sha256_file, write_text
from imgcls.training import checkpoint as ckpt

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/fd")


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.fixture
def synced(monkeypatch):
    """The paths os.fsync was called on, in order (read back through /proc/self/fd)."""
    calls = []
    real = os.fsync

    def fsync(fd):
        calls.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real(fd)
    monkeypatch.setattr(os, "fsync", fsync)
    return calls


def test_a_file_is_replaced_whole_with_a_normal_files_permissions(tmp_path):
    path = tmp_path / "sub" / "data.json"
    write_text(path, "old")
    with atomic_path(path) as temporary:
        assert temporary.parent == path.parent and temporary != path
        temporary.write_text("new")
        assert path.read_text() == "old"                 # nothing is replaced before the block ends
    assert path.read_text() == "new"
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask()
    assert [p.name for p in path.parent.iterdir()] == ["data.json"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(path) as temporary:
            temporary.write_text("half of it")
            raise RuntimeError("the writer failed")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


@linux_only
def test_the_file_is_synced_before_the_rename_and_the_folder_after(tmp_path, synced):
    path = tmp_path / "a.txt"
    write_text(path, "x")
    assert len(synced) == 1 and synced[0].startswith(str(tmp_path / "a.txt.")) and synced[0].endswith(".tmp")
    synced.clear()
    write_text(path, "y", sync_folder=True)
    assert len(synced) == 2 and synced[1] == str(tmp_path)


@linux_only
def test_checkpoints_and_models_are_synced_and_readable_by_others(tmp_path, synced, digits):
    from imgcls.models import create_model
    path = tmp_path / "checkpoints" / "last.safetensors"
    ckpt.save_checkpoint(path, {"w": torch.arange(4.0)}, {"epoch": 1})
    model = create_model("knn", k=3).fit(digits.train).save(tmp_path / "run")
    for saved in (path, model):
        assert saved.stat().st_mode & 0o777 == 0o666 & ~umask()      # not mkstemp's private 0600
        assert str(saved.parent) in synced and any(p.startswith(f"{saved}.") for p in synced)


def test_digests_equal_hashlibs_of_the_whole_file(tmp_path):
    path = tmp_path / "blob"
    data = os.urandom(3 * (1 << 20) + 123)          # more than one megabyte-sized read, and a scrap
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
    assert file_digest(path, "md5") == hashlib.md5(data).hexdigest()
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert sha256_file(empty) == hashlib.sha256(b"").hexdigest()


def test_one_cache_folder_rule_for_fast_paths_onnx_datasets_and_models(tmp_path, monkeypatch):
    from imgcls.data.named import cache_root
    from imgcls.fastpath import cache_path
    from imgcls.inference.fast import entry_dir
    from imgcls.models.pretrained import model_cache
    for name in ("IMGCLS_CACHE", "XDG_CACHE_HOME", "IMGCLS_DATA", "IMGCLS_MODELS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "imgcls"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "imgcls"
    monkeypatch.setenv("IMGCLS_CACHE", str(tmp_path / "mine"))
    root = tmp_path / "mine"
    assert cache_dir() == root
    assert (cache_path(), entry_dir("0" * 64).parent, cache_root(), model_cache()) == (
        root / "fast_paths.json", root / "onnx", root / "datasets", root / "models")
    monkeypatch.setenv("IMGCLS_DATA", str(tmp_path / "data"))         # the documented overrides still win
    monkeypatch.setenv("IMGCLS_MODELS", str(tmp_path / "models"))
    assert (cache_root(), model_cache()) == (tmp_path / "data", tmp_path / "models")


def test_a_format_newer_than_this_imgcls_reads_is_refused_alike_everywhere(tmp_path):
    from imgcls.data.shards import FORMAT, MANIFEST, read_manifest
    from imgcls.models.artifact import write_safetensors
    from imgcls.similarity.index import FORMAT as INDEX_FORMAT
    from imgcls.similarity.index import ImageIndex
    check_format_version("f", "model", 3, 3)                      # the newest one read, and older ones, pass
    check_format_version("f", "model", 0, 3)
    with pytest.raises(ImgclsError, match=r"^f: model format 4 is newer than this imgcls \(.+\) reads \(up to 3\); "
                                          "upgrade imgcls$"):
        check_format_version("f", "model", 4, 3)
    with pytest.raises(ImgclsError, match="format version '2' is not one this imgcls reads"):
        check_format_version("f", "model", "2", 3)
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / MANIFEST).write_text(json.dumps({"format": FORMAT, "version": 99}))
    with pytest.raises(ImgclsError, match="shards format 99 is newer than this imgcls"):
        read_manifest(tmp_path / "shards")
    index = tmp_path / "index.safetensors"
    write_safetensors(index, {"vectors": torch.zeros(1, 2)}, {"format": INDEX_FORMAT, "format_version": 99})
    with pytest.raises(ImgclsError, match="index format 99 is newer than this imgcls"):
        ImageIndex.load(index)
