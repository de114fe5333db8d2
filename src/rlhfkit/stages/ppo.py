"""PPO for language models (``rlhf ppo``): collect → rewards and advantages → optimise → log → check.

Each step reads top to bottom:
1. rollout: sample a response per prompt, reference log-probs, values, raw scores (``rollout.collect``);
2. score normalisation with the reward model's stored stats, missing-EOS penalty, per-token k1 KL penalty,
   GAE and masked advantage whitening (``advantages``);
3. ``ppo_epochs`` passes over ``num_minibatches`` shuffled minibatches: clipped policy loss + vf_coef ×
   clipped value loss, one AdamW over policy and value parameters, grad-norm clip; optional early stop
   on approximate KL;
4. β update, metrics (``metrics.jsonl``, TensorBoard), health checks, checkpoint;
5. with ``eval_prompts``, before training, every ``eval_every`` steps and after the last: the held-out proxy, gold,
   KL and grading accuracy (``evaluate``), a row of ``snapshots.json`` and the policy as ``snapshots/step-NNNN/``,
   so the over-optimisation curve has a point per snapshot and a user can take the one the proxy ranks first.
The prompts of step ``s`` are a pure function of (seed, s) and every RNG state is checkpointed, so
``--resume`` continues exactly as an unbroken run.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import os
import re
import resource
import shutil
import time
from pathlib import Path

import torch

from rlhfkit import distributed as dist
from rlhfkit.accel import speed_up
from rlhfkit.accel.precision import autocast, keep_input_dtype, resolve_precision
from rlhfkit.checkpoint import atomic_dir
from rlhfkit.config import ConfigError, PPOConfig
from rlhfkit.data.formats import prompt_messages, read_records
from rlhfkit.data.splits import batch_indices
from rlhfkit.data.tokenize import encode_prompt
from rlhfkit.eval.heldout import held_out_eval
from rlhfkit.models.loading import (
    add_lora,
    disable_dropout,
    load_causal_lm,
    load_sequence_classifier,
    load_start,
    load_tokenizer,
    save_model,
)
from rlhfkit.models.reward import load_reward
from rlhfkit.models.rollout import Rollout, collect, concat, forward_tokens
from rlhfkit.models.value import ValueHead, ValueModel, can_be_value_model
from rlhfkit.rl.advantages import (
    AdaptiveKLController,
    FixedKLController,
    discounted_returns,
    gae,
    group_advantages,
    kl_estimate,
    kl_penalty_rewards,
    leave_one_out,
    masked_mean,
    masked_whiten,
)
from rlhfkit.rl.health import HealthMonitor
from rlhfkit.rl.losses import aggregate, explained_variance, policy_loss, value_loss
from rlhfkit.run import Run, console  # one console: Run keeps every rank but the first quiet
from rlhfkit.tracking import read_snapshots


class PPOHealthError(RuntimeError):
    """The run stopped on non-finite metrics; the last good checkpoint is kept."""


# ------------------------------------------------------------------------------------------------ models


def build_policy(cfg: PPOConfig, ckpt: Path | None):
    """(policy, reference); reference None means the policy with its adapters disabled (LoRA)."""
    start = load_start(cfg.policy)
    if cfg.lora and cfg.precision == "bf16":
        # The frozen base (= the reference) in bf16: decoding and every pass stream half the bytes and autocast
        # has no fp32 weights to re-cast on each call. peft keeps the adapters — all that trains — in fp32.
        start = start.to(torch.bfloat16)
    if cfg.lora:
        if ckpt is not None:
            from peft import PeftModel

            policy = PeftModel.from_pretrained(start, str(ckpt / "policy"), is_trainable=True)
        else:
            policy = add_lora(start, cfg.lora_r, cfg.lora_alpha, 0.0, cfg.lora_targets)
    else:
        policy = load_causal_lm(str(ckpt / "policy")) if ckpt is not None else start
    if cfg.lora and cfg.precision == "bf16":
        keep_input_dtype(policy)
    reference = None
    if cfg.reference is not None or not cfg.lora:
        reference = load_start(cfg.reference or cfg.policy)
        reference.requires_grad_(False)
        disable_dropout(reference)
    disable_dropout(policy)  # docs/design.md §4.6: dropout off in every model
    if cfg.gradient_checkpointing:
        policy.gradient_checkpointing_enable()
        if cfg.lora:
            policy.enable_input_require_grads()
    return policy, reference


def same_vocab(tok_a, tok_b) -> bool:
    return tok_a is not None and tok_b is not None and tok_a.get_vocab() == tok_b.get_vocab()


def build_value(cfg: PPOConfig, policy, tok, reward, ckpt: Path | None):
    """(value_model, value_head, kind): exactly one of the two is set; neither for a critic-free ``algo``."""
    if cfg.algo != "ppo":
        return None, None, "none (critic-free)"
    kind = cfg.value_model
    if kind == "reward":
        reason = None
        if reward.model is None:
            reason = f"the reward is the judge {reward.name!r}, which has no weights"
        elif not same_vocab(reward.tokenizer, tok):
            reason = "the reward model's tokenizer differs from the policy's, and values are needed per policy token"
        elif not can_be_value_model(reward.model):
            reason = "the reward model has no per-position score head"
        if reason:
            console.print(f"ppo: value model: {reason}; using a value head on the policy instead (--value-model head)")
            kind = "head"
    if kind == "head":
        head = ValueHead(policy.config.hidden_size)
        return None, head, kind
    mean, std = 0.0, 1.0
    if ckpt is not None:
        classifier = load_sequence_classifier(str(ckpt / "value"))  # its head comes from the trainer state
    elif kind == "reward":
        classifier = copy.deepcopy(reward.model)  # N+ paper: the value model starts as the reward model
        if reward.stats:
            mean, std = reward.stats["mean"], reward.stats["std"]
    else:
        if not same_vocab(load_tokenizer(kind), tok):
            raise ValueError(f"value_model: {kind}: its tokenizer differs from the policy's; use head or reward")
        classifier = load_sequence_classifier(kind)
    disable_dropout(classifier)
    if not can_be_value_model(classifier):
        raise ValueError(f"value_model: {kind}: not a decoder classifier with a linear score head")
    return ValueModel(classifier, mean, std), None, kind


def trainable(module) -> list[torch.nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]


# ------------------------------------------------------------------------------------------------ one step


def kl_estimator(cfg: PPOConfig) -> str:
    """The per-token KL estimator: as set, or k3 for GRPO (its KL is a loss term) and k1 for the others."""
    return cfg.kl_estimator if cfg.kl_estimator != "auto" else ("k3" if cfg.algo == "grpo" else "k1")


def compute_advantages(cfg: PPOConfig, r: Rollout, scores: torch.Tensor, reward, beta: float) -> dict:
    """Everything the optimisation needs from a rollout: rewards, advantages, returns (B, R).

    The score first (every algorithm): normalised (§4.2), the missing-EOS penalty (§4.3). Then, by ``algo``:
    - ppo: leave-one-out over the prompt's answers (``prompt_baseline``), −β·KL per token + the score on the last
      token, GAE on the value model's values, whitened advantages (§4.1, §4.4);
    - grpo: the answer's advantage is its score centred (and scaled: ``scale_rewards``) within its prompt's
      group, on every token; the KL is not in the reward but in the loss (:func:`ppo_loss`);
    - rloo: the score less β × the answer's summed KL, then less the mean of the prompt's other answers;
    - reinforce++: −β·KL per token + the score on the last token, the return to go (no critic), normalised over
      the whole batch.
    """
    mask = r.response_mask.float()
    k, estimator = cfg.samples_per_prompt, kl_estimator(cfg)
    final = reward.normalize(scores)  # docs/design.md §4.2: mean 0, std 1 on reference samples
    if cfg.missing_eos_penalty is not None:
        final = torch.where(r.has_eos, final, torch.full_like(final, cfg.missing_eos_penalty))  # docs/design.md §4.3
    if cfg.algo in ("ppo", "reinforce++") and k > 1 and cfg.prompt_baseline:
        final = leave_one_out(final, k)  # rows of one prompt are adjacent
    if cfg.algo == "ppo":
        rewards, kl, non_score = kl_penalty_rewards(r.logprobs, r.ref_logprobs, final, mask, beta, estimator)
        advantages, returns = gae(rewards, r.values, mask, cfg.gamma, cfg.lam)  # γ=1, λ=0.95
    elif cfg.algo == "reinforce++":
        rewards, kl, non_score = kl_penalty_rewards(r.logprobs, r.ref_logprobs, final, mask, beta, estimator)
        advantages = returns = discounted_returns(rewards, mask, cfg.gamma)  # the return to go is the advantage
    else:
        kl = kl_estimate(r.logprobs, r.ref_logprobs, estimator) * mask
        non_score = -beta * kl
        if cfg.algo == "grpo":
            sequence = group_advantages(final, k, cfg.scale_rewards)  # the KL goes into the loss instead
        else:  # rloo: the KL penalty of the whole answer in its reward, then the leave-one-out baseline
            sequence = leave_one_out(final - beta * kl.sum(1), k)
        advantages = sequence[:, None] * mask  # the answer's advantage on each of its tokens
        rewards, returns = non_score, torch.zeros_like(advantages)
    if cfg.whiten_advantages and cfg.algo != "grpo":  # GRPO's group normalisation is its own
        advantages = masked_whiten(advantages, mask)  # over the batch, padding ignored (REINFORCE++'s global normalisation)
    return {"final": final, "rewards": rewards, "kl": kl, "non_score": non_score, "advantages": advantages, "returns": returns,
            "beta": beta}


class TrainPass(torch.nn.Module):
    """The policy's training pass (and a value head on its hidden states) as one module's forward.

    ``forward_tokens`` reads the policy's backbone and head directly, so under DDP and FSDP this module is what
    ``accelerator.prepare`` wraps: the wrapper's forward then surrounds the whole pass, as gradient sync (DDP) and
    gathering the shards (FSDP) need. ``value_model``: a separate value model run in the same pass (under FSDP,
    where the two train as one sharded module).
    """

    def __init__(self, policy, value_head, temperature: float, value_model=None):
        super().__init__()
        self.policy, self.value_head, self.value_model, self.temperature = policy, value_head, value_model, temperature
        # FSDP shards each decoder layer as a unit of its own; accelerate finds their classes here
        self._no_split_modules = sorted({name for m in (policy, value_model) if m is not None
                                         for name in getattr(unwrap_value(m), "_no_split_modules", None) or []})

    def tie_weights(self) -> None:
        """Tie each model's shared weights (input and output embeddings) again: accelerate's FSDP set-up calls this
        after moving the parameters, and untied they would train as two."""
        for model in (self.policy, self.value_model):
            if model is not None and hasattr(unwrap_value(model), "tie_weights"):
                unwrap_value(model).tie_weights()

    def forward(self, query, query_mask, response, response_mask):
        logprobs, values = forward_tokens(self.policy, query, query_mask, response, response_mask, self.temperature, self.value_head)
        if self.value_model is not None:
            values = self.value_model(torch.cat([query, response], 1), torch.cat([query_mask, response_mask], 1), query.shape[1])
        # fresh tensors, not views (B × R numbers): FSDP's backward hook on a view would be lost to an in-place op
        return logprobs.clone(), None if values is None else values.clone()


def unwrap_value(module):
    """The transformers model inside a :class:`ValueModel` (the module itself otherwise)."""
    return module.classifier if isinstance(module, ValueModel) else module


def shard_what_trains(accelerator, trainer: TrainPass) -> None:
    """FSDP settings for PPO's trained copy: modules with no trainable weight (a LoRA run's frozen base: embeddings,
    base linears, norms) are left out of the sharding, so they stay the very tensors the rollout's models use instead
    of a second, sharded copy of the base. They must not go through rank 0's loading either (it would replace them
    with copies); every rank holds them already."""
    frozen = [m for m in trainer.modules()
              if any(True for _ in m.parameters(recurse=False)) and not any(p.requires_grad for p in m.parameters())]
    if frozen:
        plugin = accelerator.state.fsdp_plugin
        plugin.ignored_modules, plugin.cpu_ram_efficient_loading = frozen, False


def sync_weights(trainer, parts: TrainPass) -> None:
    """Under FSDP and DeepSpeed, after an update: the trainer's trained weights into the rollout's whole models ``parts``
    — what each rank samples, evaluates and saves with. One parameter at a time is gathered whole (FSDP2's
    ``full_tensor``, ZeRO-3's ``GatheredParameters``; collectives: every rank calls this), so the gather never holds
    more than one extra tensor. ZeRO-2 keeps every weight whole on every rank: a copy."""
    from torch.distributed.tensor import DTensor

    whole = dict(parts.named_parameters())  # the same names: FSDP and DeepSpeed keep the module tree
    with torch.no_grad():
        for name, param in trainer.named_parameters():
            if param.requires_grad:  # frozen weights never change, and are equal already
                with dist.gathered(param):
                    # activation checkpointing (fsdp_activation_checkpointing) wraps layers under a name of its own
                    whole[name.replace("_checkpoint_wrapped_module.", "")].copy_(
                        param.full_tensor() if isinstance(param, DTensor) else param)


def push_weights(parts: TrainPass, trainer) -> None:
    """Under FSDP, on resume: the trainable weights restored into the rollout's models (value head) into the
    sharded trainer; every rank holds them whole and keeps its shard (torch's ``set_model_state_dict``)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    names = {n for n, p in parts.named_parameters() if p.requires_grad}
    whole = {k: v for k, v in parts.state_dict().items() if k in names}
    set_model_state_dict(trainer, whole, options=StateDictOptions(full_state_dict=True, strict=False))


def train_pass(policy, value_head, temperature: float):
    """``policy`` when it already is a (possibly DDP-wrapped) :class:`TrainPass`, else one around it."""
    return policy if isinstance(getattr(policy, "module", policy), TrainPass) else TrainPass(policy, value_head, temperature)


def ppo_loss(cfg: PPOConfig, policy, value_model, value_head, r: Rollout, adv: dict, idx: torch.Tensor,
             backward_scale: float | None = None, engine=None):
    """Clipped policy loss + vf_coef × clipped value loss on rows ``idx``; returns (loss, stats, new log-probs).

    Every mean is over response tokens only, so tokens after EOS carry no loss.
    With ``backward_scale`` the loss × scale is back-propagated here; a separate value model then runs only
    after the policy's graph is freed — the same gradients (the two parameter sets are disjoint) with the
    activations of one model alive at a time instead of two. ``engine``: a DeepSpeed engine, whose ``backward`` it is
    (unscaled: the scale already weighs the micro-batch in its minibatch).
    """
    backward = (lambda t: engine.backward(t, scale_wrt_gas=False)) if engine is not None else (lambda t: t.backward())
    mask = r.response_mask[idx].float()
    device = r.query.device.type
    with autocast(cfg.precision, device):
        logprobs, values = train_pass(policy, value_head, cfg.temperature)(r.query[idx], r.query_mask[idx], r.response[idx],
                                                                            r.response_mask[idx])
    pg_loss, pg_stats = policy_loss(logprobs, r.logprobs[idx], adv["advantages"][idx], mask, cfg.clip_eps,
                                    cfg.loss_agg, cfg.max_new_tokens)
    if cfg.algo == "grpo" and adv["beta"] > 0:  # GRPO's KL term: β · KL(π_θ ‖ π_ref) per token, in the loss
        kl_loss = aggregate(kl_estimate(logprobs, r.ref_logprobs[idx], kl_estimator(cfg)), mask, cfg.loss_agg, cfg.max_new_tokens)
        pg_loss = pg_loss + adv["beta"] * kl_loss
        pg_stats["kl_loss"] = kl_loss.detach()
    split = backward_scale is not None and value_model is not None
    if split:
        backward(pg_loss * backward_scale)
    if value_model is not None:
        with autocast(cfg.precision, device):
            values = value_model(torch.cat([r.query[idx], r.response[idx]], 1),
                                 torch.cat([r.query_mask[idx], r.response_mask[idx]], 1), r.query.shape[1])
    if values is None:  # critic-free: no value loss
        vf_loss, vf_stats = torch.zeros((), device=pg_loss.device), {"vf_clipfrac": torch.zeros(())}
    else:
        vf_loss, vf_stats = value_loss(values, r.values[idx], adv["returns"][idx], mask, cfg.vf_clip)
    loss = pg_loss + cfg.vf_coef * vf_loss
    if backward_scale is not None:
        backward((cfg.vf_coef * vf_loss if split else loss) * backward_scale)
    stats = {"policy_loss": pg_loss.detach(), "value_loss": vf_loss.detach(), **pg_stats, **vf_stats}
    return loss, stats, logprobs


def optimise(cfg: PPOConfig, policy, value_model, value_head, optimizer, params, r: Rollout, adv: dict,
             accelerator=None) -> dict:
    """ppo_epochs × num_minibatches clipped updates on one rollout; returns averaged statistics.

    Under N processes ``r`` is the whole (gathered) rollout on every rank and the minibatches are the ones
    one process would take; each rank trains on its share of each minibatch, its loss divided by the
    minibatch's GLOBAL token count (× N, which DDP's mean over ranks undoes). Statistics are reduced over
    ranks: means of means (equal shares), ratio_max and the log-prob mismatch by max.
    """
    world, me = dist.world_size(), dist.rank()
    batch = r.query.shape[0]
    mb_size = batch // cfg.num_minibatches
    micro = micro_rows(cfg, world)
    engine = policy if hasattr(policy, "set_gradient_accumulation_boundary") else None  # DeepSpeed: it reduces, clips, steps
    wrapped = [m for m in (policy, value_model) if hasattr(m, "no_sync") and engine is None]  # DDP modules
    stats: dict[str, list[float]] = {}
    first_mismatch = None
    epochs_done = 0
    for epoch in range(cfg.ppo_epochs):
        epoch_kl = []
        perm = torch.randperm(batch)
        for start in range(0, batch, mb_size):
            rows = perm[start : start + mb_size]
            tokens = r.response_mask[rows].sum().clamp(min=1)
            mine = rows if world == 1 else rows[me * len(rows) // world : (me + 1) * len(rows) // world]
            for m0 in range(0, len(mine), micro):
                idx = mine[m0 : m0 + micro]
                # weighted as the loss averages (tokens, or answers): accumulation (and N processes) = one minibatch
                share = r.response_mask[idx].sum() / tokens if cfg.loss_agg == "token" else len(idx) / len(rows)
                scale = float(share) * world
                if engine is not None:  # the minibatch's last micro-batch ends the engine's accumulation
                    engine.set_gradient_accumulation_boundary(m0 + micro >= len(mine))
                with contextlib.ExitStack() as no_sync:
                    if m0 + micro < len(mine):  # gradients are all-reduced after the share's last micro-batch only
                        for m in wrapped:
                            no_sync.enter_context(accelerator.no_sync(m))
                    _, mb_stats, logprobs = ppo_loss(cfg, policy, value_model, value_head, r, adv, idx, backward_scale=scale,
                                                     engine=engine)
                if first_mismatch is None:  # the classic temperature/padding bug check: the ratio must start at 1
                    first_mismatch = float(((logprobs.detach() - r.logprobs[idx]).abs() * r.response_mask[idx]).max())
                for k, v in mb_stats.items():
                    stats.setdefault(k, []).append(float(v))
                epoch_kl.append(float(mb_stats["approx_kl"]))
            if engine is not None:
                engine.step()  # the reduced gradients clipped to max_grad_norm (its gradient_clipping), AdamW, zero_grad
                grad_norm = engine.get_global_grad_norm()  # before clipping, as clip_grad_norm_ returns it
            else:
                grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            stats.setdefault("grad_norm", []).append(float(grad_norm))
        epochs_done = epoch + 1
        # every rank takes the same decision: the mean over ranks
        if cfg.target_kl is not None and dist.all_reduce_mean(sum(epoch_kl) / len(epoch_kl)) > cfg.target_kl:
            break  # early stop on approximate KL
    means = {k: sum(v) / len(v) for k, v in stats.items() if k != "ratio_max"}
    out = dict(zip(means, dist.all_reduce_mean(list(means.values())))) if world > 1 else means
    out["ratio_max"] = max(dist.gather_object(max(stats["ratio_max"])))
    out["ppo_epochs_done"] = epochs_done
    out["logprob_mismatch"] = max(dist.gather_object(first_mismatch))
    return out


def resident_gb() -> float | None:
    """This process's resident memory now, in GiB (Linux's /proc; None elsewhere)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**30


def rollout_engine(cfg: PPOConfig, policy, tok):
    """``generation: vllm``: a vLLM engine in this process beside the models being trained, holding the policy's current
    weights (LoRA merged), each process its own on its GPU; None for our decoding loop (``transformers``)."""
    if cfg.generation != "vllm":
        return None
    from rlhfkit.models.generation import make_generator

    # under several processes each runs its own engine on its own GPU, as torchrun's ranks (vLLM's external launcher)
    several = {"distributed_executor_backend": "external_launcher"} if dist.world_size() > 1 else {}
    with torch.random.fork_rng():  # vLLM seeds torch's generators; the run's own draws (minibatch order) must not move
        return make_generator("vllm", cfg.policy, tok, model=policy, gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
                              seed=cfg.seed + dist.rank(), enable_sleep_mode=cfg.vllm_sleep,
                              logprobs_mode="processed_logprobs", **several)  # log-probs after the temperature, as the policy's


def distinct_responses(r: Rollout) -> float:
    """Distinct answers across prompts: each distinct prompt's first answer, the distinct ones over the prompts. A
    collapsed policy answers every prompt alike, while the answers to one prompt (samples_per_prompt of them) may
    well agree; with one answer a prompt this is the share of distinct answers in the batch."""
    first: dict[tuple, str] = {}
    for q, m, text in zip(r.query, r.query_mask.bool(), r.texts):
        first.setdefault(tuple(q[m].tolist()), text)
    return len(set(first.values())) / max(len(first), 1)


def rollout_metrics(r: Rollout, scores: torch.Tensor, adv: dict, beta: float) -> dict:
    mask = r.response_mask.float()
    ev = float(explained_variance(r.values, adv["returns"], mask))
    engine = {} if r.engine_gap is None else {"engine_logprob_gap": r.engine_gap}  # vLLM's log-probs against the policy's
    return {**engine,
        "score": float(scores.mean()),
        "reward": float(adv["final"].mean()),
        "kl": float(adv["kl"].sum(1).mean()),
        "beta": beta,
        "non_score_reward": float(adv["non_score"].sum(1).mean()),
        "entropy": float(masked_mean(r.entropy, mask)),
        # undefined when every return is equal (e.g. every answer missed EOS at step 1, KL 0): None, not a NaN that stops the run
        "explained_variance": ev if math.isfinite(ev) else None,
        "value_mean": float(masked_mean(r.values, mask)),
        "return_mean": float(masked_mean(adv["returns"], mask)),
        "response_len": float(mask.sum(1).mean()),
        "no_eos_frac": float((~r.has_eos).float().mean()),
        "distinct_responses": distinct_responses(r),
        "batch_size": len(r.texts),
    }


# ------------------------------------------------------------------------------------------------ evaluation


HELD_OUT = ("rm_score", "gold_score", "gold_se", "kl", "grading_accuracy")  # eval's names; logged as eval/<name>


@torch.no_grad()
def evaluate(cfg: PPOConfig, policy, reference, tok, prompts: list[list[int]], records: list[dict], reward, judge) -> dict:
    """The policy on the held-out prompts at the rollout's settings (``eval/heldout.py``: eval/rm_score,
    eval/gold_score, eval/kl, eval/grading_accuracy)."""
    return held_out_eval(policy, reference, tok, prompts, records, reward, judge, seed=cfg.seed, batch_size=cfg.batch_size,
                         max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, precision=cfg.precision)


# ------------------------------------------------------------------------------------------------ snapshots


def snapshot_dir(out: Path, step: int) -> Path:
    return out / "snapshots" / f"step-{step:04d}"


def keeps_snapshots(cfg: PPOConfig) -> bool:
    """``keep_snapshots``, or by default: on when a snapshot is an adapter (small), off when it is a full copy."""
    return cfg.keep_snapshots if cfg.keep_snapshots is not None else cfg.lora and not start_is_adapter(cfg)


def snapshot_rows(out: Path) -> list[dict]:
    return (read_snapshots(out) or {}).get("snapshots", [])


def write_snapshots(out: Path, rows: list[dict]) -> None:
    """``snapshots.json``: every held-out evaluation's row and ``chosen``, the step of the highest held-out
    reward-model score (the proxy, the earliest on a tie). The gold score is a check on that choice, never its input."""
    finite = lambda r: r["rm_score"] if r["rm_score"] is not None and math.isfinite(r["rm_score"]) else -math.inf
    chosen = max(rows, key=finite)["step"]
    tmp = out / "snapshots.json.tmp"
    tmp.write_text(json.dumps({"chosen": chosen, "snapshots": rows}, indent=1), encoding="utf-8")
    os.replace(tmp, out / "snapshots.json")  # never half-written


def save_snapshot(cfg: PPOConfig, out: Path, step: int, policy, tok, held: dict, rows: list[dict]) -> None:
    """Step ``step``'s held-out row in ``snapshots.json`` and (``keep_snapshots``) its policy in snapshots/step-NNNN/.

    Step 0 is the start policy, which is the reference: no weights. ``path`` is relative to the PPO run folder.
    """
    path = None
    if step > 0 and keeps_snapshots(cfg):
        with atomic_dir(snapshot_dir(out, step)) as tmp:  # an interrupted save leaves no half-written snapshot
            save_model(standalone(cfg, policy), tmp)
            tok.save_pretrained(tmp)
        path = snapshot_dir(out, step).relative_to(out).as_posix()
    rows.append({"step": step, "path": path, **{k: held.get(f"eval/{k}") for k in HELD_OUT}})
    write_snapshots(out, rows)


def truncate_snapshots(out: Path, last_step: int) -> list[dict]:
    """On resume, as ``metrics.jsonl``: drop the rows and snapshot folders after ``last_step``; returns the rows kept."""
    rows = [r for r in snapshot_rows(out) if r["step"] <= last_step]
    for folder in (out / "snapshots").glob("step-*"):
        if int(re.match(r"step-(\d+)", folder.name).group(1)) > last_step:
            shutil.rmtree(folder)
    if rows:
        write_snapshots(out, rows)
    else:
        (out / "snapshots.json").unlink(missing_ok=True)
    return rows


# ------------------------------------------------------------------------------------------------ run


def encode_prompts(cfg: PPOConfig, tok, records: list[dict]) -> list[list[int]]:
    return [encode_prompt(tok, prompt_messages(r), cfg.chat)[-cfg.max_prompt_len:] for r in records]


def step_uniforms(seed: int, step: int, batch_size: int, lo: int, hi: int):
    """Sampling noise of step ``step``: each call gives one uniform per row of the GLOBAL batch and keeps rows
    lo..hi, so a response's randomness depends on (seed, step, its row) and not on how the batch is split."""
    noise = torch.Generator().manual_seed(seed * 1_000_003 + step)
    return lambda: torch.rand(batch_size, generator=noise, dtype=torch.float64)[lo:hi]


def check_batches(cfg: PPOConfig) -> tuple[int, int]:
    """(processes, this one's rank), after checking that a batch splits into prompts × samples_per_prompt,
    minibatches and processes."""
    world = dist.world_size()
    if cfg.batch_size % cfg.num_minibatches:
        raise ValueError(f"num_minibatches: {cfg.num_minibatches} does not divide batch_size {cfg.batch_size}")
    if cfg.samples_per_prompt < 1 or cfg.batch_size % cfg.samples_per_prompt:
        raise ConfigError(f"samples_per_prompt: {cfg.samples_per_prompt} does not divide batch_size {cfg.batch_size}")
    if cfg.algo in ("grpo", "rloo") and cfg.samples_per_prompt < 2:
        raise ConfigError(f"samples_per_prompt: {cfg.algo} compares each answer with its prompt's other answers; "
                          f"use 2 or more (4 is common), got {cfg.samples_per_prompt}")
    if cfg.batch_size % (cfg.num_minibatches * world):
        raise ConfigError(f"batch_size: {cfg.batch_size} does not split into {cfg.num_minibatches} minibatches × {world} "
                          f"processes; use a multiple of {cfg.num_minibatches * world}")
    return world, dist.rank()


def micro_rows(cfg: PPOConfig, world: int) -> int:
    """Rows of one backward pass on each process: its share of a minibatch, in ``grad_accum`` micro-batches."""
    return max(1, cfg.batch_size // cfg.num_minibatches // world // max(cfg.grad_accum, 1))


def adam_eps(cfg: PPOConfig) -> float:
    """Adam's epsilon: as set, or 1e-5 for PPO and 1e-8 for the critic-free algorithms, as TRL and OpenRLHF run them.

    Adam divides each step by √v + eps. RLOO's ``constant`` loss divides every gradient by answers × max length, so its
    gradients are ~1/32 of a token mean's and a larger eps weighs more against them. Measured on five seeds of the
    RLOO bench (bench/RESULTS.md, "RLOO against TRL 1.16.0's on five seeds"): gold gain +0.052 on average at 1e-8, +0.043 at
    1e-5, a difference within the noise; the default follows the peers, so comparisons with them are like for like.
    """
    if cfg.adam_eps is not None:
        return cfg.adam_eps
    return 1e-5 if cfg.algo == "ppo" else 1e-8


def build_optimiser(cfg: PPOConfig, lr: float, policy, value_module):
    """One AdamW over the policy's and the value's trainable parameters (the value at ``value_lr``), the
    learning-rate schedule (constant, or linear to 0 over ``max_steps``), and those parameters."""
    policy_params = trainable(policy)
    value_params = [] if value_module is None else trainable(value_module)  # critic-free: none
    groups = [{"params": policy_params, "lr": lr}] + ([{"params": value_params, "lr": cfg.value_lr or lr}] if value_params else [])
    optimizer = torch.optim.AdamW(groups, eps=adam_eps(cfg), weight_decay=0.0,
                                  fused=True)  # one pass over each tensor instead of a Python loop over them
    decay = (lambda s: max(0.0, 1.0 - s / cfg.max_steps)) if cfg.schedule == "linear" else (lambda s: 1.0)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, decay), policy_params + value_params


def train_ppo(cfg: PPOConfig) -> dict:
    """Run PPO as configured; returns the last logged metrics.

    Under ``accelerate launch`` (DDP) each rank generates and scores its share of the step's prompts; the
    shares are gathered, so every rank holds the whole rollout: advantages are whitened and metrics taken
    over the global batch, and the KL controller sees the global KL. Each rank then trains on its share of
    every minibatch (see ``optimise``); rank 0 alone logs and writes.
    """
    run = Run(cfg.algo, cfg)  # its name on every line it prints: ppo, grpo, rloo or reinforce++
    out = run.out
    world, me = check_batches(cfg)
    share, micro = cfg.batch_size // cfg.num_minibatches // world, micro_rows(cfg, world)  # a rank's rows of a minibatch
    # DeepSpeed's micro-batch (the rows of one backward) and accumulation steps (micro-batches per minibatch)
    accelerator = dist.get_accelerator(math.ceil(share / micro), micro)
    sharded = dist.is_sharded(accelerator)  # FSDP or DeepSpeed ZeRO: the training pass is a copy of its own
    device = accelerator.device  # a GPU when there is one (one per process under DDP), else the CPU
    cfg = dataclasses.replace(cfg, precision=resolve_precision(cfg.precision, device.type))
    records = read_records(cfg.prompts, "prompt")  # the data first: a bad file fails before any model loads
    eval_records = read_records(cfg.eval_prompts, "prompt") if cfg.eval_prompts else []
    tok = load_tokenizer(cfg.policy)
    prompts = encode_prompts(cfg, tok, records)
    with dist.whole_models(accelerator):
        reward = load_reward(cfg.reward, cfg.reward_batch_size)
    eval_ids = encode_prompts(cfg, tok, eval_records)
    judge = None
    if cfg.eval_judge:
        from rlhfkit.judges import get_judge

        judge = get_judge(cfg.eval_judge)

    ckpt = run.checkpoint_to_resume()
    with dist.whole_models(accelerator):  # ZeRO-3 would build every model split; the rollout's are whole on each rank
        policy, reference = build_policy(cfg, ckpt)
        value_model, value_head, value_kind = build_value(cfg, policy, tok, reward, ckpt)
    for module in (policy, reference, value_model, value_head, reward.model):  # every pass runs on the one device
        if module is not None:
            module.to(device)
    # The training pass. Under FSDP and DeepSpeed it is a copy of the models whose weights (or optimiser state) are split
    # over the processes; rollout, evaluation and saving use the whole models (``parts``), which take its weights after
    # every update.
    speed_up(policy, reference, value_model, reward.model, device=device, head_apart=True)  # the head: accel/head.py
    parts = TrainPass(policy, value_head, cfg.temperature, value_model if sharded else None)
    # the same layers: the same numbers as the rollout's; frozen weights (a LoRA base) are the very same tensors, except
    # under ZeRO-3, which splits every weight of the module it is given, and under DeepSpeed's bf16, which casts them
    own_copy = dist.is_zero3(accelerator) or (dist.is_deepspeed(accelerator) and accelerator.state.mixed_precision != "no")
    shared = {} if own_copy else {id(p): p for p in parts.parameters() if not p.requires_grad}
    policy_train = copy.deepcopy(parts, shared) if sharded else parts
    value_train = policy_train.value_model if sharded else value_model
    lr = cfg.lr if cfg.lr is not None else (5e-5 if cfg.lora else 3e-6)
    optimizer, scheduler, params = build_optimiser(cfg, lr, policy_train.policy,
                                                   value_train if value_train is not None else policy_train.value_head)
    kl_ctl = (AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon) if cfg.adaptive_kl
              else FixedKLController(cfg.kl_coef))
    health = HealthMonitor(cfg.max_new_tokens)
    if sharded:  # FSDP2: each decoder layer a unit; ZeRO: the engine's partitions; AdamW keeps the state of its own part
        if dist.is_fsdp(accelerator):
            shard_what_trains(accelerator, policy_train)
        policy_train, optimizer = run.prepare_sharded(accelerator, policy_train, optimizer, cfg.max_grad_norm)
        params, value_train = trainable(policy_train), None  # the value model runs inside the sharded pass
    elif world > 1:  # DDP-wrapped training passes over the models the rollout uses
        policy_train = accelerator.prepare(policy_train)
        value_train = value_model if value_model is None else accelerator.prepare(value_model)
    if world > 1:
        run.say(f"{world} processes ({accelerator.distributed_type.value}), {cfg.batch_size // world} prompts each per step")
    value_params_module = value_head if value_head is not None else None if value_model is None else value_model.head

    def restore(tensors: dict) -> None:  # the checkpoint's parts beyond the optimiser, schedule and RNG
        kl_ctl.load_state_dict(tensors["kl_ctl"])
        health.load_state_dict(tensors["health"])
        if value_params_module is not None:
            value_params_module.load_state_dict(tensors["value"])

    def save(folder: Path | None) -> dict:  # the policy (its adapter, under LoRA), the value model and the rest
        if folder is not None:
            save_model(policy, folder / "policy")
            if value_model is not None:
                value_model.classifier.save_pretrained(folder / "value")
        parts = {"kl_ctl": kl_ctl.state_dict(), "health": health.state_dict()}
        return parts if value_params_module is None else {**parts, "value": value_params_module.state_dict()}

    start = run.begin(optimizer, scheduler, ckpt, restore=restore)
    if dist.is_fsdp(accelerator) and ckpt is not None:  # (DeepSpeed's engine reads its own weights back)
        push_weights(parts, policy_train)  # the value head, restored into the whole models, into the trainer
    engine = rollout_engine(cfg, policy, tok)  # generation: vllm; None: our decoding loop samples
    # the held-out rows so far: a resumed run keeps those up to its checkpoint's step (as its log), a fresh run none
    snapshots = truncate_snapshots(out, start if ckpt is not None else -1) if dist.is_main() else []
    run.say(f"{len(records)} prompts; policy {cfg.policy} ({'LoRA' if cfg.lora else 'full'}, lr {lr:g}); "
                  f"reference: {'adapters off' if reference is None else cfg.reference or cfg.policy}; "
                  f"reward {cfg.reward}; value model: {value_kind}; precision {cfg.precision}")
    if eval_ids and start == 0:  # step 0: the start policy, the point every snapshot is compared with
        held = evaluate(cfg, policy, reference, tok, eval_ids, eval_records, reward, judge)
        run.logger.log(0, held)
        if dist.is_main():
            save_snapshot(cfg, out, 0, policy, tok, held, snapshots)

    t_start, eval_total_s = time.perf_counter(), 0.0
    k = cfg.samples_per_prompt  # each prompt k times, side by side
    with run.loop(start, save) as loop:
        for step in range(start, cfg.max_steps):
            t0 = time.perf_counter()
            # 1. rollout: sample, score, the reference's and the value model's passes
            idx = [i for i in batch_indices(step, cfg.batch_size // k, len(records), cfg.seed) for _ in range(k)]
            lo, hi = me * cfg.batch_size // world, (me + 1) * cfg.batch_size // world  # my share of the prompts
            rollout, scores = collect(policy, tok, [prompts[i] for i in idx[lo:hi]], [records[i] for i in idx[lo:hi]],
                                      reward, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                      value_model=value_model, value_head=value_head, reference=reference,
                                      uniforms=step_uniforms(cfg.seed, step, cfg.batch_size, lo, hi)
                                      if world > 1 or cfg.row_noise else None,  # None: the global RNG
                                      amp=lambda: autocast(cfg.precision, device.type), recompute=cfg.precision == "bf16",
                                      engine=engine)
            if engine is not None and cfg.vllm_sleep:
                engine.sleep()  # its GPU memory to the training passes until the next rollout
            if world > 1:  # every rank: the whole rollout, in prompt order (gathered through the CPU)
                shares = dist.gather_object((rollout.to("cpu"), scores))
                rollout, scores = concat([r for r, _ in shares], tok.pad_token_id).to(device), torch.cat([s for _, s in shares])
            scores = scores.to(device)
            # 2. rewards and advantages (compute_advantages: normalise, EOS penalty, KL per token, GAE, whiten)
            beta = kl_ctl.value
            adv = compute_advantages(cfg, rollout, scores, reward, beta)
            with loop.step(step + 1) as done:  # from the first weight update, Ctrl-C waits for the step's end
                # 3. optimise: ppo_epochs × num_minibatches clipped policy and value updates
                t1 = time.perf_counter()
                train_stats = optimise(cfg, policy_train, value_train, value_head, optimizer, params, rollout, adv, accelerator)
                if sharded:
                    sync_weights(dist.unwrap(accelerator, policy_train), parts)  # the next rollout samples with the updated weights
                if engine is not None:
                    engine.wake_up()
                    engine.load_weights(policy)  # the engine samples the next rollout with the updated policy
                metrics = rollout_metrics(rollout, scores, adv, beta)
                metrics.update(train_stats)
                metrics["lr"] = scheduler.get_last_lr()[0]
                scheduler.step()
                kl_ctl.update(metrics["kl"], cfg.batch_size)
                t2 = time.perf_counter()
                # stop when the next update (as long as the mean one so far) would end past the budget; the time
                # spent leaves out the held-out evaluations' seconds when they do not count
                spent = t2 - t_start - (0.0 if cfg.time_budget_counts_eval else eval_total_s)
                mean_update = spent / (done - start)
                out_of_time = cfg.time_budget_minutes is not None and spent + mean_update > 60 * cfg.time_budget_minutes
                loop.ending = dist.broadcast_object(out_of_time)  # rank 0's clock decides for all
                last_step = done == cfg.max_steps or loop.ending
                metrics.update({"time_rollout_s": t1 - t0, "time_train_s": t2 - t1, "time_step_s": t2 - t0,
                                "samples_per_s": cfg.batch_size / (t2 - t0),
                                "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                                "rss_gb": resident_gb()})  # now, between steps: what the run holds, load-time peaks aside
                # 4. held-out evaluation, health checks, log, snapshot
                evaluated = bool(eval_ids) and (bool(cfg.eval_every) and done % cfg.eval_every == 0 or last_step)
                if evaluated:
                    held = evaluate(cfg, policy, reference, tok, eval_ids, eval_records, reward, judge)
                    metrics.update(held)
                    metrics["time_eval_s"] = time.perf_counter() - t2
                    eval_total_s += metrics["time_eval_s"]
                warnings, fatal = health.check(done, metrics) if cfg.health else ([], False)
                for w in warnings:
                    run.say(f"[yellow]step {done}: warning: {w}[/yellow]")
                if warnings:
                    metrics["warnings"] = warnings
                loop.log(done, metrics, f"score {metrics['score']:.3f}  kl {metrics['kl']:.3f}  {metrics['time_step_s']:.1f} s/step",
                         always=last_step or bool(warnings) or evaluated)
                if dist.broadcast_object(fatal):  # every rank stops together, keeping the last good checkpoint
                    raise PPOHealthError(f"step {done}: non-finite metrics; stopped; the last good checkpoint is in "
                                         f"{out / 'checkpoint'} (resume with --resume after changing the settings)")
                if evaluated and dist.is_main():  # after the health check: a non-finite policy is never a snapshot
                    save_snapshot(cfg, out, done, policy, tok, held, snapshots)
            if loop.ending:
                run.say(f"time budget of {cfg.time_budget_minutes:g} min used up after step {done}")
                break

    def save_output() -> None:
        if dist.is_main():
            save_final(cfg, out, policy, value_model, tok)
        dist.barrier()

    run.finish(loop.done, save_output)
    run.say(f"done, {loop.done} steps; policy saved to {out}")
    if snapshots:
        chosen = json.loads((out / "snapshots.json").read_text(encoding="utf-8"))["chosen"]
        run.say(f"{len(snapshots)} held-out evaluations in {out / 'snapshots.json'}; the highest held-out "
                      f"reward-model score (the proxy) is at step {chosen}")
    return loop.last


def start_is_adapter(cfg: PPOConfig) -> bool:
    from rlhfkit.models.loading import is_adapter_dir, resolve

    return cfg.policy not in ("default", "tiny") and is_adapter_dir(Path(resolve(cfg.policy)))


def standalone(cfg: PPOConfig, policy):
    """The policy as its folder must hold it to load on its own: LoRA adapters on the base spec they record, or
    merged when the start was itself an adapter run (its merged base is not what the adapters' base spec names)."""
    return copy.deepcopy(policy).merge_and_unload() if cfg.lora and start_is_adapter(cfg) else policy


def save_final(cfg: PPOConfig, out: Path, policy, value_model, tok) -> None:
    """The policy in save_pretrained form (LoRA: the adapter on its base spec; merged when the base was an adapter
    run), with merge_lora also merged in out/merged; a separate value model in out/value, with the policy's
    tokenizer (which it shares)."""
    save_model(standalone(cfg, policy), out)
    tok.save_pretrained(out)
    if cfg.lora and cfg.merge_lora:
        merged = copy.deepcopy(policy).merge_and_unload()
        merged.save_pretrained(out / "merged")
        tok.save_pretrained(out / "merged")
    if value_model is not None:
        value_model.classifier.save_pretrained(out / "value")
        tok.save_pretrained(out / "value")
