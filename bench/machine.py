"""What every benchmark prints first: the CPU (model and the flags that decide fast paths), the
thread count and the library versions, so a figure always says what it was measured on."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

FAST_PATH_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8")


def cpu_model() -> str:
    text = _cpuinfo()
    found = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return found.group(1).strip() if found else (platform.processor() or platform.machine())


def cpu_flags() -> list[str]:
    """The fast-path flags this CPU reports (from /proc/cpuinfo), in a fixed order."""
    found = re.search(r"^flags\s*:\s*(.+)$", _cpuinfo(), re.MULTILINE)
    flags = set(found.group(1).split()) if found else set()
    return [f for f in FAST_PATH_FLAGS if f in flags]


def describe() -> dict:
    import torch
    return {"cpu": cpu_model(), "flags": cpu_flags(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def banner() -> str:
    d = describe()
    return (f"CPU {d['cpu']} ({d['cores']} cores; flags {' '.join(d['flags']) or 'none of ' + '/'.join(FAST_PATH_FLAGS)}), "
            f"torch {d['torch']} ({d['torch_threads']} threads, {d['cpu_capability']}), Python {d['python']}")


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
