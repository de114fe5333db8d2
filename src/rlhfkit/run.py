"""One scaffold for every trainer: seed, run folder, config copy, metrics log, progress, checkpoint/resume, Ctrl-C.

A stage keeps its own loop body (what a step computes) and hands the rest to :class:`Run`::

    run = Run("sft", cfg)                           # threads, seed, quiet ranks
    ckpt = run.checkpoint_to_resume()               # --resume: the checkpoint in <output>/checkpoint, or None
    ...build the model, optimiser, schedule...
    start = run.begin(optimizer, scheduler, ckpt)   # resume their state and the RNG, or start a fresh log
    with run.loop(start, save) as loop:             # progress bar; Ctrl-C saves the last finished step
        for step in range(start, cfg.max_steps):
            ...forward, backward...
            with loop.step(step + 1) as done:       # Ctrl-C waits for the step's log line and checkpoint
                ...optimiser step, metrics...
                if loop.eval_due(done, bool(held)): ...
                loop.log(done, metrics, info)       # every log_every steps and the last
    run.finish(loop.done, save_final)               # the last checkpoint, the output folder; the log closed

The batch of step ``s`` is a pure function of (seed, s) in every trainer, so a run resumed from the
checkpoint of step ``s`` repeats nothing and equals an unbroken one.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from rlhfkit import distributed as dist
from rlhfkit.accel import speed_up
from rlhfkit.accel.runtime import set_threads
from rlhfkit.checkpoint import (
    ForcedStop,
    atomic_dir,
    find_checkpoint,
    load_state,
    rng_state,
    save_state,
    seed_everything,
    set_rng_state,
    step_completes,
)
from rlhfkit.config import ConfigError, save_config, to_dict
from rlhfkit.tracking import clear_tensorboard, truncate_metrics

console = Console(stderr=True)
METRICS = "metrics.jsonl"
ZERO = "zero"  # the DeepSpeed engine's own checkpoint, inside a checkpoint folder
T = TypeVar("T")


class Run:
    """One stage's run in ``cfg.output``: what every trainer does around its steps."""

    def __init__(self, name: str, cfg):
        self.name, self.cfg, self.out = name, cfg, Path(cfg.output)
        set_threads(cfg.threads)
        seed_everything(cfg.seed)
        console.quiet = not dist.is_main()
        self.optimizer = self.scheduler = self.logger = None
        self.sharded_model = None  # the FSDP-prepared model, whose optimiser state is gathered to save it
        self.engine = None  # the DeepSpeed engine, which saves and loads its own sharded optimiser state
        self.save: Callable[[Path | None], dict | None] | None = None

    def processes(self, batch_size: int, what: str, per: int = 1) -> tuple[int, int]:
        """(processes, this one's rank), after checking that ``batch_size`` ``what`` split evenly over them
        (in ``per`` parts each: minibatches)."""
        world = dist.world_size()
        if batch_size % (world * per):
            parts = f"{per} minibatches × {world} processes" if per > 1 else f"{world} processes"
            raise ConfigError(f"batch_size: {batch_size} {what} do not split evenly over {parts}; use a multiple of {world * per}")
        return world, dist.rank()

    def say(self, text: str) -> None:
        console.print(f"{self.name}: {text}")

    def checkpoint_to_resume(self) -> Path | None:
        """With ``resume``: the usable checkpoint in ``<output>/checkpoint`` (None, said, when there is none)."""
        ckpt = find_checkpoint(self.out / "checkpoint") if self.cfg.resume else None
        if self.cfg.resume and ckpt is None:
            self.say(f"no checkpoint in {self.out}; starting from the beginning")
        return ckpt

    def prepare(self, model, accelerator, head_apart: bool = False):
        """AdamW over the trainable parameters, the learning-rate schedule, the CPU speed paths, then
        ``accelerator.prepare`` (DDP / FSDP / DeepSpeed as ``accelerate launch`` configured; one plain process:
        the model as it is). Returns (model, optimizer, scheduler, trainable parameters).

        The schedule stays unprepared: it steps once per optimiser step whatever the number of processes.
        """
        from transformers import get_scheduler

        cfg = self.cfg
        params = [p for p in model.parameters() if p.requires_grad]
        # fused: one pass over each tensor instead of a Python loop over them (the shipped model's full
        # fine-tuning step: 0.43 → 0.12 s for the optimiser and the clip, bench/RESULTS.md), as PPO's
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
        name = "constant_with_warmup" if cfg.schedule == "constant" else cfg.schedule
        scheduler = get_scheduler(name, optimizer, num_warmup_steps=cfg.warmup_steps, num_training_steps=cfg.max_steps)
        if not dist.is_sharded(accelerator):
            # fp32 products through oneDNN on a CPU (bf16 is oneDNN's already); head_apart: the head has its own route
            speed_up(model, device=accelerator.device, head_apart=head_apart)
        model, optimizer = self.prepare_sharded(accelerator, model, optimizer)
        params = [p for p in model.parameters() if p.requires_grad]  # FSDP replaces the parameter objects
        return model, optimizer, scheduler, params

    def prepare_sharded(self, accelerator, model, optimizer, clip: float | None = None):
        """``accelerator.prepare(model, optimizer)``, and the run remembers what checkpoints need of the result:
        the FSDP model (whose optimiser state it gathers) or the DeepSpeed engine (which saves its own).
        Under DeepSpeed the engine clips gradients inside its step, at ``clip`` (default: the stage's ``grad_clip``)."""
        if dist.is_deepspeed(accelerator):
            plugin = accelerator.state.deepspeed_plugin
            plugin.deepspeed_config["gradient_clipping"] = clip if clip is not None else self.cfg.grad_clip
            # ZeRO's buffers sized by the model's hidden size h, as accelerate sizes them when a config says "auto"
            # (unset, DeepSpeed's defaults are 5e8 elements; measured: ZeRO-3 PPO's peak 5.4 → 4.2 GiB per process)
            h = next((m.config.hidden_size for m in model.modules() if hasattr(getattr(m, "config", None), "hidden_size")), None)
            if h is not None:
                dist.fill_deepspeed_config(plugin, {"zero_optimization.reduce_bucket_size": h * h,
                                                    "zero_optimization.stage3_prefetch_bucket_size": int(0.9 * h * h),
                                                    "zero_optimization.stage3_param_persistence_threshold": 10 * h})
            zero = plugin.deepspeed_config.get("zero_optimization", {})
            if dist.is_zero3(accelerator) and zero.get("stage3_gather_16bit_weights_on_model_save") is False:
                raise ConfigError("DeepSpeed ZeRO-3: set zero3_save_16bit_model: true (stage3_gather_16bit_weights_on_model_save) "
                                  "in the launch config; the checkpoints and the final model are saved gathered")
        model, optimizer = accelerator.prepare(model, optimizer)
        self.sharded_model = model if dist.is_fsdp(accelerator) else None
        self.engine = model if dist.is_deepspeed(accelerator) else None
        return model, optimizer

    def begin(self, optimizer, scheduler, ckpt: Path | None, restore: Callable[[dict], None] | None = None) -> int:
        """Restore the optimiser, schedule and RNG of ``ckpt`` (and the stage's own parts: ``restore(tensors)``)
        and cut the metrics log back to its step, or start a fresh log; save the config; open the metrics
        logger. Returns the step to start from."""
        self.optimizer, self.scheduler = optimizer, scheduler
        start = 0
        if ckpt is not None:
            state, tensors = load_state(ckpt)
            self.load_optimizer(tensors.get("optimizer"), ckpt)
            if scheduler is not None:
                scheduler.load_state_dict(tensors["scheduler"])
            if restore is not None:
                restore(tensors)
            set_rng_state(tensors["rng"])
            start = state["step"]
            if dist.is_main():
                truncate_metrics(self.out / METRICS, start)
            self.say(f"resumed from step {start}")
        elif dist.is_main():  # a fresh run starts a fresh log, and fresh TensorBoard curves
            if (self.out / METRICS).exists():
                (self.out / METRICS).unlink()
            clear_tensorboard(self.out / "tb")
        if dist.is_main():
            save_config(self.cfg, self.out)
        self.logger = dist.metrics_logger(self.out, self.cfg.report_to, config=to_dict(self.cfg),
                                          purge_step=start + 1 if ckpt is not None else None)
        return start

    def save_checkpoint(self, step: int, rng: dict | None = None) -> None:
        """The checkpoint of step ``step``: the stage's models and parts (``save(folder)``, called on every
        rank: a sharded model gathers; it writes into ``folder`` and returns its other tensors), optimiser,
        schedule, RNG (now, or ``rng`` as taken at the step's end). Rank 0 writes, the others wait."""
        optimizer = self.optimizer_state()  # every rank: FSDP gathers the optimiser's shards, DeepSpeed writes its own
        if not dist.is_main():
            self.save(None)
            dist.barrier()
            return
        with atomic_dir(self.out / "checkpoint") as tmp:
            tensors = self.save(tmp) or {}
            tensors["rng"] = rng or rng_state()
            if self.engine is not None:
                (self.out / ZERO).rename(tmp / ZERO)  # every rank's shard, written by the engine
            else:
                tensors["optimizer"] = optimizer
            if self.scheduler is not None:
                tensors["scheduler"] = self.scheduler.state_dict()
            save_state(tmp, {"step": step}, tensors)
        dist.barrier()

    def optimizer_state(self) -> dict | None:
        """The optimiser's whole state: its own ``state_dict``, or under FSDP the shards gathered into one state keyed
        by parameter name (torch's ``get_optimizer_state_dict``; a collective), held by rank 0 alone. Under DeepSpeed
        every rank writes its own shard with the engine's ``save_checkpoint`` into ``<output>/zero`` (a collective;
        :meth:`save_checkpoint` moves the folder into the checkpoint) and this returns None."""
        if self.engine is not None:
            staging = self.out / ZERO
            if dist.is_main() and staging.exists():
                shutil.rmtree(staging)  # a run killed between writing it and moving it
            dist.barrier()
            # frozen weights (a LoRA base) left out: they never change, and the stage's own model loading restores them
            self.engine.save_checkpoint(str(staging), tag=ZERO, save_latest=False, exclude_frozen_parameters=True)
            dist.barrier()  # every shard written before rank 0 moves the folder
            return None
        if self.sharded_model is None:
            return self.optimizer.state_dict() if dist.is_main() else None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        optimizer = getattr(self.optimizer, "optimizer", self.optimizer)  # the torch optimiser inside accelerate's
        return get_optimizer_state_dict(self.sharded_model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def load_optimizer(self, state: dict | None, ckpt: Path) -> None:
        """A checkpoint's optimiser state back into the optimiser; under FSDP every rank reads the whole state and
        keeps its own shard of it (torch's ``set_optimizer_state_dict``); under DeepSpeed the engine reads its shards
        (and the weights, which equal the checkpoint's model) with its ``load_checkpoint``."""
        if (state is None) != (self.engine is not None):
            written = "under DeepSpeed" if state is None else "without DeepSpeed"
            raise ConfigError(f"resume: the checkpoint was written {written} and this run is "
                              f"{'not ' if self.engine is None else ''}under DeepSpeed; resume in the mode it was written in")
        if self.engine is not None:
            path, _ = self.engine.load_checkpoint(str(ckpt / ZERO), tag=ZERO, load_optimizer_states=True,
                                                  load_lr_scheduler_states=False, load_module_strict=False)  # no frozen weights
            if path is None:  # DeepSpeed only warns, and would go on with a fresh AdamW state
                raise ConfigError(f"resume: {ckpt / ZERO} holds no DeepSpeed checkpoint this run can read")
            return
        by_name = any(isinstance(k, str) for k in state.get("state", {}))  # FSDP's checkpoints key it by parameter name
        if by_name != (self.sharded_model is not None):
            raise ConfigError(f"resume: the checkpoint was written {'under FSDP' if by_name else 'without FSDP'} and this run "
                              f"is {'not under FSDP' if self.sharded_model is None else 'under FSDP'}; resume in the mode "
                              "it was written in (one process and DDP share checkpoints)")
        if self.sharded_model is None:
            self.optimizer.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        optimizer = getattr(self.optimizer, "optimizer", self.optimizer)
        set_optimizer_state_dict(self.sharded_model, optimizer, state, options=StateDictOptions(full_state_dict=True))

    @contextmanager
    def loop(self, start: int, save: Callable[[Path | None], dict | None]) -> Iterator["Loop"]:
        """The steps' progress bar, and Ctrl-C: the checkpoint of the last finished step (one process; several
        stop at different points, where a collective save could hang, so they keep the last checkpoint).
        Ctrl-C during a step (:meth:`Loop.step`) waits for the step's end.
        ``save(folder)`` writes the stage's models into a checkpoint folder (None on the ranks that do not
        write) and returns the other tensors to keep (see :meth:`save_checkpoint`)."""
        self.save = save
        columns = [TextColumn(self.name), BarColumn(), TextColumn("{task.completed}/{task.total} {task.fields[info]}"),
                   TimeRemainingColumn()]
        loop = Loop(self, start)
        try:
            with Progress(*columns, console=console, transient=False, disable=not dist.is_main()) as bar:
                loop.bar, loop.task = bar, bar.add_task(self.name, total=self.cfg.max_steps, completed=start, info="")
                yield loop
        except KeyboardInterrupt as stop:
            # Between steps the weights are the last finished step's; inside one (an interrupt that did not wait
            # for the step's end) they may not be, and the last checkpoint stays.
            # (DeepSpeed's engine steps inside the last backward, before the step's block: its weights may be ahead)
            if dist.world_size() == 1 and not isinstance(stop, ForcedStop) and not loop.in_step and self.engine is None:
                self.save_checkpoint(loop.done, rng=loop.boundary)
            self.logger.close()
            raise
        except BaseException:
            self.logger.close()  # no checkpoint: the last one saved stays as it was
            raise

    def finish(self, step: int, save_final: Callable[[], T]) -> T:
        """The checkpoint of the last step (a later ``--resume`` with more steps continues from it), then
        ``save_final()`` (the stage's output folder); the log closed. Returns what ``save_final`` returns."""
        self.save_checkpoint(step)
        result = save_final()
        self.logger.close()
        return result


class Loop:
    """The running part of a :class:`Run`: the last finished step, its RNG, the last logged metrics."""

    def __init__(self, run: Run, start: int):
        self.run, self.cfg = run, run.cfg
        self.done, self.boundary, self.last = start, rng_state(), {}  # the last finished step, and the RNG as it left it
        self.bar = self.task = None
        self.ending = False  # set by a step after which the stage stops early (a time budget)
        self.in_step = False

    @contextmanager
    def step(self, done: int) -> Iterator[int]:
        """Everything that belongs to optimiser step ``done`` (1-based): Ctrl-C waits for its end, then the
        checkpoint when one is due (every ``save_every`` steps; not after the last, which :meth:`Run.finish`
        saves: ``max_steps``, or a step that set ``ending``), and the step counts as finished."""
        with step_completes():
            self.in_step = True  # stays True when the block raises: its weights may be half-updated
            yield done
            due = self.cfg.save_every and done % self.cfg.save_every == 0
            if due and done < self.cfg.max_steps and not self.ending:
                self.run.save_checkpoint(done)
            self.done, self.boundary = done, rng_state()  # RNG as the next step will find it
            self.in_step = False

    def eval_due(self, done: int, have_held_out: bool) -> bool:
        """Every ``eval_every`` steps and after the last one, when there is held-out data."""
        return have_held_out and ((bool(self.cfg.eval_every) and done % self.cfg.eval_every == 0) or done == self.cfg.max_steps)

    def log(self, done: int, metrics: dict, info: str, always: bool = False) -> None:
        """The step's metrics line every ``log_every`` steps, after the last one and when ``always`` (an
        evaluation, a warning); the progress bar."""
        if done % self.cfg.log_every == 0 or done == self.cfg.max_steps or always:
            self.last = self.run.logger.log(done, metrics)
        self.bar.update(self.task, completed=done, info=info)
