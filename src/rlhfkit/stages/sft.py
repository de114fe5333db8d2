"""Supervised fine-tuning: cross-entropy on response tokens only, full weights or LoRA.

The loop reads top to bottom: take the step's batch → micro-batches with gradient accumulation →
clip → optimiser and schedule step → log → evaluate / checkpoint. The batch of step ``s`` is a pure
function of (seed, s), so ``--resume`` continues with exactly the data order of an unbroken run.

Under ``accelerate launch`` (DDP, FSDP, DeepSpeed; ``configs/accelerate/``) every rank builds the same
global batch, trains on its shard of it, and divides by the GLOBAL response-token count, so N processes
take exactly the step one process takes on the whole batch; rank 0 alone logs and writes.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from rlhfkit import distributed as dist
from rlhfkit.accel.precision import autocast, resolve_precision
from rlhfkit.config import ConfigError, SFTConfig
from rlhfkit.data.formats import read_records, sft_pair
from rlhfkit.data.splits import batch_indices, none_held_out, split_records
from rlhfkit.data.tokenize import IGNORE_INDEX, Encoded, collate_right, encode_sft
from rlhfkit.models.lm_loss import heldout_loss, response_loss
from rlhfkit.models.loading import add_lora, load_causal_lm, load_tokenizer, save_model
from rlhfkit.run import Run


def build_model(cfg: SFTConfig, ckpt: Path | None):
    """The model to train: fresh from the spec, or the checkpoint's weights when resuming."""
    if ckpt is not None:
        model = load_causal_lm(str(ckpt / "model"), trainable=True)
    else:
        model = load_causal_lm(cfg.model)
        if cfg.lora:
            model = add_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        if cfg.lora:
            model.enable_input_require_grads()
        model.config.use_cache = False
    return model


def save_final(cfg: SFTConfig, out: Path, model, tok, accelerator=None) -> None:
    """Weights in save_pretrained form (LoRA: the adapter; with merge_lora also out/merged)."""
    dist.save_pretrained(accelerator, model, out)
    if dist.is_main():
        tok.save_pretrained(out)
        if cfg.lora and cfg.merge_lora:
            merged = dist.unwrap(accelerator, model).merge_and_unload()
            merged.save_pretrained(out / "merged")
            tok.save_pretrained(out / "merged")
    dist.barrier()


def train_sft(cfg: SFTConfig) -> dict:
    """Run SFT as configured; returns the last logged metrics."""
    run = Run("sft", cfg)
    out = run.out
    world, me = run.processes(cfg.batch_size, "examples")
    local = cfg.batch_size // world  # this rank's share of each step's batch
    micro = max(1, local // max(cfg.grad_accum, 1))
    n_micro = math.ceil(local / micro)
    accelerator = dist.get_accelerator(n_micro, micro)
    if cfg.lora and cfg.merge_lora and dist.is_zero3(accelerator):
        raise ConfigError("merge_lora: under DeepSpeed ZeRO-3 each rank holds a part of the base; set merge_lora: false and "
                          "merge the saved adapter afterwards (peft's merge_and_unload), or train under ZeRO-2, FSDP or DDP")
    precision = resolve_precision(cfg.precision, accelerator.device.type)
    records = read_records(cfg.data, "sft")
    if cfg.eval_data:
        train_recs, eval_recs = records, read_records(cfg.eval_data, "sft")
    else:
        train_recs, eval_recs = split_records(records, cfg.eval_fraction, cfg.seed)
    tok = load_tokenizer(cfg.model)

    def encode(recs: list[dict]) -> list[Encoded]:
        return [encode_sft(tok, *sft_pair(r), cfg.max_len, cfg.max_prompt_len) for r in recs]

    train, held = encode(train_recs), encode(eval_recs)
    n_trunc = sum(e.truncated for e in train + held)
    empty = "" if cfg.eval_data else none_held_out(len(records), cfg.eval_fraction, eval_recs, "examples")
    run.say(f"{len(train)} train / {len(held)} held-out examples; {n_trunc} truncated to {cfg.max_len} tokens; "
            f"precision {precision}{empty}")
    if world > 1:
        run.say(f"{world} processes ({accelerator.distributed_type.value}), {local} examples each per step")

    ckpt = run.checkpoint_to_resume()
    model, optimizer, scheduler, params = run.prepare(build_model(cfg, ckpt), accelerator)  # AdamW, schedule, DDP/FSDP
    start = run.begin(optimizer, scheduler, ckpt)

    def save(folder: Path | None) -> None:  # the checkpoint's model/
        gathered = dist.gathered_state(accelerator, model)  # every rank: FSDP/ZeRO gather their shards
        if folder is not None:
            save_model(dist.unwrap(accelerator, model), folder / "model", **gathered)

    model.train()
    with run.loop(start, save) as loop:
        for step in range(start, cfg.max_steps):
            t0 = time.perf_counter()
            examples = [train[i] for i in batch_indices(step, cfg.batch_size, len(train), cfg.seed)]
            n_tokens = sum(sum(l != IGNORE_INDEX for l in e.labels[1:]) for e in examples)  # global batch
            mine = dist.shard(examples, me, world)
            total = 0.0
            for i in range(0, len(mine), micro):
                # accumulate: no gradient all-reduce before the step's last micro-batch.
                with accelerator.accumulate(model):
                    batch = dist.to_device(collate_right(mine[i:i + micro], tok.pad_token_id), accelerator.device)
                    with autocast(precision, accelerator.device.type):
                        loss_sum, _ = response_loss(model, batch)
                    # Normalise by the GLOBAL batch's token count: accumulation and N processes then equal one
                    # big batch. × world undoes DDP's mean over ranks, × n_micro accelerate's ÷ accumulation steps.
                    accelerator.backward(loss_sum * (world * n_micro) / max(n_tokens, 1))
                total += float(loss_sum.detach())
            total = dist.all_reduce_sum(total)
            with loop.step(step + 1) as done:  # Ctrl-C from here waits for the step's log line and checkpoint
                grad_norm = accelerator.clip_grad_norm_(params, cfg.grad_clip)
                lr = scheduler.get_last_lr()[0]
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                metrics = {"loss": total / max(n_tokens, 1), "lr": lr,
                           "grad_norm": float("nan") if grad_norm is None else float(grad_norm),
                           "tokens": n_tokens, "time_step_s": time.perf_counter() - t0}
                if loop.eval_due(done, bool(held)):
                    # Every rank evaluates the whole held-out set: the same forward passes everywhere, which
                    # sharded models need (their forwards are collective), and no reduction.
                    metrics.update(heldout_loss(model, held, tok.pad_token_id, cfg.batch_size, accelerator.device))
                    dist.reshard(model)  # FSDP: the evaluation's gathered weights freed
                loop.log(done, metrics, f"loss {metrics['loss']:.3f}", always="eval_loss" in metrics)
    run.finish(loop.done, lambda: save_final(cfg, out, model, tok, accelerator))
    run.say(f"done, {loop.done} steps; model saved to {out}")
    return loop.last
