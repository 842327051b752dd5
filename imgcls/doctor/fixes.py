"""The doctor's one fix, on request only (--quarantine): moving unreadable files and the redundant
byte-identical copies out of a dataset into a folder, relative paths kept, every move logged.
Labels are never changed and near-duplicates never moved."""

from __future__ import annotations

import json
import shutil
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from imgcls.data.dataset import DatasetSplits
from imgcls.data.load import dataset_files
from imgcls.doctor.findings import DoctorReport
from imgcls.errors import ImgclsError
from imgcls.storage import write_text


@dataclass
class Move:
    source: Path
    target: Path
    reason: str

    def to_dict(self) -> dict:
        return {"from": str(self.source), "to": str(self.target), "reason": self.reason}


def check_quarantine(source: str | Path, folder: str | Path) -> None:
    """Refuse --quarantine where it cannot work: not files, or a folder inside the dataset itself."""
    files = dataset_files(source, flat_ok=True, missing_ok=True) if not isinstance(source, DatasetSplits) else None
    if files is None:
        raise ImgclsError(f"--quarantine moves files; {source} is not a dataset of image files")
    folder = Path(folder).expanduser().resolve()
    if Path(source).is_dir() and folder.is_relative_to(files.root.resolve()):
        raise ImgclsError(f"--quarantine {folder}: choose a folder outside the dataset folder {files.root}")


def quarantine_plan(report: DoctorReport, folder: str | Path) -> list[Move]:
    """Unreadable files, and every byte-identical copy but one (a train copy, else the first by path)."""
    by_name = {r.name: r for r in report.files or []}
    moves = {i.path: i.reason for i in report.unreadable}
    for group in report.duplicates:
        copies = defaultdict(list)
        for ref in group.images:
            copies[by_name[ref.name].sha256].append(ref)
        for same in copies.values():
            keep = min(same, key=lambda ref: (ref.split != "train", ref.name))
            # a manifest may list one file twice: that is one file, never a copy of itself
            moves.update({ref.name: f"byte-identical copy of {keep.name}" for ref in same if ref.name != keep.name})
    folder = Path(folder).expanduser().resolve()
    return [Move(by_name[name].path.resolve(), folder / _inside(name), reason)
            for name, reason in sorted(moves.items()) if by_name[name].path.exists()]


def _inside(name: str) -> Path:
    path = Path(name)
    if path.is_absolute() or ".." in path.parts:
        raise ImgclsError(f"--quarantine: {name} lies outside the dataset folder; move it by hand")
    return path


def quarantine(report: DoctorReport, folder: str | Path) -> list[Move]:
    """Move the planned files into folder (relative paths kept), logged in folder/quarantine.json."""
    moves = quarantine_plan(report, folder)
    taken = [str(m.target) for m in moves if m.target.exists()]
    if taken:
        raise ImgclsError(f"--quarantine: {len(taken)} file(s) already there, nothing moved: {', '.join(taken[:3])}")
    log = Path(folder).expanduser() / "quarantine.json"
    history = json.loads(log.read_text())["moves"] if log.exists() else []
    for move in moves:
        move.target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(move.source, move.target)
        history.append(move.to_dict())
        write_text(log, json.dumps({"moves": history}, indent=2))   # after every move: the log never lags
    return moves
