"""Data parallelism: DDP by default, FSDP2 (``fully_shard``) with ``--fsdp``.

``mossnet train`` is the same program with one process or many: under ``torchrun
--nproc_per_node N`` the environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR...) is set and
``setup()`` joins the process group (NCCL on CUDA, gloo on CPU). Each rank reads its own share
of every global batch (``TokenBatches(rank=, world_size=)``); gradients are averaged across
ranks, so N ranks with accumulation A equal one process accumulating N * A micro-batches.

Helpers here hide the differences between one process, DDP and FSDP2: skipping the gradient
all-reduce on non-final micro-batches, gathering a full state dict for checkpoints, and loading
one back.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from mossnet.runtime import resolve_device


@dataclass
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    enabled: bool = False  # a process group is active
    fsdp: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def all_reduce_mean(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            tensor = tensor.clone()
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
            tensor /= self.world_size
        return tensor

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            tensor = tensor.clone()
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor


def setup(device: str = "auto", fsdp: bool = False) -> tuple[DistInfo, torch.device]:
    """Join the process group when launched by torchrun; pick this rank's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank if world_size > 1 else torch.cuda.current_device())
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    info = DistInfo(rank=rank, local_rank=local_rank, world_size=world_size, fsdp=fsdp and world_size > 1)
    if world_size > 1:
        if not dist.is_initialized():
            backend = "nccl" if dev.type == "cuda" else "gloo"
            dist.init_process_group(backend=backend, device_id=dev if dev.type == "cuda" else None)
        info.enabled = True
    return info, dev


def teardown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def _layer_list(model: nn.Module) -> nn.ModuleList | None:
    """The model's stack of residual blocks (``layers`` for Llama/MossNet, Mamba-2's too)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and name.split(".")[-1] == "layers" and len(module) > 0:
            return module
    return None


def wrap(model: nn.Module, info: DistInfo, device: torch.device) -> nn.Module:
    """DDP or FSDP2 around ``model`` (returned unchanged for one process)."""
    if not info.enabled:
        return model
    if info.fsdp:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        # The mesh on this run's device type: fully_shard's default mesh is CUDA whenever CUDA
        # exists, which breaks a CPU (gloo) run on a machine with fewer GPUs than ranks.
        mesh = init_device_mesh(device.type, (info.world_size,))
        layers = _layer_list(model)
        if layers is not None:
            for layer in layers:
                fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)


@contextlib.contextmanager
def no_grad_sync(model: nn.Module, info: DistInfo, skip: bool):
    """Inside, backward accumulates local gradients without the cross-rank reduction (all but
    the last micro-batch of a step)."""
    if not (info.enabled and skip):
        yield
        return
    if info.fsdp:
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        with model.no_sync():
            yield


def full_model_state(model: nn.Module, info: DistInfo) -> dict[str, torch.Tensor] | None:
    """The full (unsharded) model state dict on CPU for rank 0 (None elsewhere, under FSDP).
    ``model`` is the unwrapped module (not the DDP wrapper)."""
    if info.fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if not info.is_main:
            return None
        # drop the second name of a tied parameter (the LM head tied to the embedding), as
        # save_pretrained does for an unsharded model
        unique = {n for n, _ in model.named_parameters()}
        aliases = {n for n, _ in model.named_parameters(remove_duplicate=False)} - unique
        return {k: v for k, v in sd.items() if k not in aliases}
    return {k: v.detach().to("cpu") for k, v in model.state_dict().items()}


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, info: DistInfo):
    """The optimizer state with parameters keyed as in ``optimizer.state_dict()`` (integer
    indices in group order), full and on CPU; None on ranks other than 0 under FSDP."""
    if info.fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        sd = get_optimizer_state_dict(model, optimizer,
                                      options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if not info.is_main:
            return None
        return _fqn_to_index(sd, optimizer, model)
    return optimizer.state_dict()


def _fqn_to_index(sd: dict, optimizer: torch.optim.Optimizer, model: nn.Module) -> dict:
    """DCP's FQN-keyed optimizer state -> torch's index-keyed layout (our on-disk format)."""
    names = {id(p): n for n, p in model.named_parameters()}
    order = [names[id(p)] for g in optimizer.param_groups for p in g["params"]]
    index = {n: i for i, n in enumerate(order)}
    state = {index[k]: v for k, v in sd["state"].items()}
    groups = []
    for g in sd["param_groups"]:
        g = dict(g)
        g["params"] = [index[k] for k in g["params"]]
        groups.append(g)
    return {"state": state, "param_groups": groups}


def load_full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict,
                              info: DistInfo) -> None:
    """Load a full, index-keyed optimizer state (as written by ``full_optimizer_state``)."""
    if info.fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        names = {id(p): n for n, p in model.named_parameters()}
        order = [names[id(p)] for g in optimizer.param_groups for p in g["params"]]
        fqn_state = {order[int(i)]: v for i, v in state["state"].items()}
        groups = []
        for g in state["param_groups"]:
            g = dict(g)
            g["params"] = [order[int(i)] for i in g["params"]]
            groups.append(g)
        set_optimizer_state_dict(model, optimizer, {"state": fqn_state, "param_groups": groups},
                                 options=StateDictOptions(full_state_dict=True))
        return
    optimizer.load_state_dict(state)


def load_full_model_state(model: nn.Module, state: dict[str, torch.Tensor], info: DistInfo) -> None:
    if info.fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True))
        return
    model.load_state_dict(state)
