"""``vlm4rec run --nproc N``: one run as N processes of RecBole's data-parallel training.

As RecBole's own ``run_recbole(nproc=...)``, without importing ``recbole.quick_start``: the
launcher spawns ``nproc`` processes on this machine (``torch.multiprocessing.spawn``), process
``local_rank`` of this machine is rank ``group_offset + local_rank`` of ``world_size`` over all
machines, and they meet at ``tcp://ip:port``. Each process builds the whole run (dataset, graph,
model) and trains on its share of every batch (RecBole's ``DistributedSampler``: a training batch
of ``train_batch_size`` rows is ``train_batch_size / world_size`` rows in each process, gradients
averaged by DDP), so one epoch is still one pass over the training interactions in as many
optimiser steps as with one process. Backend: gloo on CPU, nccl on GPUs (one GPU per process).
compat_distributed.py holds the RecBole patches (CPU, evaluation of every user once, timeouts).

Checked here, once, before anything is spawned: the config (every key and value, as one process
does), that the model trains (one-pass models are refused), that a GPU machine has a GPU per
process. Rank 0 writes the results JSON and returns the result; a process that fails ends the
others (``spawn`` terminates them), and a process waiting on a dead peer times out.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any, Sequence

from recbole_vlm4rec.compat_distributed import (DEFAULT_TIMEOUT_S, DistributedError,
                                                require_gpu_per_process)
from recbole_vlm4rec.data.registry import DEFAULT_DATASET


@dataclass
class Processes:
    """Where this machine's processes sit in the run (RecBole's names)."""

    nproc: int = 1  # processes on this machine
    world_size: int = -1  # processes over all machines; -1: nproc (one machine)
    ip: str = "localhost"  # where rank 0 listens
    port: int | None = None  # None: a free port on this machine (one machine only)
    group_offset: int = 0  # rank of this machine's first process
    timeout_s: int = DEFAULT_TIMEOUT_S  # a collective waiting longer fails

    @property
    def world(self) -> int:
        return self.nproc if self.world_size in (-1, 0, None) else int(self.world_size)

    def distributed(self) -> bool:
        return self.nproc > 1 or self.world > 1

    def check(self) -> None:
        """DistributedError naming the flag, for settings that cannot form a run."""
        if self.nproc < 1:
            raise DistributedError(f"--nproc {self.nproc}: at least 1 process")
        if self.world < self.nproc:
            raise DistributedError(f"--world_size {self.world} is less than --nproc {self.nproc}")
        if not 0 <= self.group_offset <= self.world - self.nproc:
            raise DistributedError(
                f"--group_offset {self.group_offset}: this machine's {self.nproc} processes are "
                f"ranks offset..offset+nproc-1 of --world_size {self.world}")
        if self.world > self.nproc and self.port is None:
            raise DistributedError("a run over several machines needs --ip (rank 0's machine) "
                                   "and the same --port on every machine")
        if self.timeout_s < 1:
            raise DistributedError(f"--dist_timeout {self.timeout_s}: at least 1 second")


class ProcessFailed(RuntimeError):
    """A spawned process failed (the others were stopped); the message holds its traceback."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("localhost", 0))
        return int(probe.getsockname()[1])


def run_processes(model: str, dataset: str = DEFAULT_DATASET, config_files: Sequence[str] = (),
                  overrides: dict[str, Any] | None = None,
                  processes: Processes | None = None, write_results: bool = True) -> Any:
    """:func:`runner.run` with ``processes``: in this process when there is one, else spawned.

    Returns rank 0's RunResult, or None on a machine that does not hold rank 0."""
    from recbole_vlm4rec.run.runner import run

    processes = processes or Processes()
    processes.check()
    overrides = dict(overrides or {})
    if not processes.distributed():
        return run(model, dataset, config_files, overrides, write_results=write_results)
    check_model_and_devices(model, dataset, config_files, overrides, processes)
    import torch.multiprocessing as mp

    settings = {"nproc": processes.nproc, "world_size": processes.world, "ip": processes.ip,
                "port": processes.port or free_port(), "offset": processes.group_offset,
                "dist_timeout": processes.timeout_s}
    threads = max(1, (os.cpu_count() or 1) // processes.nproc)  # no oversubscribed CPUs
    queue = mp.get_context("spawn").SimpleQueue()
    results = spawn(_process, processes.nproc, model, dataset, list(config_files),
                    {**overrides, **settings}, threads, write_results, queue, queue=queue)
    return results[0] if results else None


def spawn(function: Any, nproc: int, *args: Any, queue: Any = None) -> list[Any]:
    """``function(local_rank, *args)`` in ``nproc`` spawned processes; what they put on
    ``queue``. ProcessFailed when one fails (torch's spawn then terminates the others, so nobody
    waits on the dead one). The queue is read while they run: a process writing a result larger
    than a pipe's buffer (a RunResult with per-user metrics) would otherwise never exit."""
    import torch.multiprocessing as mp
    from torch.multiprocessing.spawn import ProcessException

    received: list[Any] = []
    try:
        context = mp.start_processes(function, args=args, nprocs=nproc, join=False,
                                     start_method="spawn")
        done = False
        while not done:
            while queue is not None and not queue.empty():
                received.append(queue.get())
            done = context.join(timeout=0.2)
    except ProcessException as error:
        raise ProcessFailed(f"process {error.error_index} of this machine failed, the others "
                            f"were stopped: {str(error).strip()}") from None
    while queue is not None and not queue.empty():
        received.append(queue.get())
    return received


def check_model_and_devices(model: str, dataset: str, config_files: Sequence[str],
                            overrides: dict[str, Any], processes: Processes) -> None:
    """The config checks of one run (errors as one process gives them), declared features built
    once here rather than by every process, then DistributedError for a one-pass model or too few
    GPUs."""
    from recbole.utils import ModelType

    from recbole_vlm4rec.run.protocol import prepare_run

    config = prepare_run(model, dataset, config_files, overrides).config
    if config["MODEL_TYPE"] == ModelType.TRADITIONAL:
        raise DistributedError(
            f"{model} is a one-pass model (RecBole's TraditionalTrainer: one epoch, no gradient "
            "step): there is nothing to share between processes, and a pass split over them "
            f"would see part of the data; run {model} without --nproc")
    if config["device"].type == "cuda":
        require_gpu_per_process(processes.nproc, config["gpu_id"])


def _process(local_rank: int, model: str, dataset: str, config_files: list[str],
             overrides: dict[str, Any], threads: int, write_results: bool, queue: Any) -> None:
    """One spawned process: the run with its ``local_rank``; rank 0 returns the result."""
    import torch
    import torch.distributed as dist

    from recbole_vlm4rec import compat
    from recbole_vlm4rec.run.runner import run

    compat.install()
    torch.set_num_threads(threads)
    rank = overrides["offset"] + local_rank
    try:
        result = run(model, dataset, config_files, {**overrides, "local_rank": local_rank},
                     write_results=write_results and rank == 0)
        if rank == 0:
            queue.put(result)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
