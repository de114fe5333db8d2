"""Direct preference optimisation: the policy learns the feedback's preferences straight from the pairs.

No reward model and no sampling: every feedback kind the reward model reads becomes (prompt, chosen,
rejected) pairs (``data/groups.py``: rankings give every ordered pair, ratings the pairs within a prompt,
edits edited ≻ original; a record's ``weight`` weights its pairs in the loss), held out by prompt. One step:
the policy's and the reference's log-probs of both answers of ``batch_size`` pairs (the reference is the policy with its LoRA adapters off, or a frozen copy
when every weight trains), the DPO or IPO loss (``rl/losses.py``), an optimiser step. The log-probs go
through the same code as PPO's training pass (``models/rollout.forward_tokens``: prompt left-padded, answer
right-padded, the fp32 head). Logged: ``loss``, ``reward_chosen``/``reward_rejected`` (β·(log π − log π_ref) of
each answer), ``reward_accuracy`` (share of pairs whose chosen reward is higher), ``reward_margin``,
``logp_chosen``/``logp_rejected`` and ``implicit_kl`` (the mean log π − log π_ref of the chosen answers: how
far the policy has moved on the data), and the held-out ``eval_loss``, ``eval_reward_accuracy``,
``eval_reward_margin``. With ``eval_prompts`` the policy also answers held-out prompts before training, at every
held-out evaluation and after the last step, logged as PPO logs them (``eval/heldout.py``: ``eval/gold_score``
by ``eval_judge``, ``eval/rm_score`` by ``eval_reward``, ``eval/kl``), so DPO's gold can be drawn against time
beside the online methods'.

KTO (``loss_type: kto``) learns from unpaired answers, each desirable or not: a rating by its score
(``desirable_rating``; an unpaired record or a thumb by its label), a preference's chosen answer desirable and its
rejected one not (rankings and edits through their pairs, as TRL unpairs them). A step scores its answers and, for
the reference point z₀, the same answers each after another prompt of the batch (mismatched, so they carry no label).
Logged: ``loss``, ``reward_desirable``/``reward_undesirable`` (β·(log π − log π_ref)), ``reward_margin`` (their
difference), ``reward_accuracy`` (the share of answers on their label's side of β·z₀), ``kl`` (z₀), and the same
held out.
"""

from __future__ import annotations

import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from rlhfkit import distributed as dist
from rlhfkit.accel.precision import autocast, resolve_precision
from rlhfkit.config import ConfigError, DPOConfig
from rlhfkit.data.formats import (RecordError, detect_kind, feedback_to_pairs, prompt_key, prompt_messages, read_records,
                                  record_weight)
from rlhfkit.data.groups import Group, build_groups
from rlhfkit.data.splits import batch_indices, none_held_out, split_records
from rlhfkit.data.tokenize import encode_prompt, encode_response, left_pad, pad_sequences
from rlhfkit.eval.heldout import held_out_eval
from rlhfkit.models.loading import add_lora, disable_dropout, load_start, load_tokenizer, save_model
from rlhfkit.models.reward import JudgeReward, load_reward
from rlhfkit.models.rollout import forward_tokens
from rlhfkit.rl.losses import chosen_nll, dpo_loss, kto_loss, kto_reference_point
from rlhfkit.run import Run


@dataclass
class EncodedPair:
    prompt: list[int]
    chosen: list[int]
    rejected: list[int]
    weight: float = 1.0  # how much the pair counts in the loss (the feedback record's ``weight``)


def encode_pairs(tok, groups: list[Group], cfg: DPOConfig) -> list[EncodedPair]:
    """Every preference of the groups as token ids: the prompt keeps its end, each answer (with EOS) its start."""
    pairs = []
    for g in groups:
        prompt = encode_prompt(tok, prompt_messages(g.prompt), cfg.chat)[-cfg.max_prompt_len:]
        room = max(cfg.max_len - len(prompt), 1)
        for chosen, rejected, _margin, _in_loss, weight in g.pairs:
            pairs.append(EncodedPair(prompt, encode_response(tok, g.responses[chosen])[:room],
                                     encode_response(tok, g.responses[rejected])[:room], weight))
    return pairs


@dataclass
class EncodedAnswer:
    """One unpaired answer (KTO): desirable or not."""

    prompt: list[int]
    answer: list[int]
    desirable: bool
    weight: float = 1.0


def unpaired_answers(records: list[dict], desirable_rating: float) -> list[tuple[dict, str, bool, float]]:
    """(prompt record, answer, desirable, weight) of every answer the feedback labels: a rating at or above
    ``desirable_rating`` (an unpaired record by its label), a preference's chosen answer and not its rejected one."""
    out = []
    for rec in records:
        prompt = {"messages": prompt_messages(rec)} if "messages" in rec else {"prompt": rec["prompt"]}
        if detect_kind(rec) == "rating":
            good = rec["label"] if isinstance(rec.get("label"), bool) else float(rec["score"]) >= desirable_rating
            out.append((prompt, rec["response"], good, record_weight(rec)))
            continue
        for pair in feedback_to_pairs([rec]):
            out += [(prompt, pair.chosen, True, pair.weight), (prompt, pair.rejected, False, pair.weight)]
    return out


def encode_answers(tok, answers: list[tuple[dict, str, bool, float]], cfg: DPOConfig) -> list[EncodedAnswer]:
    out = []
    for prompt, text, good, weight in answers:
        ids = encode_prompt(tok, prompt_messages(prompt), cfg.chat)[-cfg.max_prompt_len:]
        out.append(EncodedAnswer(ids, encode_response(tok, text)[:max(cfg.max_len - len(ids), 1)], good, weight))
    return out


def answer_logprobs(model, prompts: list[list[int]], answers: list[list[int]], pad_id: int, device,
                    average: bool = False) -> torch.Tensor:
    """Each answer's log-prob after its prompt under ``model``, (answers,): summed over the answer's tokens, or
    their mean with ``average`` (IPO). One pass for all of them."""
    query, query_mask = left_pad(prompts, pad_id)
    response, response_mask = pad_sequences(answers, pad_id, "right")
    query, query_mask, response, response_mask = (t.to(device) for t in (query, query_mask, response, response_mask))
    logprobs, _ = forward_tokens(model, query, query_mask, response, response_mask, temperature=1.0)
    mask = response_mask.to(logprobs.dtype)
    total = (logprobs * mask).sum(1)
    return total / mask.sum(1).clamp(min=1.0) if average else total


def chosen_tokens(pairs: list[EncodedPair], average: bool, like: torch.Tensor) -> torch.Tensor:
    """Each pair's chosen-answer tokens, (pairs,), to make its summed log-prob a per-token one (1s when the
    log-probs are length-averaged already, as IPO's are)."""
    return torch.tensor([1 if average else len(p.chosen) for p in pairs], dtype=like.dtype, device=like.device)


def sequence_logprobs(model, pairs: list[EncodedPair], pad_id: int, device, average: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected) log-probs of each pair's answers under ``model``, (pairs,) each; both in one pass."""
    total = answer_logprobs(model, [p.prompt for p in pairs] * 2, [p.chosen for p in pairs] + [p.rejected for p in pairs],
                            pad_id, device, average)
    return total[: len(pairs)], total[len(pairs):]


def kto_logprobs(model, batch: list[EncodedAnswer], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(matched, mismatched) log-probs: each answer after its own prompt, and after the next answer's prompt
    (the reference point's sample: the same answers, no label), in one pass."""
    n = len(batch)  # each answer after the next answer's prompt that is another prompt (a pair's two share one)
    shifted = [next((batch[k % n].prompt for k in range(i + 1, i + n) if batch[k % n].prompt != a.prompt), a.prompt)
               for i, a in enumerate(batch)]
    total = answer_logprobs(model, [a.prompt for a in batch] + shifted, [a.answer for a in batch] * 2, pad_id, device)
    return total[: len(batch)], total[len(batch):]


def kto_terms(policy, reference, batch: list[EncodedAnswer], cfg: DPOConfig, pad_id: int, device):
    """(per-answer losses, rewards, desirable mask, z₀) of a KTO batch; the policy's pass keeps its graph."""
    with torch.no_grad(), (policy.disable_adapter() if reference is None else nullcontext()):
        ref, ref_mismatched = kto_logprobs(reference if reference is not None else policy, batch, pad_id, device)
    pol, pol_mismatched = kto_logprobs(policy, batch, pad_id, device)
    kl = kto_reference_point(pol_mismatched, ref_mismatched)
    desirable = torch.tensor([a.desirable for a in batch], device=pol.device)
    losses, rewards = kto_loss(pol, ref, desirable, kl, cfg.beta, cfg.desirable_weight, cfg.undesirable_weight)
    return losses, rewards, desirable, kl


def kto_metrics(losses, rewards, desirable, kl, beta: float, prefix: str = "") -> dict:
    good, bad = rewards[desirable], rewards[~desirable]
    nan = float("nan")
    return {f"{prefix}loss": float(losses.mean()),
            f"{prefix}reward_accuracy": float(((rewards > beta * kl) == desirable).float().mean()),
            f"{prefix}reward_desirable": float(good.mean()) if len(good) else nan,
            f"{prefix}reward_undesirable": float(bad.mean()) if len(bad) else nan,
            f"{prefix}reward_margin": float(good.mean() - bad.mean()) if len(good) and len(bad) else nan,
            f"{prefix}kl": float(kl)}


def build_model(cfg: DPOConfig, ckpt: Path | None):
    """(policy, reference): the reference is None under LoRA (the policy with its adapters off)."""
    start = load_start(cfg.model)
    if cfg.lora:
        if ckpt is not None:
            from peft import PeftModel

            policy = PeftModel.from_pretrained(start, str(ckpt / "model"), is_trainable=True)
        else:
            policy = add_lora(start, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets)
        reference = None
    else:
        policy = load_start(str(ckpt / "model")) if ckpt is not None else start
        reference = load_start(cfg.model).requires_grad_(False)
        disable_dropout(reference)
    disable_dropout(policy)  # the same log-prob on every pass (docs/design.md §4.6)
    return policy, reference


def reference_logprobs(policy, reference, pairs, pad_id, device, average: bool):
    with torch.no_grad(), (policy.disable_adapter() if reference is None else nullcontext()):
        return sequence_logprobs(reference if reference is not None else policy, pairs, pad_id, device, average)


def pair_metrics(losses, chosen_rewards, rejected_rewards, prefix: str = "") -> dict:
    return {f"{prefix}loss": float(losses.mean()),
            f"{prefix}reward_accuracy": float((chosen_rewards > rejected_rewards).float().mean()),
            f"{prefix}reward_margin": float((chosen_rewards - rejected_rewards).mean())}


@torch.no_grad()
def evaluate(cfg: DPOConfig, policy, reference, held: list, pad_id: int, device, precision: str) -> dict:
    """Held-out loss, reward accuracy and margin over every held-out pair (KTO: answer)."""
    if cfg.loss_type == "kto":
        parts = []
        for i in range(0, len(held), cfg.batch_size):
            with autocast(precision, device.type):
                parts.append(kto_terms(policy, reference, held[i:i + cfg.batch_size], cfg, pad_id, device))
        losses, rewards, desirable, kls = zip(*parts)
        return kto_metrics(torch.cat(losses), torch.cat(rewards), torch.cat(desirable), torch.stack(kls).mean(), cfg.beta,
                           prefix="eval_")
    losses, chosen, rejected = [], [], []
    average = cfg.loss_type == "ipo"
    for i in range(0, len(held), cfg.batch_size):
        batch = held[i:i + cfg.batch_size]
        with autocast(precision, device.type):
            pc, pr = sequence_logprobs(policy, batch, pad_id, device, average)
            rc, rr = reference_logprobs(policy, reference, batch, pad_id, device, average)
        loss, c, r = dpo_loss(pc, pr, rc, rr, cfg.beta, cfg.loss_type, cfg.label_smoothing)
        loss = loss + cfg.rpo_alpha * chosen_nll(pc, chosen_tokens(batch, average, pc)) if cfg.rpo_alpha else loss
        losses.append(loss), chosen.append(c), rejected.append(r)
    return pair_metrics(torch.cat(losses), torch.cat(chosen), torch.cat(rejected), prefix="eval_")


def answer_eval(cfg: DPOConfig, tok):
    """For ``eval_prompts``: a function of (policy, reference) giving the held-out answers' metrics, or None."""
    if not cfg.eval_prompts:
        return None
    if not (cfg.eval_judge or cfg.eval_reward):
        raise ConfigError("dpo: eval_prompts needs eval_judge or eval_reward to score the answers")
    from rlhfkit.judges import get_judge

    records = read_records(cfg.eval_prompts, "prompt")
    prompts = [encode_prompt(tok, prompt_messages(r), cfg.chat)[-cfg.max_prompt_len:] for r in records]
    judge = get_judge(cfg.eval_judge) if cfg.eval_judge else None
    reward = load_reward(cfg.eval_reward, 32) if cfg.eval_reward else JudgeReward(cfg.eval_judge)

    def run(policy, reference, precision: str) -> dict:
        out = held_out_eval(policy, reference, tok, prompts, records, reward, judge, seed=cfg.seed, batch_size=cfg.batch_size,
                            max_new_tokens=cfg.eval_max_new_tokens, temperature=cfg.eval_temperature, precision=precision)
        if not cfg.eval_reward:
            out.pop("eval/rm_score", None)  # it was the judge again
        return out

    return run


def save_final(cfg: DPOConfig, out: Path, policy, tok) -> None:
    """The policy in save_pretrained form (LoRA: the adapter, and with merge_lora a merged model in merged/)."""
    if dist.is_main():
        save_model(policy, out)
        tok.save_pretrained(out)
        if cfg.lora and cfg.merge_lora:
            merged = policy.merge_and_unload()
            merged.save_pretrained(out / "merged")
            tok.save_pretrained(out / "merged")
    dist.barrier()


def train_dpo(cfg: DPOConfig) -> dict:
    """Run DPO as configured; returns the last logged metrics."""
    run = Run("dpo", cfg)
    out = run.out
    world, _ = run.processes(cfg.batch_size, "pairs")
    sharded = any(os.environ.get(f"ACCELERATE_USE_{engine}", "false").lower() == "true" for engine in ("FSDP", "DEEPSPEED"))
    if world > 1 or sharded:  # (its loop steps the optimiser itself, which a DeepSpeed engine would ignore)
        raise ConfigError("dpo: runs in one process, without FSDP or DeepSpeed, for now; start it without accelerate launch")
    records = read_records(cfg.data, "auto")  # the data first: a bad file fails before any model loads
    groups = build_groups(records)
    if cfg.eval_data:
        held_groups = build_groups(read_records(cfg.eval_data, "auto"))
        keys = {prompt_key(g.prompt) for g in held_groups}
        groups = [g for g in groups if prompt_key(g.prompt) not in keys]
    else:
        n_prompts = len(groups)
        groups, held_groups = split_records(groups, cfg.eval_fraction, cfg.seed)
    tok = load_tokenizer(cfg.model)
    kto = cfg.loss_type == "kto"
    if cfg.rpo_alpha < 0 or (kto and cfg.rpo_alpha):
        raise ConfigError(f"dpo: rpo_alpha: expected 0 or more with the sigmoid or ipo loss, got {cfg.rpo_alpha} "
                          f"({cfg.loss_type} loss)")
    if kto and cfg.batch_size // max(cfg.grad_accum, 1) < 2:
        raise ConfigError("dpo: kto needs at least 2 answers per micro-batch (batch_size / grad_accum): its reference "
                          "point pairs each answer with another answer's prompt")
    if kto:  # unpaired answers (a prompt may have one), held out by prompt as the pairs are
        keys = list(dict.fromkeys(prompt_key(r) for r in records))
        if cfg.eval_data:
            held_records = read_records(cfg.eval_data, "auto")
            train_keys = set(keys) - {prompt_key(r) for r in held_records}
        else:
            train_keys, held_keys = (set(k) for k in split_records(keys, cfg.eval_fraction, cfg.seed))
            held_records, n_prompts = [r for r in records if prompt_key(r) in held_keys], len(keys)
        train = encode_answers(tok, unpaired_answers([r for r in records if prompt_key(r) in train_keys],
                                                     cfg.desirable_rating), cfg)
        held = encode_answers(tok, unpaired_answers(held_records, cfg.desirable_rating), cfg)
        groups, held_groups = sorted(train_keys), sorted({prompt_key(r) for r in held_records})  # counted below
    else:
        train, held = encode_pairs(tok, groups, cfg), encode_pairs(tok, held_groups, cfg)
    answers = answer_eval(cfg, tok)  # its prompts are read (and checked) before any model loads
    if not train:
        raise RecordError(cfg.data, None, "no preference pairs (every record was a tie, an unchanged edit or not feedback)")
    accelerator = dist.get_accelerator(max(cfg.grad_accum, 1), max(1, cfg.batch_size // max(cfg.grad_accum, 1)))
    device = accelerator.device
    precision = resolve_precision(cfg.precision, device.type)
    empty = "" if cfg.eval_data else none_held_out(n_prompts, cfg.eval_fraction, held_groups, "prompts")
    what = "answers" if kto else "pairs"
    desirable = f" ({sum(a.desirable for a in train)} desirable)" if kto else ""
    run.say(f"{len(train)} train {what}{desirable} ({len(groups)} prompts) / {len(held)} held-out {what} ({len(held_groups)} "
            f"prompts){empty}; β {cfg.beta}, {cfg.loss_type} loss, precision {precision}")

    ckpt = run.checkpoint_to_resume()
    policy, reference = build_model(cfg, ckpt)
    if reference is not None:
        reference.to(device)
    policy, optimizer, scheduler, params = run.prepare(policy, accelerator, head_apart=True)  # the head: accel/head.py
    start = run.begin(optimizer, scheduler, ckpt)
    t_start = time.perf_counter()  # the budget's clock: from here
    eval_total_s, last_eval_s = 0.0, None  # the held-out evaluations' seconds; the deadline keeps room for the last one
    first_step_s = None
    if answers is not None and start == 0:  # step 0: the start policy, the point the curve is compared with
        policy.eval()
        run.logger.log(0, answers(policy, reference, precision))
        dist.reshard(policy)  # FSDP: the evaluation's gathered weights freed
        policy.train()
        last_eval_s = eval_total_s = time.perf_counter() - t_start

    def save(folder: Path | None) -> None:  # the checkpoint's model/: the adapters (LoRA) or every weight
        if folder is not None:
            save_model(policy, folder / "model")

    average = cfg.loss_type == "ipo"  # IPO compares length-averaged log-probs
    micro = max(1, cfg.batch_size // max(cfg.grad_accum, 1))
    policy.train()
    evals = bool(held) or answers is not None
    with run.loop(start, save) as loop:
        for step in range(start, cfg.max_steps):
            t0 = time.perf_counter()
            batch = [train[i] for i in batch_indices(step, cfg.batch_size, len(train), cfg.seed)]
            total_weight = sum(p.weight for p in batch)  # the pairs' count when every weight is 1
            parts = []
            for i in range(0, len(batch), micro):
                mb = batch[i:i + micro]
                with autocast(precision, device.type):
                    if kto:  # unpaired answers against the reference point
                        losses, rewards, good, kl = kto_terms(policy, reference, mb, cfg, tok.pad_token_id, device)
                    else:
                        rc, rr = reference_logprobs(policy, reference, mb, tok.pad_token_id, device, average)
                        pc, pr = sequence_logprobs(policy, mb, tok.pad_token_id, device, average)
                if not kto:
                    losses, chosen, rejected = dpo_loss(pc, pr, rc, rr, cfg.beta, cfg.loss_type, cfg.label_smoothing)
                    if cfg.rpo_alpha:  # RPO: + α × the chosen answer's NLL per token
                        losses = losses + cfg.rpo_alpha * chosen_nll(pc, chosen_tokens(mb, average, pc))
                weight = torch.tensor([p.weight for p in mb], dtype=losses.dtype, device=losses.device)
                # the (weighted) mean over the step's pairs (KTO: answers), whatever the micro-batches
                ((losses * weight).sum() / total_weight).backward()
                parts.append((losses.detach(), rewards, good, kl) if kto else
                             (losses.detach(), chosen, rejected, pc.detach(), pr.detach(), (pc - rc).detach()))
            with loop.step(step + 1) as done:  # Ctrl-C from here waits for the step's log line and checkpoint
                grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                lr = scheduler.get_last_lr()[0]
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                if kto:
                    losses, rewards, good, kls = zip(*parts)
                    metrics = kto_metrics(torch.cat(losses), torch.cat(rewards), torch.cat(good), torch.stack(kls).mean(),
                                          cfg.beta)
                else:
                    losses, chosen, rejected, pc, pr, chosen_logratio = (torch.cat(x) for x in zip(*parts))
                    metrics = {**pair_metrics(losses, chosen, rejected), "reward_chosen": float(chosen.mean()),
                               "reward_rejected": float(rejected.mean()), "logp_chosen": float(pc.mean()),
                               "logp_rejected": float(pr.mean()), "implicit_kl": float(chosen_logratio.mean())}
                # batch_size: the step's pairs (KTO: answers), so pairs per second can be read off the log
                metrics.update(batch_size=len(batch), lr=lr, grad_norm=float(grad_norm), time_step_s=time.perf_counter() - t0)
                # stop when the next step (as long as the mean of those after the first) and the final held-out evaluation (as
                # long as the last one, or estimated: a forward pass of each held-out pair is about half a step's work
                # per pair); without time_budget_counts_eval, the budget is the training steps' seconds alone
                elapsed = time.perf_counter() - t_start
                # the first step carries one-off costs (on an AVX2-only machine 79-106 s against 32-44 s for the next
                # ones): until a second has run it is not taken as the next one's length, and then it is left out
                if first_step_s is None:
                    first_step_s = metrics["time_step_s"]
                trained_s, steps_after_first = elapsed - eval_total_s - first_step_s, done - start - 1
                mean_step = trained_s / steps_after_first if steps_after_first else 0.0
                reserve = (last_eval_s if last_eval_s is not None else 0.5 * (mean_step or first_step_s) * len(held) / cfg.batch_size) if evals else 0.0
                if not cfg.time_budget_counts_eval:
                    elapsed, reserve = elapsed - eval_total_s, 0.0
                loop.ending = (cfg.time_budget_minutes is not None
                               and elapsed + mean_step + reserve > 60 * cfg.time_budget_minutes)
                if loop.eval_due(done, evals) or (loop.ending and evals):
                    t_eval = time.perf_counter()
                    policy.eval()
                    if held:
                        metrics.update(evaluate(cfg, policy, reference, held, tok.pad_token_id, device, precision))
                    if answers is not None:
                        metrics.update(answers(policy, reference, precision))
                    dist.reshard(policy)  # FSDP: the evaluation's gathered weights freed
                    policy.train()
                    last_eval_s = metrics["time_eval_s"] = time.perf_counter() - t_eval
                    eval_total_s += last_eval_s
                loop.log(done, metrics, f"loss {metrics['loss']:.3f} acc {metrics['reward_accuracy']:.2f}",
                         always="time_eval_s" in metrics)
            if loop.ending:
                run.say(f"time budget of {cfg.time_budget_minutes:g} min used up after step {done}")
                break
    run.finish(loop.done, lambda: save_final(cfg, out, policy, tok))
    run.say(f"done, {loop.done} steps; policy saved to {out}")
    return loop.last
