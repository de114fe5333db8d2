"""Advantage maths of PPO and the critic-free methods (GRPO, RLOO, REINFORCE++), shared by the language-model
trainer and the Gymnasium trainer (docs/design.md §4).

Pure functions on tensors. Time is the last dimension: ``(batch, T)``. A ``mask`` is 1 on positions that
count (response tokens) and 0 on padding; a row's valid positions are a prefix. Statistics ignore masked
positions, so padding never changes a result.
"""

from __future__ import annotations

import torch
from torch import Tensor


def masked_mean(x: Tensor, mask: Tensor | None = None, dim: int | None = None) -> Tensor:
    """Mean of ``x`` over positions where ``mask == 1`` (all of ``x`` when ``mask`` is None)."""
    if mask is None:
        return x.mean() if dim is None else x.mean(dim)
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1.0)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1.0)


def leave_one_out(scores: Tensor, k: int) -> Tensor:
    """Each score less the mean of the other ``k − 1`` scores of its group (``k`` consecutive entries: one prompt's
    responses). What is left is how much better a response is than its prompt's others — the part a
    Bradley–Terry reward model identifies — with no per-prompt offset and no bias from the response itself
    (RLOO, Ahmadian et al. 2024)."""
    if k < 2 or scores.shape[0] % k:
        raise ValueError(f"leave_one_out: {scores.shape[0]} scores do not split into groups of k={k} ≥ 2")
    groups = scores.reshape(-1, k)
    others = (groups.sum(1, keepdim=True) - groups) / (k - 1)
    return (groups - others).reshape(scores.shape)


def group_advantages(scores: Tensor, k: int, scale: bool = True, eps: float = 1e-4) -> Tensor:
    """GRPO's advantage (Shao et al. 2024): each score less the mean of its group (``k`` consecutive entries: one
    prompt's answers), divided by the group's standard deviation; ``scale=False`` leaves the std out, as
    Dr. GRPO (Liu et al. 2025) does, so prompts whose answers barely differ are not blown up."""
    if k < 2 or scores.shape[0] % k:
        raise ValueError(f"group_advantages: {scores.shape[0]} scores do not split into groups of k={k} ≥ 2")
    groups = scores.reshape(-1, k)
    advantages = groups - groups.mean(1, keepdim=True)  # the group mean is the baseline
    if scale:
        advantages = advantages / (groups.std(1, keepdim=True) + eps)  # per-group std (unbiased, as GRPO)
    return advantages.reshape(scores.shape)


def kl_estimate(logprobs: Tensor, ref_logprobs: Tensor, estimator: str = "k1") -> Tensor:
    """Per-token estimate of KL(π ‖ π_ref) from tokens sampled from π (Schulman 2020, "Approximating KL
    Divergence"), with log r = log π − log π_ref: k1 = log r (unbiased, can be negative), k2 = ½ (log r)² and
    k3 = (1/r − 1) + log r (unbiased and never negative; GRPO's KL term)."""
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio**2
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"kl_estimator: expected k1, k2 or k3, got {estimator!r}")


def discounted_returns(rewards: Tensor, mask: Tensor, gamma: float = 1.0) -> Tensor:
    """REINFORCE's return Σ_{t' ≥ t} γ^(t'−t) r_t' at every valid token, (batch, T); 0 on padding."""
    mask = mask.to(rewards.dtype)
    returns = torch.zeros_like(rewards)
    running = torch.zeros(rewards.shape[0], dtype=rewards.dtype, device=rewards.device)
    for t in reversed(range(rewards.shape[1])):
        running = (rewards[:, t] + gamma * running) * mask[:, t]
        returns[:, t] = running
    return returns


def masked_var(x: Tensor, mask: Tensor | None = None, unbiased: bool = True) -> Tensor:
    """Variance of ``x`` over the masked positions (Bessel-corrected when ``unbiased``)."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        n = x.new_tensor(x.numel()) if mask is None else mask.to(x.dtype).sum()
        var = var * n / (n - 1).clamp(min=1.0)
    return var


def masked_whiten(x: Tensor, mask: Tensor | None = None, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """Normalise ``x`` to mean 0, std 1 over the masked positions; masked positions become 0.

    ``shift_mean=False`` only rescales (keeps the mean), as TRL does for rewards.
    """
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened if mask is None else whitened * mask.to(x.dtype)


def gae(
    rewards: Tensor,
    values: Tensor,
    mask: Tensor | None = None,
    gamma: float = 1.0,
    lam: float = 0.95,
    dones: Tensor | None = None,
    next_value: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016), a reverse loop over time.

    rewards, values: (batch, T). Returns ``(advantages, returns)`` with ``returns = advantages + values``.
    - LM case: ``mask`` (batch, T) marks response tokens; the value after a row's last valid token is 0
      (the episode ends there) and masked positions get advantage 0.
    - Gym case: ``dones[:, t] = 1`` when the episode ended at step t (no bootstrap across it) and
      ``next_value`` (batch,) is the value of the observation after the last step (bootstrap).
    """
    batch, T = rewards.shape
    mask = torch.ones_like(rewards) if mask is None else mask.to(rewards.dtype)
    nonterminal = torch.ones_like(rewards) if dones is None else 1.0 - dones.to(rewards.dtype)
    next_values = torch.zeros(batch, dtype=values.dtype, device=values.device) if next_value is None else next_value
    advantages = torch.zeros_like(rewards)
    lastgaelam = torch.zeros(batch, dtype=rewards.dtype, device=rewards.device)
    for t in reversed(range(T)):
        # the value of the next state: 0 after the last valid token, 0 across an episode end (dones)
        next_v = next_values if t == T - 1 else values[:, t + 1] * mask[:, t + 1]
        delta = rewards[:, t] + gamma * next_v * nonterminal[:, t] - values[:, t]  # TD error
        lastgaelam = (delta + gamma * lam * nonterminal[:, t] * lastgaelam) * mask[:, t]  # padding: advantage 0
        advantages[:, t] = lastgaelam
    returns = advantages + values  # value-function targets (TD(λ) returns)
    return advantages, returns


class FixedKLController:
    """Constant KL coefficient β."""

    def __init__(self, beta: float):
        self.value = float(beta)

    def update(self, current_kl: float, n_steps: int) -> None:
        pass

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """Adaptive β (Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences", §2.2).

    e = clip(KL / target − 1, −0.2, 0.2); β ← β · (1 + e · n_steps / horizon): β grows while the KL is
    above target and shrinks while it is below.
    """

    def __init__(self, init_beta: float, target: float, horizon: float):
        self.value = float(init_beta)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        proportional_error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)  # clipped error
        self.value *= 1.0 + proportional_error * n_steps / self.horizon

    def state_dict(self) -> dict:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])
        self.target = float(state.get("target", self.target))
        self.horizon = float(state.get("horizon", self.horizon))


def kl_penalty_rewards(
    logprobs: Tensor, ref_logprobs: Tensor, scores: Tensor, mask: Tensor, beta: float, estimator: str = "k1"
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-token RLHF rewards: −β·KL on every response token, plus the score on the last one (docs/design.md §4.1).

    logprobs, ref_logprobs, mask: (batch, T); scores: (batch,). ``estimator``: see :func:`kl_estimate`.
    Returns ``(rewards, kl, non_score_reward)``, each (batch, T) and 0 on padding.
    """
    mask = mask.to(logprobs.dtype)
    kl = kl_estimate(logprobs, ref_logprobs, estimator) * mask  # k1: log π − log π_ref per sampled token
    non_score_reward = -beta * kl  # KL penalty keeps the policy near the reference model
    rewards = non_score_reward.clone()
    positions = torch.arange(mask.shape[1], device=mask.device)
    last = (mask * (positions + 1)).argmax(dim=1)  # index of each row's last valid token
    has_tokens = mask.sum(dim=1) > 0
    rows = torch.arange(mask.shape[0], device=mask.device)
    rewards[rows, last] += scores.to(rewards.dtype) * has_tokens  # sequence score on the last token
    return rewards, kl, non_score_reward
