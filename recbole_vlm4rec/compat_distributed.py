"""The RecBole 1.2.1 patches for its torch.distributed path, and the trainer's checkpoint name
they share with one-process runs (part of compat.py's "one place").

``compat.install()`` calls :func:`install`; ``compat.ProtocolConfig._init_device`` calls
:func:`init_device` for a config that names a ``local_rank`` (a process that run/distributed.py
spawned). Nothing else in the package patches RecBole's distributed code. What RecBole 1.2.1 does
and why each patch exists:

* ``Config._init_device`` hard-codes ``backend="nccl"``, ``torch.cuda.set_device`` and an assert
  on ``gpu_id``: no run on CPU. :func:`init_device` picks gloo on CPU and nccl on GPUs, says
  clearly when there are fewer GPUs than processes, and gives every collective a timeout
  (``dist_timeout`` seconds), so a process waiting on a dead peer fails instead of hanging.
* ``AbstractTrainer.__init__`` wraps the model as ``DistributedDataParallel(device_ids=[rank])``,
  which torch refuses for a CPU module; on CPU ``device_ids`` must be None. Parameters that get no
  gradient in a step are RecBole's own concern: each step adds ``0 * sum(parameters)`` to the
  loss (``sync_grad_loss``), so every parameter gets a gradient and DDP needs no
  ``find_unused_parameters``. A model without a trainable parameter is refused by name. Sparse
  buffers (graphs) are left out of DDP's broadcast, which cannot send them.
* The evaluation loaders get a ``DistributedSampler`` that pads the user list (the first users
  repeated until it divides by the number of processes) and ``Trainer._map_reduce`` averages the
  processes' means weighted by ``len(batch)``, which is 4 (the batch tuple) for every full-ranking
  batch, then rounds: users counted twice and wrong weights, so metrics differ from one process.
  Here evaluation is not split: every process ranks every user exactly once (the same model,
  since DDP keeps the weights equal), so the metrics, per-user records and tie counts are one
  process's, and early stopping agrees across processes.
* Each trainer names its checkpoint after its own clock, to the second: two runs started in the
  same second in one folder (two seeds launched together) overwrite each other's best model and
  each reports the other's test metrics; two processes of one run can disagree by a second and
  load different files. The name here adds microseconds and the process id (every run); all of a
  run's processes use rank 0's name and wait for its last checkpoint to be written before any
  evaluates it (a barrier at the end of ``fit``).
* ``ensure_dir`` (the log folders, the checkpoint folder) checks, then creates: processes started
  together race between the two and one dies on FileExistsError (seen in a full test run); here
  it is ``os.makedirs(..., exist_ok=True)``.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from typing import Any, Callable

from recbole_vlm4rec.method_patch import replaces

DEFAULT_TIMEOUT_S = 1800


class DistributedError(RuntimeError):
    """A distributed run this machine or this model cannot do; the message says what to change."""


def distributed(config: Any) -> bool:
    return not config["single_spec"]


def require_gpu_per_process(nproc: int, gpu_id: Any) -> None:
    """DistributedError naming the ``--gpu_id`` to pass when fewer GPUs are visible than
    processes (checked by the launcher before spawning and by each process)."""
    import torch

    visible = torch.cuda.device_count()
    if nproc > visible:
        raise DistributedError(
            f"--nproc {nproc} needs one GPU per process and gpu_id={gpu_id!r} makes {visible} "
            f"visible (it needs {nproc} GPUs): pass --gpu_id=" +
            ",".join(map(str, range(nproc))) + " or a smaller --nproc")


def init_device(config_dict: dict[str, Any]) -> None:
    """RecBole's ``_init_device`` for a spawned process: gloo on CPU, nccl on GPUs."""
    import torch
    import torch.distributed as dist

    gpu_id = config_dict["gpu_id"]
    gpu_id = ",".join(map(str, gpu_id)) if isinstance(gpu_id, (tuple, list)) else str(gpu_id)
    config_dict["gpu_id"] = gpu_id
    os.environ["CUDA_VISIBLE_DEVICES"] = gpu_id
    local_rank, nproc = int(config_dict["local_rank"]), int(config_dict["nproc"])
    cuda = bool(gpu_id) and torch.cuda.is_available()
    if cuda:
        require_gpu_per_process(nproc, gpu_id)
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        timeout = int(config_dict["dist_timeout"] if "dist_timeout" in config_dict
                      else DEFAULT_TIMEOUT_S)  # written so run/accounting.py knows the key
        dist.init_process_group(
            backend="nccl" if cuda else "gloo",
            rank=local_rank + int(config_dict["offset"] or 0),
            world_size=int(config_dict["world_size"]),
            init_method=f"tcp://{config_dict['ip']}:{config_dict['port']}",
            timeout=timedelta(seconds=timeout))
    config_dict["device"] = device
    config_dict["single_spec"] = False
    if local_rank != 0:  # as RecBole: one process per machine logs and writes checkpoints
        config_dict["state"] = "error"
        config_dict["show_progress"] = False
        config_dict["verbose"] = False


def install() -> None:
    _folders_made_once_by_any_process()
    _ddp_on_cpu_too()
    _evaluate_every_user_in_every_process()
    _one_checkpoint_name()


def _folders_made_once_by_any_process() -> None:
    """RecBole's ``ensure_dir`` checks then creates (``log/``, ``log/<model>``, the checkpoint
    folder): processes started together race between the two and one dies on FileExistsError."""
    import recbole.trainer.trainer
    import recbole.utils
    import recbole.utils.logger
    import recbole.utils.utils

    def ensure_dir(dir_path: str) -> None:
        os.makedirs(dir_path, exist_ok=True)

    for module in (recbole.utils.utils, recbole.utils, recbole.utils.logger,
                   recbole.trainer.trainer):
        if hasattr(module, "ensure_dir"):
            module.ensure_dir = ensure_dir


def _ddp_on_cpu_too() -> None:
    from recbole.trainer.trainer import AbstractTrainer

    @replaces(AbstractTrainer, "__init__")  # RecBole's own is not called: it builds the DDP
    def __init__(original: Callable, self: Any, config: Any, model: Any) -> None:
        import torch
        from torch.nn.parallel import DistributedDataParallel

        self.config, self.model = config, model
        if not distributed(config):
            return
        if not any(p.requires_grad for p in model.parameters()):
            raise DistributedError(f"{config['model']} has no trainable parameter: there are no "
                                   "gradients to share between processes; run it without --nproc")
        cuda = config["device"].type == "cuda"
        if cuda:  # SyncBatchNorm runs on GPUs only
            self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        # DDP broadcasts rank 0's parameters and buffers, which it cannot do for a sparse tensor
        # (FREEDOM's graph buffers): each process builds those from the same data itself.
        sparse = [name for name, tensor in [*self.model.named_parameters(),
                                            *self.model.named_buffers()]
                  if tensor.layout != torch.strided]
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(self.model, sparse)
        self.distributed_model = DistributedDataParallel(
            self.model, device_ids=[config["local_rank"]] if cuda else None)


def _evaluate_every_user_in_every_process() -> None:
    from recbole.data.dataloader.general_dataloader import (FullSortEvalDataLoader,
                                                           NegSampleEvalDataLoader)
    from recbole.trainer.trainer import Trainer

    for loader in (FullSortEvalDataLoader, NegSampleEvalDataLoader):
        replaces(loader, "__init__")(_unsplit_init)

    @replaces(Trainer, "_map_reduce")
    def _map_reduce(original: Callable, self: Any, result: Any, num_sample: int) -> Any:
        return result  # every process evaluated every user: its result is the result


def _unsplit_init(original: Callable, self: Any, config: Any, *args: Any, **kwargs: Any) -> None:
    if not distributed(config):
        return original(self, config, *args, **kwargs)
    config["single_spec"] = True  # RecBole's loader then builds no DistributedSampler
    try:
        original(self, config, *args, **kwargs)
    finally:
        config["single_spec"] = False


def _one_checkpoint_name() -> None:
    from recbole.trainer.trainer import Trainer

    @replaces(Trainer, "__init__")
    def __init__(original: Callable, self: Any, config: Any, model: Any) -> None:
        original(self, config, model)
        # RecBole names the file by the second: two runs started in the same second in one
        # folder overwrite each other's best model and each tests the other's weights.
        stamp = datetime.now().strftime("%b-%d-%Y_%H-%M-%S-%f")
        self.saved_model_file = os.path.join(
            self.checkpoint_dir, f"{config['model']}-{stamp}-{os.getpid()}.pth")
        if distributed(config):
            import torch.distributed as dist

            name = [self.saved_model_file]
            dist.broadcast_object_list(name, src=0)
            self.saved_model_file = name[0]

    @replaces(Trainer, "fit")
    def fit(original: Callable, self: Any, *args: Any, **kwargs: Any) -> Any:
        result = original(self, *args, **kwargs)
        if distributed(self.config):
            import torch.distributed as dist

            dist.barrier()  # rank 0's last checkpoint is on disk before anyone loads it
        return result
