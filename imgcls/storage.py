"""Files imgcls writes and reads back, the rules written once.

- `atomic_path` / `write_text`: a file is written under a temporary name in its own folder, flushed
  to disk (fsync) and renamed over the old one, so a reader (or a run resumed after a crash) sees
  the old file or the new one, never half of one. The new file gets the permissions any new file
  gets (0666 less the umask), not mkstemp's private 0600.
- `sha256_file` / `file_digest`: a file's digest, read a megabyte at a time.
- `cache_dir`: where imgcls keeps what it measured, built or downloaded once.
- `check_format_version`: the refusal of a file written in a newer format than this imgcls reads.

It sits with the foundations (of imgcls it imports only the version and imgcls.errors), so every
layer can use it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

from imgcls import __version__
from imgcls.errors import ImgclsError

CACHE_ENV = "IMGCLS_CACHE"


@contextlib.contextmanager
def atomic_path(path: str | Path, *, sync_folder: bool = False) -> Iterator[Path]:
    """A new empty file beside path for the block to write (by name: any library's writer will
    do); when the block ends, the file is fsynced and renamed over path. If the block raises, the
    temporary file is removed and path is left as it was.

    sync_folder: also fsync the folder after the rename, so that the rename itself outlives a
    crash of the machine (for files a user is told were saved: models, checkpoints)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f"{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    # Created with mode 0666, which the umask trims as it does for any new file. Some writers
    # (safetensors) replace the name with a file of their own, mode 0600; it gets this mode back.
    os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        mode = temporary.stat().st_mode & 0o777
        yield temporary
        os.chmod(temporary, mode)
        _fsync(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    if sync_folder:
        _fsync_folder(path.parent)


def write_text(path: str | Path, text: str, *, sync_folder: bool = False) -> Path:
    """text (UTF-8) as the new content of path, replaced atomically (see atomic_path)."""
    path = Path(path)
    with atomic_path(path, sync_folder=sync_folder) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return path


def _fsync(path: Path) -> None:
    # Windows commits only a handle opened for writing; POSIX takes any descriptor.
    fd = os.open(path, os.O_RDONLY if os.name == "posix" else os.O_RDWR)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_folder(folder: Path) -> None:
    if os.name != "posix":          # Windows cannot open a folder as a file; its renames are journalled
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass                         # some file systems refuse fsync on a folder; the file itself is synced
    finally:
        os.close(fd)


def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    """The hex digest of a file's bytes, read a megabyte at a time (never the whole file at once)."""
    digest = hashlib.new(algorithm, usedforsecurity=False)
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_file(path: str | Path) -> str:
    """The file's SHA-256 (hex), read a megabyte at a time."""
    return file_digest(path, "sha256")


def cache_dir() -> Path:
    """Where imgcls keeps what it measured, built or downloaded once: $IMGCLS_CACHE, else
    $XDG_CACHE_HOME/imgcls, else ~/.cache/imgcls. Below it: fast_paths.json, onnx/, datasets/
    (unless $IMGCLS_DATA names another folder) and models/ (unless $IMGCLS_MODELS does)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "imgcls"


def check_format_version(path: str | Path, what: str, version, readable: int) -> None:
    """Refuse a file whose format version is newer than `readable`, the newest this imgcls reads
    (or is no version at all); `what` names the format in the message: model, export, index, shards."""
    if type(version) is not int:
        raise ImgclsError(f"{path}: {what} format version {version!r} is not one this imgcls reads")
    if version > readable:
        raise ImgclsError(f"{path}: {what} format {version} is newer than this imgcls ({__version__}) reads "
                          f"(up to {readable}); upgrade imgcls")
