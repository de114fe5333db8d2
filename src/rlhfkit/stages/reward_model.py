"""Reward-model training: a one-output sequence classifier trained on human feedback.

Feedback of every kind becomes preferences inside a *group* (one prompt and its distinct responses,
``data/groups.py``). A batch is a set of groups: every pair of a prompt is in the same batch and each
distinct response is scored once per batch. Train and validation are split by prompt.

Loss (Bradley–Terry, Ouyang et al. 2022): −log σ(r_chosen − r_rejected − margin), margin optional; ratings
may instead be regressed on. After training, the model scores reference-policy samples and stores their
mean/std (``reward_stats.json``) so PPO can normalise scores (docs/design.md §4.2). The model's input text,
pooling and scorer live in ``models/reward.py``.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from rlhfkit import distributed as dist
from rlhfkit.accel.precision import autocast, resolve_precision
from rlhfkit.config import ConfigError, RewardConfig
from rlhfkit.data.formats import RecordError, detect_kind, prompt_key, read_located, read_records, record_responses
from rlhfkit.data.groups import Group, build_groups, flatten, gold_groups
from rlhfkit.data.splits import batch_indices, none_held_out, split_records
from rlhfkit.judges import get_judge
from rlhfkit.models.loading import save_model
from rlhfkit.models.reward import (
    CARD_FILE,
    STATS_FILE,
    RewardModule,
    RewardScorer,
    build_reward_model,
    is_encoder_tokenizer,
    reward_card,
    rm_inputs,
    score_texts,
)
from rlhfkit.run import Run, console  # one console: Run keeps every rank but the first quiet

SPLIT_FILE = "split.json"


# ---------------------------------------------------------------------------------------------- maths


def bt_loss(chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor | None = None,
            divisor: float | None = None, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Bradley–Terry loss −log σ(r_c − r_r − margin), mean over pairs; inputs (n_pairs,).

    ``weight``: each pair's weight (the feedback record's), making it a weighted mean; None: every pair 1.
    ``divisor``: divide the (weighted) sum by this instead (the whole step's pair weight, when processes share a batch).
    """
    diff = chosen - rejected
    if margin is not None:
        diff = diff - margin
    losses = -F.logsigmoid(diff)
    if weight is not None:
        losses = losses * weight
    if divisor is not None:
        return losses.sum() / divisor
    return losses.mean() if weight is None else losses.sum() / weight.sum()


def target_weight(g: Group, i: int) -> tuple[float, float]:
    """(the regression target, its weight) of response ``i``: its ratings' weighted mean and mean weight."""
    ys = g.targets[i]
    ws = g.target_weights.get(i) or [1.0] * len(ys)
    return sum(w * y for w, y in zip(ws, ys)) / sum(ws), sum(ws) / len(ws)


def loss_counts(groups: list[Group]) -> tuple[float, float]:
    """(weight of the pairs in the Bradley–Terry loss, weight of the regression targets) of some groups: the
    divisors of their mean losses (counts when every weight is 1)."""
    return (sum(w for g in groups for *_, bt, w in g.pairs if bt),
            sum(target_weight(g, i)[1] for g in groups for i in g.targets))


def batch_loss(rewards: torch.Tensor, groups: list[Group], offsets: list[int], use_margin: bool,
               counts: tuple[int, int] | None = None) -> tuple[torch.Tensor, dict]:
    """Loss and pair metrics of a batch of groups; ``rewards`` (n_responses,) holds group g's responses from offsets[g].

    ``counts``: :func:`loss_counts` of the whole step's batch when ``groups`` is one process's share of it;
    the sums are divided by them, so the shares' losses add up to the whole batch's mean loss.
    Metrics: ``n_correct`` pairs ranked right of ``n_pairs``, ``accuracy``, ``reward_gap``, ``loss``.
    """
    c, r, m, in_loss, w, reg_idx, reg_y, reg_w = [], [], [], [], [], [], [], []
    for g, off in zip(groups, offsets):
        for ci, ri, margin, bt, weight in g.pairs:
            c.append(off + ci), r.append(off + ri), m.append(margin), in_loss.append(bt), w.append(weight)
        for i in g.targets:
            y, weight = target_weight(g, i)
            reg_idx.append(off + i), reg_y.append(y), reg_w.append(weight)
    loss = rewards.sum() * 0.0
    metrics: dict = {"n_pairs": len(c), "n_correct": 0, "accuracy": float("nan"), "reward_gap": float("nan")}
    if c:
        rc, rr = rewards[torch.tensor(c)], rewards[torch.tensor(r)]  # (n_pairs,)
        mask = torch.tensor(in_loss)
        if mask.any():
            margin = torch.tensor(m)[mask] if use_margin else None
            weight = torch.tensor(w)[mask] if any(x != 1.0 for x in w) else None  # None: the plain mean
            loss = loss + bt_loss(rc[mask], rr[mask], margin, None if counts is None else counts[0], weight)
        metrics["n_correct"] = int((rc > rr).sum())
        metrics["accuracy"] = float((rc > rr).float().mean())
        metrics["reward_gap"] = float((rc - rr).detach().mean())
    if reg_idx:
        pred, y = rewards[torch.tensor(reg_idx)], torch.tensor(reg_y)
        # regression on ratings, each response weighted by its ratings' mean weight
        sq = F.mse_loss(pred, y, reduction="none")
        if any(x != 1.0 for x in reg_w):
            sq = sq * torch.tensor(reg_w)
        loss = loss + (sq.sum() / (sum(reg_w) if counts is None else counts[1]))
    metrics["loss"] = float(loss.detach())
    return loss, metrics


def evaluate_groups(score_fn, groups: list[Group], use_margin: bool = False) -> dict:
    """Held-out loss, pair accuracy, reward gap and pair count; ``score_fn(prompts, responses) -> (n,)``."""
    if not groups:
        return {"loss": float("nan"), "accuracy": float("nan"), "reward_gap": float("nan"), "n_pairs": 0}
    prompts, responses, offsets = flatten(groups)
    rewards = score_fn(prompts, responses)
    _, metrics = batch_loss(rewards, groups, offsets, use_margin)
    return metrics


# ---------------------------------------------------------------------------------------------- training


def classifier(accelerator, module):
    """The classifier (or its LoRA wrapper) inside a prepared :class:`RewardModule`."""
    return dist.unwrap(accelerator, module).model


def classifier_state(accelerator, module) -> dict:
    """``save_pretrained`` arguments for the classifier: its gathered weights when FSDP/ZeRO shard them."""
    state = dist.gathered_state(accelerator, module)
    if "state_dict" in state:
        state["state_dict"] = {k.removeprefix("model."): v for k, v in state["state_dict"].items()}
    return state


def save_final(cfg: RewardConfig, out: Path, module, tok, accelerator=None):
    """A plain ``save_pretrained`` classifier (LoRA merged) that AutoModelForSequenceClassification loads.

    Called on every rank; rank 0 writes. Returns the classifier that was saved (on other ranks: unmerged).
    """
    gathered = classifier_state(accelerator, module)
    model = classifier(accelerator, module)
    if dist.is_main():
        if cfg.lora:
            model = model.merge_and_unload()
        model.save_pretrained(out, **gathered)
        if is_encoder_tokenizer(tok):  # an encoder pools [CLS] at position 0: plain `tok(..., padding=True)` batches pad right
            tok.padding_side = "right"
        tok.save_pretrained(out)
        (out / CARD_FILE).write_text(reward_card(tok, model, cfg.max_len), encoding="utf-8")  # the layout, as code
    dist.barrier()
    return model


def reference_samples(cfg: RewardConfig, groups: list[Group]) -> tuple[list[dict], list[str], str]:
    """Reference-policy samples for reward_stats: up to ``stats_samples`` of the data's responses, or ``stats_policy``'s own samples."""
    if not cfg.stats_policy:
        prompts, responses, _ = flatten(groups)
        # A seeded subset: scoring every response with a large backbone on a CPU would take longer than training.
        keep = sorted(torch.randperm(len(responses), generator=torch.Generator().manual_seed(cfg.seed))[: cfg.stats_samples].tolist())
        return [prompts[i] for i in keep], [responses[i] for i in keep], f"data:{cfg.data}"
    from rlhfkit.models.generation import generate_texts
    from rlhfkit.models.loading import load_causal_lm, load_tokenizer

    tok = load_tokenizer(cfg.stats_policy)
    policy = load_causal_lm(cfg.stats_policy)
    prompts = [groups[i % len(groups)].prompt for i in range(cfg.stats_samples)]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        responses = generate_texts(policy, tok, prompts, cfg.stats_max_new_tokens, cfg.stats_temperature,
                                   batch_size=16, progress=True)
    return prompts, responses, cfg.stats_policy


def load_feedback(cfg: RewardConfig) -> tuple[list[Group], list[Group]]:
    """Train and held-out groups: ``eval_data``'s prompts, or a seeded share of the prompts (never both sides)."""
    records = read_records(cfg.data, "auto")
    other = sum(detect_kind(r) in ("sft", "prompt") for r in records)
    if other:
        console.print(f"rm: {cfg.data}: {other} records are not feedback (SFT or prompt records) and are not used")
    groups = build_groups(records, cfg.rating_loss)
    if cfg.eval_data:
        held = build_groups(read_records(cfg.eval_data, "auto"), cfg.rating_loss)
        keys = {prompt_key(g.prompt) for g in held}
        return [g for g in groups if prompt_key(g.prompt) not in keys], held
    return split_records(groups, cfg.eval_fraction, cfg.seed)


class RewardHealthError(RuntimeError):
    """Training stopped on a non-finite loss or gradient, before that update reached the weights."""


def stop_if_non_finite(step: int, values: dict, out: Path) -> None:
    """Raise RewardHealthError when any of ``values`` (loss, gradient norm; None: not measured) is NaN/inf.

    Called between the backward pass and the optimiser step, so the weights and every checkpoint stay finite.
    """
    bad = [name for name, v in values.items() if v is not None and not math.isfinite(float(v))]
    if bad:
        raise RewardHealthError(f"step {step}: {', '.join(bad)} is NaN/inf: stopped before updating the weights; any "
                                f"checkpoint in {out / 'checkpoint'} is kept as it was. Usually a learning rate too high or feedback "
                                "with extreme scores or margins: lower lr or check the data, then resume with --resume")


def train_reward(cfg: RewardConfig) -> dict:
    """Train a reward model as configured; returns the last logged metrics (with the final evaluation)."""
    from rlhfkit.models.loading import load_tokenizer

    run = Run("rm", cfg)
    out = run.out
    world, me = run.processes(cfg.batch_size, "prompts")
    from accelerate.utils import DistributedDataParallelKwargs

    # Mean pooling (opt-in) leaves an encoder's pooler out of the graph; DDP must be told some parameters get no gradient.
    accelerator = dist.get_accelerator(1, cfg.batch_size // world,
                                       kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    precision = resolve_precision(cfg.precision, accelerator.device.type)
    train, held = load_feedback(cfg)
    if not train:
        raise RecordError(cfg.data, None, "no training pairs (every record was a tie or an unchanged edit?)")
    n_pairs = sum(len(g.pairs) for g in train)
    empty = "" if cfg.eval_data else none_held_out(len(train) + len(held), cfg.eval_fraction, held, "prompts")
    run.say(f"{len(train)} train prompts ({n_pairs} pairs) / {len(held)} held-out prompts "
            f"({sum(len(g.pairs) for g in held)} pairs); precision {precision}{empty}")
    tok = load_tokenizer(cfg.model)
    if cfg.pooling == "mean" and is_encoder_tokenizer(tok):
        run.say("pooling: mean — AutoModelForSequenceClassification's own forward pools [CLS] and will score this model "
                f"differently; score it with rlhfkit or with the function in {out / 'README.md'} (pooling: cls matches)")

    if cfg.lora and dist.is_sharded(accelerator):
        raise ConfigError(f"lora: a LoRA reward model is not supported under {accelerator.distributed_type.value} (its merge "
                          "for saving works on whole weights); train it under DDP (configs/accelerate/ddp.yaml) or without LoRA")
    ckpt = run.checkpoint_to_resume()
    model, optimizer, scheduler, params = run.prepare(RewardModule(build_reward_model(cfg, ckpt)), accelerator)
    sharded = dist.is_fsdp(accelerator)  # then every scoring pass goes through the prepared module, which gathers
    if world > 1:
        run.say(f"{world} processes ({accelerator.distributed_type.value}), {cfg.batch_size // world} prompts each per step")
    start = run.begin(optimizer, scheduler, ckpt)
    if dist.is_main():
        (out / SPLIT_FILE).write_text(json.dumps({"eval_prompts": [g.prompt for g in held]}, ensure_ascii=False), encoding="utf-8")

    def save(folder: Path | None) -> None:  # the checkpoint's model/
        gathered = classifier_state(accelerator, model)  # every rank: FSDP/ZeRO gather their shards
        if folder is not None:
            save_model(classifier(accelerator, model), folder / "model", **gathered)

    def score_fn(prompts, responses):
        # Every rank scores the whole held-out set: identical passes everywhere (sharded models need them).
        if not sharded:
            return score_texts(classifier(accelerator, model), tok, prompts, responses, cfg.max_len, cfg.score_batch_size)
        scores = score_texts(model, tok, prompts, responses, cfg.max_len, cfg.score_batch_size)
        dist.reshard(model)  # the gathered weights freed: the shards are what the optimiser and checkpoint see
        return scores

    model.train()
    with run.loop(start, save) as loop:
        for step in range(start, cfg.max_steps):
            t0 = time.perf_counter()
            batch = [train[i] for i in batch_indices(step, cfg.batch_size, len(train), cfg.seed)]  # global batch
            counts = loss_counts(batch) if world > 1 else None  # None: plain means, as one process always did
            mine = dist.shard(batch, me, world)  # whole groups: a prompt's pairs stay together
            prompts, responses, offsets = flatten(mine)  # each distinct response once per batch
            with autocast(precision, accelerator.device.type):
                rewards = model(**dist.to_device(rm_inputs(tok, prompts, responses, cfg.max_len), accelerator.device))
            # Sums over my pairs ÷ the GLOBAL batch's counts: the ranks' losses add up to the one-process loss.
            loss, metrics = batch_loss(rewards, mine, offsets, cfg.use_margin, counts)
            metrics.pop("reward_gap")  # logged for held-out pairs only (docs/design.md §8, reward-model metrics)
            accelerator.backward(loss * world)  # × world undoes DDP's mean of the ranks' gradients
            loss_sum, n_correct, n_pairs, n_examples = dist.all_reduce_sum(
                [metrics["loss"], metrics.pop("n_correct"), metrics["n_pairs"], len(responses)])
            metrics.update({"loss": loss_sum, "n_pairs": int(n_pairs),
                            "accuracy": n_correct / n_pairs if n_pairs else float("nan")})
            with loop.step(step + 1) as done:  # Ctrl-C from here waits for the step's log line and checkpoint
                grad_norm = accelerator.clip_grad_norm_(params, cfg.grad_clip)
                stop_if_non_finite(done, {"loss": loss_sum, "grad_norm": grad_norm}, out)
                lr = scheduler.get_last_lr()[0]
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                metrics.update({"lr": lr, "grad_norm": float("nan") if grad_norm is None else float(grad_norm),
                                "examples": int(n_examples), "time_step_s": time.perf_counter() - t0})
                if loop.eval_due(done, bool(held)):
                    ev = evaluate_groups(score_fn, held, cfg.use_margin)
                    metrics.update({"eval_loss": ev["loss"], "eval_accuracy": ev["accuracy"], "reward_gap": ev["reward_gap"]})
                loop.log(done, metrics, f"loss {metrics['loss']:.3f} acc {metrics.get('accuracy', float('nan')):.2f}",
                         always="eval_loss" in metrics)

    def save_final_and_stats() -> dict:
        final = save_final(cfg, out, model, tok, accelerator)
        final.eval()
        # Every rank scores the same samples (sharded models need identical passes); rank 0 writes the stats.
        with dist.whole_models(accelerator):  # stats_policy samples on its own, outside any sharding
            prompts, responses, policy = reference_samples(cfg, train + held)
        scores = score_fn(prompts, responses) if sharded else score_texts(final, tok, prompts, responses, cfg.max_len,
                                                                          cfg.score_batch_size)
        stats = {"mean": float(scores.mean()), "std": float(scores.std()) if len(scores) > 1 else 1.0, "n": len(scores), "policy": policy}
        if dist.is_main():
            (out / STATS_FILE).write_text(json.dumps(stats, indent=1, allow_nan=False), encoding="utf-8")
        return stats

    stats = run.finish(loop.done, save_final_and_stats)
    run.say(f"done, {loop.done} steps; reward model saved to {out} (reference scores mean {stats['mean']:.3f}, std {stats['std']:.3f})")
    return loop.last


# ---------------------------------------------------------------------------------------------- CLI helpers


def score_file(model: str, data: str, output: str | None = None, batch_size: int = 16, normalize: bool = False) -> dict:
    """``rlhf rm score``: score candidates (adds "rewards") or prompt+response records (adds "reward")."""
    from rlhfkit.data.formats import write_records

    located = read_located(data, "prompt")
    records = [rec for _, rec in located]
    prompts, responses, owners = [], [], []
    for i, (where, rec) in enumerate(located):
        for text in record_responses(rec, where):
            prompts.append(rec), responses.append(text), owners.append(i)
    scorer = RewardScorer.load(model)
    scores = scorer.score(prompts, responses, batch_size)
    if normalize:
        scores = scorer.normalize(scores)
    if output:
        per: dict[int, list[float]] = {}
        for i, s in zip(owners, scores.tolist()):
            per.setdefault(i, []).append(s)
        write_records(output, [{**rec, "rewards": per[i]} if "responses" in rec else {**rec, "reward": per[i][0]}
                               for i, rec in enumerate(records)])
    n = len(scores)
    return {"n": n, "mean": float(scores.mean()) if n else None, "std": float(scores.std()) if n > 1 else None}


def score_groups(model: str | Path, groups: list[Group], batch_size: int = 16) -> dict:
    """A reward model's held-out loss, pair accuracy, reward gap and pair count on ``groups``."""
    scorer = RewardScorer.load(model)
    return evaluate_groups(lambda p, r: scorer.score(p, r, batch_size), groups)


def eval_file(model: str, data: str, judge: str | None = None, batch_size: int = 16) -> dict:
    """``rlhf rm eval``: pair accuracy, loss, reward gap on a feedback file (or candidates ordered by a gold judge)."""
    if judge:
        groups = gold_groups(read_records(data, "candidates"), get_judge(judge))
    else:
        groups = build_groups(read_records(data, "auto"), "pairs")
    if not groups:
        raise RecordError(data, None, "no pairs to evaluate (every record was a tie, an unchanged edit or not feedback)")
    metrics = score_groups(model, groups, batch_size)
    return {"accuracy": metrics["accuracy"], "n_pairs": metrics["n_pairs"], "reward_gap": metrics["reward_gap"],
            "loss": metrics["loss"], "n_prompts": len(groups)}
