"""torchrun: N copies of minitorch_run.py (ranks) train as one."""

import os
import sys

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data.distributed import DistributedSampler

from minitorch_tool.errors import InputError
from minitorch_tool.flags import pick_device


def join_torchrun(device) -> torch.device:
    """Under torchrun (it sets LOCAL_RANK), join the process group: nccl between GPUs, where
    rank r takes GPU LOCAL_RANK whatever --device names; gloo between CPU processes. Only rank 0
    prints. A plain run is left as it is."""
    if "LOCAL_RANK" not in os.environ:
        return device
    n_gpus, per_node = torch.cuda.device_count(), int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if device.type == "cuda" and per_node > n_gpus:  # every rank sees it: rank 0 says it
        raise InputError(f"torchrun starts {per_node} processes on this machine, which has "
                         f"{n_gpus} GPU(s), one per process: --nproc_per_node={n_gpus}, or "
                         "--device cpu")
    if device.type == "mps":  # torch.distributed's backends take CPU or CUDA tensors
        raise InputError("torchrun: Apple's MPS has no process-group backend; add --device cpu")
    if device.type == "cuda":
        device = pick_device(f"cuda:{os.environ['LOCAL_RANK']}")
        torch.cuda.set_device(device)
    try:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    except ValueError as e:  # LOCAL_RANK set by hand, without the rest torchrun sets
        raise InputError(f"LOCAL_RANK is set but this is no torchrun job ({e})") from None
    if not writes_files():
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (for the life of the process)
    return device


def writes_files() -> bool:
    """A plain run, or rank 0 of a torchrun job: the one process that writes files."""
    return not dist.is_initialized() or dist.get_rank() == 0


def this_ranks_share(dataset, seed) -> DistributedSampler | None:
    """Under torchrun, this rank's share of the rows, in a new order each epoch (set_epoch)."""
    return DistributedSampler(dataset, seed=seed) if dist.is_initialized() else None


def reshuffle_shares(loader, epoch):
    if dist.is_initialized():  # the same new order on every rank, each taking its share
        loader.sampler.sampler.set_epoch(epoch)  # make_loader's batches of this rank's share


def ddp_wrapped(model) -> nn.Module:
    """Under torchrun, the model in DistributedDataParallel: backward() averages the gradients
    over the ranks, so every rank takes the same step. The wrapper trains; the model inside is
    what is evaluated and saved."""
    return nn.parallel.DistributedDataParallel(model) if dist.is_initialized() else model


def mean_over_ranks(values, device) -> list[float]:
    """Under torchrun, each number averaged over the ranks, so every rank takes the same
    decisions (a better model, early stopping): one that stopped alone would leave the others
    waiting forever. Every rank validates all the rows with the same weights, so the valid
    loss is the one-process number."""
    if not dist.is_initialized():
        return values
    total = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return (total / dist.get_world_size()).tolist()

