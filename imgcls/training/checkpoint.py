"""Training checkpoints: safetensors (no pickle), written atomically, checked when read.

A checkpoint holds the network, the EMA network, the optimiser state (flattened to tensors),
and the loop's counters and history as JSON metadata. Every random draw of an epoch derives
from (seed, epoch), so resuming from the end of an epoch replays the rest exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save_file

from imgcls.errors import ImgclsError
from imgcls.storage import atomic_path

FORMAT = "imgcls-checkpoint-1"


def save_checkpoint(path: Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Write tensors + JSON meta to path atomically: a reader sees the old file or the new one."""
    # safetensors refuses tensors that share memory; clone the few that do (tied weights).
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    with atomic_path(path, sync_folder=True) as temporary:
        save_file(tensors, temporary, metadata={"format": FORMAT, "meta": json.dumps(meta),
                                                "tensor_count": str(len(tensors))})


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors and meta of a checkpoint, read in one go: the file is opened once, so a writer
    replacing it meanwhile (mid-epoch checkpoints come often) can never pair one file's header
    with another's contents."""
    try:
        data = Path(path).read_bytes()
        size = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + size]).get("__metadata__") or {}
        tensors = load(data)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ImgclsError(f"{path}: unreadable checkpoint ({exc})") from exc
    if header.get("format") != FORMAT or int(header.get("tensor_count", -1)) != len(tensors):
        raise ImgclsError(f"{path}: not a complete imgcls checkpoint")
    return tensors, json.loads(header["meta"])


def flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], list]:
    """An optimiser state_dict as flat tensors 'opt.<param>.<key>' plus JSON-able param groups."""
    tensors = {}
    for param_id, entries in state["state"].items():
        for key, value in entries.items():
            tensors[f"opt.{param_id}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return tensors, state["param_groups"]


def unflatten_optimizer(tensors: dict[str, torch.Tensor], param_groups: list) -> dict:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith("opt."):
            _, param_id, key = name.split(".", 2)
            state.setdefault(int(param_id), {})[key] = value
    return {"state": state, "param_groups": param_groups}


def prefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v for k, v in tensors.items()}


def unprefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    start = len(prefix) + 1
    return {k[start:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
