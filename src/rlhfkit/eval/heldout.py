"""The policy on held-out prompts during training: what PPO, the critic-free trainers and DPO log as ``eval/...``.

One answer per prompt, sampled with the same seed at every evaluation (training's RNG is untouched), so two
evaluations differ by the policy alone. ``eval/rm_score``: the reward (the proxy, raw); ``eval/gold_score``
and its standard error ``eval/gold_se``: the gold judge, when there is one; ``eval/kl``: eval's estimator on
these answers, Σ over answer tokens of log π − log π_ref averaged over answers (π_ref: the adapters-off policy,
or ``reference``); ``eval/grading_accuracy``: on grading prompts, the share of replies that open with the gold
verdict.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from rlhfkit.accel.precision import autocast
from rlhfkit.eval import metrics as M
from rlhfkit.models.rollout import collect, model_device


def held_out_eval(policy, reference, tok, prompts: list[list[int]], records: list[dict], reward, judge, *, seed: int,
                  batch_size: int, max_new_tokens: int, temperature: float, precision: str) -> dict:
    """The metrics above for ``prompts`` (token ids) and their ``records``; ``reward`` as PPO's rollout takes it."""
    texts, scores, logp, ref_logp = [], [], [], []
    device = model_device(policy)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)  # sampling draws on the CPU's RNG on any device
        for i in range(0, len(prompts), batch_size):
            r, s = collect(policy, tok, prompts[i : i + batch_size], records[i : i + batch_size], reward,
                           max_new_tokens=max_new_tokens, temperature=temperature, reference=reference,
                           amp=lambda: autocast(precision, device.type), recompute=precision == "bf16")
            mask = r.response_mask.bool()
            texts += r.texts
            scores.append(s)
            logp += [row[m].tolist() for row, m in zip(r.logprobs, mask)]
            ref_logp += [row[m].tolist() for row, m in zip(r.ref_logprobs, mask)]
    out = {"eval/rm_score": float(torch.cat(scores).mean()), "eval/kl": M.sampled_kl(logp, ref_logp)}
    if judge is not None:
        gold = judge(records, texts)
        out["eval/gold_score"] = M.mean(gold)
        # its standard error over the held-out answers: the report calls a gold change noise when it is within ~2 of them
        out["eval/gold_se"] = float(np.std(gold, ddof=1) / math.sqrt(len(gold))) if len(gold) > 1 else None
    graded = M.grading(texts, records, seed=seed)
    if graded is not None:
        out["eval/grading_accuracy"] = graded["accuracy"]
    return out
