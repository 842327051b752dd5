"""torchrun support: join the process group that torchrun's environment describes."""

from __future__ import annotations

import os
import time

import torch
import torch.distributed as dist


def setup() -> int:
    """Initialise the process group under torchrun (gloo on CPU, NCCL on GPUs); return this rank."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return dist.get_rank() if dist.is_initialized() else 0
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend)
    # Each process gets an equal share of the cores, not all of them each.
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    return dist.get_rank()


def leave_together(timeout_s: float = 600.0) -> None:
    """End a successful run: every rank waits for the others (rank 0 is still writing the reports),
    destroys its process group, then waits until all have destroyed theirs before exiting.

    The last wait is the fix for a rank dying with SIGABRT ("terminate called without an active
    exception") at exit: a process that leaves while a peer's gloo group is still alive can abort
    in gloo's teardown. Reproduced by delaying one rank's destroy_process_group after a barrier
    (1 abort in 4 runs), never with this wait. The wait goes through the rendezvous store, which
    torchrun's agent keeps alive after the group is gone."""
    if not dist.is_initialized():
        return
    dist.barrier()
    world = dist.get_world_size()
    store = dist.distributed_c10d._get_default_store()
    dist.destroy_process_group()
    store.add("imgcls/left", 1)
    deadline = time.monotonic() + timeout_s
    while store.add("imgcls/left", 0) < world and time.monotonic() < deadline:
        time.sleep(0.02)


def teardown() -> None:
    """After a failure: leave at once (torchrun stops the other ranks)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def my_slice(count: int, rank: int, world: int) -> tuple[int, int]:
    """(start, stop) of rank's contiguous share of count items; the shares tile 0..count."""
    return count * rank // world, count * (rank + 1) // world


def gather_rows(mine: torch.Tensor, count: int, device: torch.device) -> torch.Tensor:
    """Every rank's rows (its my_slice of count) stacked in rank order, on every rank: a collective.
    Shares differ by at most one row, so each is padded to the largest for all_gather."""
    world = dist.get_world_size()
    widest = -(-count // world)
    padded = torch.zeros(widest, mine.shape[1], dtype=mine.dtype, device=device)
    padded[:len(mine)] = mine.to(device)
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    sizes = [stop - start for start, stop in (my_slice(count, r, world) for r in range(world))]
    return torch.cat([part[:size] for part, size in zip(parts, sizes)]).cpu()


def broadcast_buffers(net: torch.nn.Module) -> None:
    """Rank 0's buffers (batch-norm running statistics) to every rank: each rank's own last
    batches moved its copy."""
    for buffer in net.buffers():
        dist.broadcast(buffer, src=0)
