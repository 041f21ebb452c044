"""Functions tests/test_distributed.py spawns: importable by a spawned process without the test
module's imports (each spawned process imports only torch and compat_distributed)."""

from __future__ import annotations

import time


def rank_1_never_arrives(local_rank: int, port: int, timeout_s: int) -> None:
    """Rank 1 stays alive but never reaches the barrier rank 0 waits at."""
    import torch.distributed as dist

    from recbole_vlm4rec.compat_distributed import init_device

    init_device({"gpu_id": "", "local_rank": local_rank, "nproc": 2, "world_size": 2,
                 "ip": "localhost", "port": port, "offset": 0, "dist_timeout": timeout_s})
    if local_rank == 1:
        time.sleep(600)
    dist.barrier()


def rank_0_returns_a_large_result(local_rank: int, queue: object) -> None:
    """Rank 0 puts 1 MB on the queue (a pipe holds 64 KB): it exits only once the parent reads."""
    if local_rank == 0:
        queue.put(b"x" * 2**20)  # type: ignore[attr-defined]
