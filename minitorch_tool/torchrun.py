"""torchrun: N copies of minitorch_run.py (ranks) train as one."""

import os
import sys

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data.distributed import DistributedSampler

from minitorch_tool.errors import InputError, first_line, quoted

BY_HAND = "; run under torchrun, or unset LOCAL_RANK"  # what the environment set by hand


def join(device, cleanup) -> torch.device:
    """This process's device: under torchrun, GPU LOCAL_RANK, in the process group (nccl, gloo)."""
    if "LOCAL_RANK" not in os.environ:
        return device
    if "TORCHELASTIC_RUN_ID" not in os.environ:  # torchrun sets both
        raise InputError(f"LOCAL_RANK is set, but this is no torchrun job{BY_HAND}")
    defaults = {"LOCAL_RANK": "", "LOCAL_WORLD_SIZE": "1", "RANK": "0", "WORLD_SIZE": "1"}
    env = {name: os.environ.get(name, default) for name, default in defaults.items()}
    for name, value in env.items():
        if not (value.isascii() and value.isdigit()):
            raise InputError(f"{name}={quoted(value)}: torchrun sets it to a whole number{BY_HAND}")
    local_rank, per_node, rank, world = map(int, env.values())
    if not (local_rank < per_node and rank < world):  # a group that could never form
        raise InputError(f"RANK={rank} of WORLD_SIZE={world}, LOCAL_RANK={local_rank} of "
                         f"LOCAL_WORLD_SIZE={per_node}: not what torchrun sets{BY_HAND}")
    gpus = torch.cuda.device_count()
    if device.type == "cuda" and per_node > gpus:  # every rank sees it: rank 0 says it
        raise InputError(f"torchrun starts {per_node} processes here, one per GPU; this machine "
                         f"has {gpus}: --nproc_per_node={gpus}, or --device cpu")
    if device.type == "mps":  # torch.distributed's backends take CPU or CUDA tensors
        raise InputError("torchrun: Apple's MPS has no process-group backend; add --device cpu")
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    try:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    except (ValueError, dist.DistError) as e:  # set by hand, a busy MASTER_PORT, ...
        raise InputError(f"no process group could be joined ({first_line(e)}){BY_HAND}") from None
    cleanup.callback(dist.destroy_process_group)
    if not writes_files():
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (for the life of the process)
    return device


def writes_files() -> bool:  # a plain run, or rank 0: the one process that writes files
    return not dist.is_initialized() or dist.get_rank() == 0


def this_ranks_share(dataset, seed) -> DistributedSampler | None:  # a new order each epoch
    return DistributedSampler(dataset, seed=seed) if dist.is_initialized() else None


def reshuffle_shares(loader, epoch):
    if dist.is_initialized():  # the same new order on every rank, each taking its share
        loader.sampler.sampler.set_epoch(epoch)  # make_loader's batches of this rank's share


def ddp_wrapped(model) -> nn.Module:
    """In DDP, backward() averages the gradients over the ranks: all take the same step."""
    return nn.parallel.DistributedDataParallel(model) if dist.is_initialized() else model


def mean_over_ranks(values, device) -> list[float]:
    """Each number averaged over the ranks, so that all of them take the same decisions."""
    if not dist.is_initialized():
        return values
    total = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return (total / dist.get_world_size()).tolist()
