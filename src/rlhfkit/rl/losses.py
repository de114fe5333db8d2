"""PPO losses and per-token quantities from logits, shared by the language-model and Gymnasium trainers.

Torch only: the CPU speed paths that compute the same numbers faster live in ``rlhfkit.accel``.

Pure functions on tensors; ``mask`` (same shape as the per-token tensors, 1 = counts) keeps padding out of
every mean, so masked positions carry neither loss nor gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from rlhfkit.rl.advantages import masked_mean, masked_var

# exp() of arguments below about −87 (a result under fp32's smallest normal number) takes a slow path in
# torch's vectorised CPU exp, many times slower per element. Softmax terms e^(x − max) below e^−80 ≈ 2e−35 are far
# under fp32's resolution of a sum that is ≥ 1, so the arguments are clamped there first: the same sums, the
# same probabilities to within 2e−35 each, and a vocabulary-wide exp that runs at full speed.
EXP_FLOOR = -80.0


def aggregate(per_token: Tensor, mask: Tensor | None, how: str = "token", max_len: int | None = None) -> Tensor:
    """A per-token loss (batch, T) as one number: ``token``, the mean over every valid token of the batch (PPO;
    DAPO); ``sequence``, each answer's mean and then the mean over answers (GRPO as published: a short answer's
    tokens weigh more); ``constant``, the sum over valid tokens ÷ (answers × ``max_len``) (Dr. GRPO: no length bias)."""
    if how == "token":
        return masked_mean(per_token, mask)
    if mask is None:
        mask = torch.ones_like(per_token)
    if how == "sequence":
        return masked_mean(per_token, mask, dim=1).mean()
    if how == "constant":
        return (per_token * mask.to(per_token.dtype)).sum() / (per_token.shape[0] * (max_len or per_token.shape[1]))
    raise ValueError(f"loss_agg: expected token, sequence or constant, got {how!r}")


def policy_loss(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor | None = None, clip_eps: float = 0.2,
    agg: str = "token", max_len: int | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped surrogate objective (Schulman et al. 2017), as a loss to minimise; ``agg``: see :func:`aggregate`.

    Returns ``(loss, stats)``; stats (detached 0-d tensors): clipfrac, approx_kl ((r−1) − log r, Schulman's
    unbiased low-variance estimator), approx_kl_sq (½·(Δ log p)²), ratio_mean, ratio_max.
    """
    logratio = logprobs - old_logprobs
    ratio = torch.exp(logratio)  # importance ratio π_θ / π_old
    pg_loss1 = -advantages * ratio
    pg_loss2 = -advantages * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps)  # ratio clipping
    loss = aggregate(torch.max(pg_loss1, pg_loss2), mask, agg, max_len)  # pessimistic bound of the two
    with torch.no_grad():
        valid = ratio if mask is None else ratio[mask.bool()]
        stats = {
            "clipfrac": masked_mean((pg_loss2 > pg_loss1).to(ratio.dtype), mask),  # share where the clip bites
            "approx_kl": masked_mean((ratio - 1.0) - logratio, mask),
            "approx_kl_sq": masked_mean(0.5 * logratio**2, mask),
            "ratio_mean": masked_mean(ratio, mask),
            "ratio_max": valid.max() if valid.numel() else ratio.new_tensor(1.0),
        }
    return loss, stats


def value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor | None = None, clip_eps: float | None = 0.2
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped value loss ½·max((v − R)², (clip(v) − R)²), clip(v) within ±clip_eps of the rollout value.

    ``clip_eps=None`` turns value clipping off (plain ½·(v − R)²). Stats: vf_clipfrac.
    """
    vf_loss1 = (values - returns) ** 2
    if clip_eps is None:
        return 0.5 * masked_mean(vf_loss1, mask), {"vf_clipfrac": values.new_tensor(0.0)}
    values_clipped = old_values + torch.clamp(values - old_values, -clip_eps, clip_eps)  # value clipping
    vf_loss2 = (values_clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(vf_loss1, vf_loss2), mask)
    with torch.no_grad():
        stats = {"vf_clipfrac": masked_mean((vf_loss2 > vf_loss1).to(values.dtype), mask)}
    return loss, stats


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of the softmax over the last dimension, per position: logsumexp(l) − Σ softmax(l)·l."""
    logits = logits.float()
    logits = logits - logits.max(dim=-1, keepdim=True).values  # shift: no precision loss for large logits
    probs = torch.softmax(logits, dim=-1)
    return logsumexp(logits) - (probs * logits).sum(dim=-1)


def logsumexp(x: Tensor) -> Tensor:
    """``torch.logsumexp`` over the last dimension of finite ``x``, with its exp kept off the slow path (EXP_FLOOR)."""
    top = x.detach().amax(dim=-1, keepdim=True)
    return (x - top).clamp(min=EXP_FLOOR).exp().sum(dim=-1).log() + top.squeeze(-1)


def logprobs_from_logits(
    logits: Tensor, labels: Tensor, temperature: float = 1.0, chunk_size: int = 1024
) -> Tensor:
    """log softmax(logits / temperature)[label] per position, shape ``labels.shape``.

    logits: (..., vocab); labels: (...). Rows are processed ``chunk_size`` at a time with logsumexp, so a
    float log-softmax of the full (batch, T, vocab) tensor is never built (vocab is ~49k).
    The sampling temperature divides the logits here as it did in the rollout (docs/design.md §4.6).
    """
    vocab = logits.shape[-1]
    flat_logits = logits.reshape(-1, vocab)
    flat_labels = labels.reshape(-1, 1)
    out = []
    for start in range(0, flat_logits.shape[0], chunk_size):
        chunk = flat_logits[start : start + chunk_size].float()
        if temperature != 1.0:
            chunk = chunk / temperature
        picked = chunk.gather(-1, flat_labels[start : start + chunk_size]).squeeze(-1)
        out.append(picked - logsumexp(chunk))
    if not out:
        return logits.new_zeros(labels.shape, dtype=torch.float32)
    return torch.cat(out).reshape(labels.shape)


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor | None = None) -> Tensor:
    """1 − Var(R − v) / Var(R): 1 is a perfect value function, ≤ 0 no better than a constant (NaN if Var(R) = 0)."""
    var_returns = masked_var(returns, mask, unbiased=False)
    var_residual = masked_var(returns - values, mask, unbiased=False)
    return torch.where(var_returns > 0, 1.0 - var_residual / var_returns, torch.full_like(var_returns, float("nan")))


def kto_loss(policy_logps: Tensor, ref_logps: Tensor, desirable: Tensor, kl: Tensor, beta: float = 0.1,
             desirable_weight: float = 1.0, undesirable_weight: float = 1.0) -> tuple[Tensor, Tensor]:
    """Kahneman–Tversky optimisation (Ethayarajh et al. 2024) on (answers,) sequence log-probs of unpaired answers.

    With r = log π(y) − log π_ref(y) and z₀ the batch's KL estimate (detached, at least 0), a desirable answer
    loses λ_D·(1 − σ(β·(r − z₀))) and an undesirable one λ_U·(1 − σ(β·(z₀ − r))): the policy is paid for raising
    good answers above, and pushing bad ones below, the reference point z₀ rather than against each other.
    Returns (per-answer losses, rewards β·r), each (answers,).
    """
    logratio = policy_logps - ref_logps
    losses = torch.where(desirable, desirable_weight * (1 - torch.sigmoid(beta * (logratio - kl))),
                         undesirable_weight * (1 - torch.sigmoid(beta * (kl - logratio))))
    return losses, beta * logratio.detach()


def kto_reference_point(policy_mismatched: Tensor, ref_mismatched: Tensor) -> Tensor:
    """KTO's z₀: the mean log π − log π_ref of answers paired with other answers' prompts (an estimate of
    KL(π ‖ π_ref) that carries no label), at least 0 and detached, as the paper and TRL compute it."""
    return (policy_mismatched - ref_mismatched).mean().clamp(min=0).detach()


def chosen_nll(policy_chosen: Tensor, chosen_tokens: Tensor) -> Tensor:
    """The chosen answers' negative log-likelihood per token, (pairs,): RPO's term (Pang et al. 2024), which DPO adds
    at a weight α so that the chosen answer's likelihood rises, not only its margin over the rejected one (with
    DPO alone both can fall). ``policy_chosen``: summed log-probs (or already averaged: give tokens of 1)."""
    return -policy_chosen / chosen_tokens.clamp(min=1)


def dpo_loss(policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor, beta: float = 0.1,
             loss_type: str = "sigmoid", label_smoothing: float = 0.0) -> tuple[Tensor, Tensor, Tensor]:
    """Direct preference optimisation on (pairs,) sequence log-probs of the chosen and rejected answers.

    With h = (log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l)):
    - ``sigmoid`` (Rafailov et al. 2023): −log σ(β·h); ``label_smoothing`` ε mixes in −log σ(−β·h) with weight ε,
      for labels flipped with probability ε (conservative DPO);
    - ``ipo`` (Azar et al. 2023): (h − 1/(2β))², which does not push h to infinity on separable pairs; give it
      length-averaged log-probs, as its authors do.
    Returns (per-pair losses, chosen rewards β·(log π − log π_ref)(y_w), rejected rewards), each (pairs,).
    """
    chosen_logratio = policy_chosen - ref_chosen
    rejected_logratio = policy_rejected - ref_rejected
    h = chosen_logratio - rejected_logratio
    if loss_type == "sigmoid":
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    elif loss_type == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"loss_type: expected sigmoid or ipo, got {loss_type!r}")
    return losses, beta * chosen_logratio.detach(), beta * rejected_logratio.detach()
