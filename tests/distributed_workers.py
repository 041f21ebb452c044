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


def wrap_a_graph_model_then_return_a_large_result(local_rank: int, port: int,
                                                  queue: object) -> None:
    """Both processes wrap a model holding a sparse graph buffer (as FREEDOM does) in RecBole's
    trainer (DDP), then rank 0 puts 1 MB on the queue (a pipe holds 64 KB): it exits only once
    the parent reads it."""
    import torch
    import torch.distributed as dist

    from recbole_vlm4rec import compat
    from recbole_vlm4rec.compat_distributed import init_device

    compat.install()
    config = {"gpu_id": "", "local_rank": local_rank, "nproc": 2, "world_size": 2,
              "ip": "localhost", "port": port, "offset": 0, "dist_timeout": 60, "model": "G"}
    init_device(config)

    class GraphModel(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embedding = torch.nn.Parameter(torch.randn(4, 2))
            self.register_buffer("graph", torch.eye(4).to_sparse_csr())

    from recbole.trainer.trainer import AbstractTrainer

    trainer = AbstractTrainer(config, GraphModel())
    synced = trainer.model.embedding.detach().clone()
    everyone = [torch.zeros_like(synced) for _ in range(2)]
    dist.all_gather(everyone, synced)
    assert torch.equal(everyone[0], everyone[1])  # DDP gave rank 1 rank 0's weights
    if local_rank == 0:
        queue.put(b"x" * 2**20)  # type: ignore[attr-defined]
    dist.barrier()
