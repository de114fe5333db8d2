"""Thin helpers over ``accelerate`` and ``torch.distributed`` shared by every trainer (docs/design.md §7).

Nothing here is an engine: ``accelerate launch`` starts the processes, ``Accelerator.prepare`` wraps the
model (DDP, FSDP or DeepSpeed, as the launch config says) and these functions only answer the questions a
training loop asks — which rank am I, which part of the step's global batch is mine, what is this number
summed over all ranks, who writes files. Every function also works in a plain single process (no launch,
no process group), where it is the identity or a no-op, so one code path serves both.

A trainer's step under N processes:
    batch = the step's GLOBAL batch (a pure function of (seed, step): resume is unchanged)
    mine  = shard(batch, rank(), world_size())
    loss  = (sum over my tokens) / (tokens in the GLOBAL batch) * world_size()   # DDP averages grads
    ... accelerator.backward(loss) ... optimizer.step()  (rank 0 logs and saves)
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Sequence, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


def _initialised() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's global rank (0 without a process group; the launcher's RANK before it exists)."""
    return dist.get_rank() if _initialised() else int(os.environ.get("RANK", 0))


def world_size() -> int:
    """Number of processes in the run (1 when not launched)."""
    return dist.get_world_size() if _initialised() else int(os.environ.get("WORLD_SIZE", 1))


def is_main() -> bool:
    """True on the one process that logs, prints and writes files."""
    return rank() == 0


def get_accelerator(gradient_accumulation_steps: int = 1, micro_batch_size: int | None = None, **kwargs):
    """An ``accelerate.Accelerator`` configured by ``accelerate launch`` (or one CPU/GPU process when not launched).

    ``gradient_accumulation_steps`` is the number of micro-batches per optimiser step; accelerate then skips
    the gradient all-reduce on all but the last one and DeepSpeed steps only after the last one.
    ``micro_batch_size`` (examples per rank per micro-batch) fills DeepSpeed's ``train_micro_batch_size_per_gpu``
    when its config leaves it ``auto`` (we feed batches ourselves, so accelerate cannot read it from a DataLoader).
    """
    from accelerate import Accelerator

    on_cpus = world_size() > 1 and not torch.cuda.is_available()
    if on_cpus:
        # Several processes and no GPU: without this accelerate would join them with no backend and
        # no DDP wrapping; with it they form a gloo group (MULTI_CPU), as ACCELERATE_USE_CPU=true does.
        kwargs.setdefault("cpu", True)
    acc = Accelerator(gradient_accumulation_steps=gradient_accumulation_steps, **kwargs)
    if on_cpus and os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        use_fsdp_on_cpus(acc)
    if on_cpus and os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        use_deepspeed_on_cpus(acc)
    if _initialised():
        # Leaving the process group to interpreter teardown can abort a gloo rank ("terminate called without
        # an active exception"); close it once, when the program ends, since later stages reuse it.
        atexit.unregister(_close_process_group)  # once, however many accelerators a program makes
        atexit.register(_close_process_group)
    plugin = getattr(acc.state, "deepspeed_plugin", None)
    if plugin is not None and micro_batch_size:  # DeepSpeed checks train_batch_size = micro-batch × accumulation × processes
        fill_deepspeed_config(plugin, {"train_micro_batch_size_per_gpu": micro_batch_size,
                                       "gradient_accumulation_steps": gradient_accumulation_steps,
                                       "train_batch_size": micro_batch_size * gradient_accumulation_steps * acc.num_processes})
    return acc


def fill_deepspeed_config(plugin, values: dict[str, Any]) -> None:
    """Set the DeepSpeed config's entries (dotted keys) that the launch config leaves ``auto`` or unset, from this stage.

    The plugin outlives a stage (a pipeline's next stage in the same process reuses it), so entries filled by an earlier
    stage are filled again rather than kept."""
    filled = plugin.__dict__.setdefault("rlhfkit_filled", set())
    for key, value in values.items():
        *parents, leaf = key.split(".")
        node = plugin.deepspeed_config
        for part in parents:
            node = node.setdefault(part, {})
        if node.get(leaf, "auto") == "auto" or key in filled:
            node[leaf] = value
            filled.add(key)


def use_fsdp_on_cpus(acc) -> None:
    """FSDP2 over the gloo group of CPU processes, as the launch config (``configs/accelerate/fsdp.yaml``) asks.

    accelerate turns FSDP on for GPU processes only: CPU processes become MULTI_CPU, which ``prepare`` wraps in
    DDP. torch's FSDP2 (``fully_shard``) itself shards over gloo, so the state is given the launch's FSDP plugin
    (its ``FSDP_*`` settings) and ``accelerator.prepare`` then shards with FSDP2 exactly as it does on GPUs.
    """
    from accelerate import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    from rlhfkit.config import ConfigError

    plugin = FullyShardedDataParallelPlugin()  # fields from the launcher's FSDP_* environment
    if plugin.fsdp_version != 2:
        raise ConfigError(f"fsdp_version: {plugin.fsdp_version}: FSDP on CPU processes is FSDP2 only; set fsdp_version: 2")
    if acc.state.mixed_precision != "no":
        plugin.set_mixed_precision(acc.state.mixed_precision)
    acc.state.fsdp_plugin = plugin
    acc.state.distributed_type = DistributedType.FSDP
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP  # as accelerate does: a later state copies it


def use_deepspeed_on_cpus(acc) -> None:
    """DeepSpeed ZeRO over the gloo group of CPU processes, as the launch config (``configs/accelerate/deepspeed_*``) asks.

    As with FSDP, accelerate turns DeepSpeed on for GPU processes only. DeepSpeed itself runs on CPUs (its CPU
    accelerator, communicating over the existing gloo group), so the state is given the launch's DeepSpeed plugin
    (its ``ACCELERATE_DEEPSPEED_*`` settings) and ``accelerator.prepare`` then builds DeepSpeed's engine as on GPUs.
    """
    from accelerate import PartialState
    from accelerate.utils import DeepSpeedPlugin, DistributedType

    plugin = DeepSpeedPlugin()  # fields from the launcher's environment
    plugin.set_mixed_precision(acc.state.mixed_precision)
    acc.state.distributed_type = DistributedType.DEEPSPEED
    PartialState._shared_state["distributed_type"] = DistributedType.DEEPSPEED  # as accelerate does: a later state copies it
    acc.state.deepspeed_plugins = plugin
    plugin.select(_from_accelerator_state=True)


def _close_process_group() -> None:
    if _initialised():
        dist.destroy_process_group()


def is_sharded(accelerator) -> bool:
    """True when parameters or optimiser state are split across ranks (FSDP, DeepSpeed ZeRO)."""
    from accelerate.utils import DistributedType

    return accelerator is not None and accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)


def is_fsdp(accelerator) -> bool:
    """True under FSDP (on GPUs, or on CPU processes: :func:`use_fsdp_on_cpus`)."""
    from accelerate.utils import DistributedType

    return accelerator is not None and accelerator.distributed_type == DistributedType.FSDP


def is_deepspeed(accelerator) -> bool:
    """True under DeepSpeed (on GPUs, or on CPU processes: :func:`use_deepspeed_on_cpus`)."""
    from accelerate.utils import DistributedType

    return accelerator is not None and accelerator.distributed_type == DistributedType.DEEPSPEED


def is_zero3(accelerator) -> bool:
    """True under DeepSpeed ZeRO stage 3, where every rank holds only a part of each weight."""
    return is_deepspeed(accelerator) and accelerator.state.deepspeed_plugin.zero_stage == 3


@contextmanager
def whole_models(accelerator) -> Iterator[None]:
    """Models built inside are whole on every rank. Under ZeRO-3 with ``zero3_init_flag`` transformers builds every model
    split over the ranks (``deepspeed.zero.Init``), as long as its DeepSpeed config is registered; it is unregistered
    meanwhile. Elsewhere a no-op."""
    if not is_deepspeed(accelerator):
        yield
        return
    from transformers.integrations import deepspeed as hf_deepspeed

    registered = hf_deepspeed._hf_deepspeed_config_weak_ref
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = registered


def gathered(param):
    """A context in which a ZeRO-3 parameter is whole on every rank (DeepSpeed's ``GatheredParameters``, a collective);
    a no-op for any other tensor."""
    if not hasattr(param, "ds_id"):
        return nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters([param])


def reshard(model) -> None:
    """After passes without a backward (evaluation, scoring) through an FSDP2 model: free the gathered weights.

    FSDP2 keeps the root's gathered parameters after a forward (its backward would need them at once); with no
    backward they would stay, and the optimiser's and the checkpoint's view of the parameters would not be the
    sharded ones. Elsewhere a no-op."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # torch < 2.6: no FSDP2, and nothing to free
        return
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def shard(items: Sequence[T], rank: int, world: int) -> list[T]:
    """This rank's contiguous share of a step's global batch; sizes differ by at most one, order is kept.

    Concatenating the shards of ranks 0..world-1 gives ``items`` back, so a sum over shards equals the
    single-process sum over the whole batch.
    """
    n = len(items)
    lo, hi = rank * n // world, (rank + 1) * n // world
    return list(items[lo:hi])


def _comm_device() -> torch.device:
    # NCCL reduces only CUDA tensors; gloo (CPU runs, our tests) only CPU tensors.
    if _initialised() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(x: torch.Tensor | float | Sequence[float]) -> Any:
    """Sum over ranks; a float (or list of floats) comes back as float(s), a tensor as a tensor on its device."""
    if isinstance(x, torch.Tensor):
        if not _initialised():
            return x
        t = x.detach().to(_comm_device(), copy=True)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.to(x.device)
    is_list = isinstance(x, (list, tuple))
    if not _initialised():
        return [float(v) for v in x] if is_list else float(x)
    # float64: sums of per-token losses must match the single-process Python-float sum to ~1e-12.
    t = torch.tensor(list(x) if is_list else [x], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    out = t.cpu().tolist()
    return out if is_list else out[0]


def all_reduce_mean(x: torch.Tensor | float | Sequence[float]) -> Any:
    """Mean over ranks (for metrics each rank measured on its own share: time, entropy on equal shards ...)."""
    s = all_reduce_sum(x)
    w = world_size() if _initialised() else 1
    if isinstance(s, torch.Tensor):
        return s / w
    return [v / w for v in s] if isinstance(s, list) else s / w


def gather_object(obj: T) -> list[T]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    if not _initialised():
        return [obj]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: T, src: int = 0) -> T:
    """Rank ``src``'s ``obj`` on every rank (e.g. a decision only rank 0 can make)."""
    if not _initialised():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    """Wait for every rank (e.g. rank 0 finished writing a checkpoint the others will read)."""
    if _initialised():
        dist.barrier()


def to_device(batch: dict[str, torch.Tensor], device) -> dict[str, torch.Tensor]:
    """A collated batch on the accelerator's device (a no-op on CPU)."""
    return {k: v.to(device) for k, v in batch.items()}


def unwrap(accelerator, model):
    """The plain transformers/peft model inside a DDP/FSDP/DeepSpeed wrapper."""
    return model if accelerator is None else accelerator.unwrap_model(model)


def gathered_state(accelerator, model) -> dict:
    """Extra ``save_pretrained`` arguments: the full ``state_dict`` when weights are sharded (FSDP, ZeRO-3
    gather it collectively, so call this on EVERY rank), nothing otherwise (the model saves itself).
    A tied weight (the LM head that is the embedding) is kept under its first name only, as the model saves it."""
    if is_fsdp(accelerator):
        # torch's own gather (accelerate's get_state_dict hands FSDP2's DTensors back as they are, here, on CPUs)
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    elif is_zero3(accelerator):
        state = accelerator.get_state_dict(model)  # None on the ranks other than the first, which save nothing
        if state is None:
            return {}
    else:  # one process, DDP, ZeRO-1/2: every rank holds the whole weights
        return {}
    first_name: dict[int, str] = {}
    for name, p in unwrap(accelerator, model).named_parameters(remove_duplicate=False):
        first_name.setdefault(id(p), name)
    kept = set(first_name.values())  # a tied weight's later names are dropped
    named = {name for name, _ in unwrap(accelerator, model).named_parameters(remove_duplicate=False)}
    return {"state_dict": {k: v for k, v in state.items() if k in kept or k not in named}}  # buffers stay


def save_pretrained(accelerator, model, path: str | Path, **kwargs) -> None:
    """``save_pretrained`` from a prepared model; call it on every rank, rank 0 writes."""
    kwargs.update(gathered_state(accelerator, model))
    if is_main():
        from rlhfkit.models.loading import save_model

        save_model(unwrap(accelerator, model), path, **kwargs)


class NullLogger:
    """The logger of ranks other than 0: returns the record, writes nothing."""

    def log(self, step: int, metrics: dict) -> dict:
        return {"step": step, **metrics}

    def close(self) -> None:
        pass


def metrics_logger(out_dir: str | Path, report_to: str = "tensorboard", **kwargs):
    """A ``MetricsLogger`` on rank 0 and a ``NullLogger`` elsewhere (one metrics.jsonl, one TensorBoard run)."""
    from rlhfkit.tracking import MetricsLogger

    return MetricsLogger(out_dir, report_to, **kwargs) if is_main() else NullLogger()
