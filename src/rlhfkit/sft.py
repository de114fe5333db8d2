"""Supervised fine-tuning: cross-entropy on response tokens only, full weights or LoRA.

The loop reads top to bottom: take the step's batch → micro-batches with gradient accumulation →
clip → optimiser and schedule step → log → evaluate / checkpoint. The batch of step ``s`` is a pure
function of (seed, s), so ``--resume`` continues with exactly the data order of an unbroken run.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from rlhfkit.checkpoint import atomic_dir, find_checkpoint, load_state, rng_state, save_state, seed_everything, set_rng_state
from rlhfkit.config import SFTConfig, save_config, to_dict
from rlhfkit.data.formats import read_records, sft_pair
from rlhfkit.data.tokenize import IGNORE_INDEX, Encoded, collate_right, encode_sft
from rlhfkit.models.loading import add_lora, load_causal_lm, load_tokenizer, set_threads
from rlhfkit.tracking import MetricsLogger, truncate_metrics

console = Console(stderr=True)


def split_records(records: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Hold out ``fraction`` of the records (seeded); none when that rounds to zero."""
    n_eval = int(round(len(records) * fraction))
    if n_eval == 0 or n_eval >= len(records):
        return records, []
    perm = torch.randperm(len(records), generator=torch.Generator().manual_seed(seed)).tolist()
    held = set(perm[:n_eval])
    return [r for i, r in enumerate(records) if i not in held], [r for i, r in enumerate(records) if i in held]


def batch_indices(step: int, batch_size: int, n: int, seed: int) -> list[int]:
    """Example indices of optimiser step ``step``: epochs of seeded permutations, read in order."""
    out = []
    for j in range(step * batch_size, (step + 1) * batch_size):
        epoch, pos = divmod(j, n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100003 + epoch))
        out.append(int(perm[pos]))
    return out


def response_loss(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy over response tokens and their count (for exact accumulation)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logits = logits[:, :-1]  # position t predicts token t+1
    labels = batch["labels"][:, 1:]
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), labels.reshape(-1),
                                             ignore_index=IGNORE_INDEX, reduction="sum")
    return loss, int((labels != IGNORE_INDEX).sum())


@torch.no_grad()
def evaluate(model, examples: list[Encoded], pad_id: int, batch_size: int) -> dict[str, float]:
    """Mean per-token held-out loss and perplexity."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(examples), batch_size):
        loss, n = response_loss(model, collate_right(examples[i:i + batch_size], pad_id))
        total, count = total + float(loss), count + n
    model.train(was_training)
    mean = total / max(count, 1)
    return {"eval_loss": mean, "eval_ppl": math.exp(min(mean, 50.0))}


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


def make_scheduler(cfg: SFTConfig, optimizer):
    from transformers import get_scheduler

    name = "constant_with_warmup" if cfg.schedule == "constant" else cfg.schedule
    return get_scheduler(name, optimizer, num_warmup_steps=cfg.warmup_steps, num_training_steps=cfg.max_steps)


def save_checkpoint(out: Path, model, optimizer, scheduler, step: int) -> None:
    with atomic_dir(out / "checkpoint") as tmp:
        model.save_pretrained(tmp / "model")
        save_state(tmp, {"step": step}, {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state()})


def save_final(cfg: SFTConfig, out: Path, model, tok) -> None:
    """Weights in save_pretrained form (LoRA: the adapter; with merge_lora also out/merged)."""
    model.save_pretrained(out)
    tok.save_pretrained(out)
    if cfg.lora and cfg.merge_lora:
        merged = model.merge_and_unload()
        merged.save_pretrained(out / "merged")
        tok.save_pretrained(out / "merged")


def train_sft(cfg: SFTConfig) -> dict:
    """Run SFT as configured; returns the last logged metrics."""
    out = Path(cfg.output)
    set_threads(cfg.threads)
    seed_everything(cfg.seed)
    records = read_records(cfg.data, "sft")
    if cfg.eval_data:
        train_recs, eval_recs = records, read_records(cfg.eval_data, "sft")
    else:
        train_recs, eval_recs = split_records(records, cfg.eval_fraction, cfg.seed)
    if not train_recs:
        raise ValueError(f"{cfg.data}: no training examples")
    tok = load_tokenizer(cfg.model)

    def encode(recs: list[dict]) -> list[Encoded]:
        return [encode_sft(tok, *sft_pair(r), cfg.max_len, cfg.max_prompt_len) for r in recs]

    train, held = encode(train_recs), encode(eval_recs)
    n_trunc = sum(e.truncated for e in train + held)
    console.print(f"sft: {len(train)} train / {len(held)} held-out examples; {n_trunc} truncated to {cfg.max_len} tokens")

    ckpt = find_checkpoint(out / "checkpoint") if cfg.resume else None
    if cfg.resume and ckpt is None:
        console.print(f"sft: no checkpoint in {out}; starting from the beginning")
    model = build_model(cfg, ckpt)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = make_scheduler(cfg, optimizer)
    start = 0
    if ckpt is not None:
        state, tensors = load_state(ckpt)
        optimizer.load_state_dict(tensors["optimizer"])
        scheduler.load_state_dict(tensors["scheduler"])
        set_rng_state(tensors["rng"])
        start = state["step"]
        truncate_metrics(out / "metrics.jsonl", start)
        console.print(f"sft: resumed from step {start}")
    elif (out / "metrics.jsonl").exists():
        (out / "metrics.jsonl").unlink()  # a fresh run starts a fresh log
    save_config(cfg, out)
    logger = MetricsLogger(out, cfg.report_to, config=to_dict(cfg))
    micro = max(1, cfg.batch_size // max(cfg.grad_accum, 1))
    model.train()
    last: dict = {}
    step = start
    columns = [TextColumn("sft"), BarColumn(), TextColumn("{task.completed}/{task.total} {task.fields[info]}"), TimeRemainingColumn()]
    try:
        with Progress(*columns, console=console, transient=False) as bar:
            task = bar.add_task("sft", total=cfg.max_steps, completed=start, info="")
            for step in range(start, cfg.max_steps):
                t0 = time.perf_counter()
                examples = [train[i] for i in batch_indices(step, cfg.batch_size, len(train), cfg.seed)]
                n_tokens = sum(sum(l != IGNORE_INDEX for l in e.labels[1:]) for e in examples)
                total = 0.0
                for i in range(0, len(examples), micro):
                    loss_sum, _ = response_loss(model, collate_right(examples[i:i + micro], tok.pad_token_id))
                    # Normalise by the whole batch's token count: accumulation then equals one big batch.
                    (loss_sum / max(n_tokens, 1)).backward()
                    total += float(loss_sum.detach())
                grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                lr = scheduler.get_last_lr()[0]
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                metrics = {"loss": total / max(n_tokens, 1), "lr": lr, "grad_norm": float(grad_norm),
                           "tokens": n_tokens, "time_step_s": time.perf_counter() - t0}
                done = step + 1
                if held and ((cfg.eval_every and done % cfg.eval_every == 0) or done == cfg.max_steps):
                    metrics.update(evaluate(model, held, tok.pad_token_id, cfg.batch_size))
                if done % cfg.log_every == 0 or done == cfg.max_steps or "eval_loss" in metrics:
                    last = logger.log(done, metrics)
                if cfg.save_every and done % cfg.save_every == 0 and done < cfg.max_steps:
                    save_checkpoint(out, model, optimizer, scheduler, done)
                bar.update(task, completed=done, info=f"loss {metrics['loss']:.3f}")
                step = done
    except KeyboardInterrupt:
        save_checkpoint(out, model, optimizer, scheduler, step)
        logger.close()
        raise
    save_checkpoint(out, model, optimizer, scheduler, step)
    save_final(cfg, out, model, tok)
    logger.close()
    console.print(f"sft: done, {step} steps; model saved to {out}")
    return last
