"""imgcls.training.memory: giving the allocator's free pages back to the system."""

from __future__ import annotations

import platform
from pathlib import Path

import pytest

from imgcls.training.memory import release_free_memory


def resident_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc" or not Path("/proc/self/status").exists(),
                    reason="malloc_trim is glibc's, and RSS is read from /proc")
def test_freed_pages_held_between_live_blocks_go_back_to_the_system():
    blocks = [bytearray(b"x" * 65_536) for _ in range(2_000)]     # 128 MB of heap blocks (below mmap's threshold)
    del blocks[::2]                                                # 64 MB freed between live blocks: glibc keeps them
    held = resident_mb()
    assert release_free_memory() is True
    assert held - resident_mb() > 32                              # most of the 64 MB is handed back
    assert len(blocks) == 1_000                                    # the live blocks are untouched
