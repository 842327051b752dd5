"""Test-set accounting: every evaluation on a test split is recorded in its run folder.

Looking at test accuracy more than once and acting on it turns the test split into a validation
split; `test_evaluations.json` makes the count visible, so a report can say how honest its number is.
"""

from __future__ import annotations

import json
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path

from imgcls.run_folder import RunFolder
from imgcls.storage import write_text


def record_test_evaluation(out_dir: str | Path, model: str, command: str | None = None) -> int:
    """Append {timestamp, command, model} to out_dir/test_evaluations.json; return how many are recorded."""
    path = RunFolder(out_dir).test_evaluations
    records = test_evaluations(out_dir)
    records.append({"timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "command": command or shlex.join(["imgcls", *sys.argv[1:]]), "model": model})
    write_text(path, json.dumps(records, indent=2))
    return len(records)


def test_evaluations(out_dir: str | Path) -> list[dict]:
    """The test evaluations recorded in out_dir so far (oldest first)."""
    path = RunFolder(out_dir).test_evaluations
    return json.loads(path.read_text()) if path.is_file() else []
