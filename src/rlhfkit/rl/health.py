"""Health checks for PPO runs: read each step's metrics as they are logged and say what looks wrong.

Each warning names the symptom, what it usually means, and a setting to try. A warning is repeated at
most every ``repeat_every`` steps while its condition lasts. Non-finite metrics are fatal: the trainer
stops without writing a checkpoint for that step, so the last good checkpoint is kept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class HealthLimits:
    """Thresholds of the checks (per-response KL in nats; lengths in tokens)."""

    kl_negative: float = -0.5  # mean KL below this: the sampler and the log-probs disagree
    kl_explode: float = 25.0  # mean KL above this: the policy is running away from the reference
    entropy_floor: float = 0.05  # mean entropy (nats/token) below this, or below entropy_drop × the first step's
    entropy_drop: float = 0.1
    length_collapse: float = 2.0  # mean response length at or below this many tokens
    limit_frac: float = 0.9  # share of responses without EOS at or above this: running to the length limit
    ratio_spike: float = 10.0  # largest importance ratio in an update above this
    ratio_mean_band: float = 0.2  # |ratio_mean − 1| above this
    value_loss_growth: float = 10.0  # value loss above this × the median of the first steps
    value_loss_warmup: int = 5  # steps that set the value-loss baseline
    distinct_floor: float = 0.5  # distinct responses per distinct prompt in a batch at or below this (batches of 4+)
    repeat_every: int = 10  # steps between repeats of a warning that persists


@dataclass
class HealthMonitor:
    """Keeps the little history the checks need; ``check`` returns (warnings, fatal)."""

    max_new_tokens: int
    limits: HealthLimits = field(default_factory=HealthLimits)
    first_entropy: float | None = None
    value_losses: list[float] = field(default_factory=list)
    last_warned: dict[str, int] = field(default_factory=dict)

    def check(self, step: int, m: dict) -> tuple[list[str], bool]:
        lim = self.limits
        bad = sorted(k for k, v in m.items() if isinstance(v, float) and not math.isfinite(v))
        if bad:
            return [f"non_finite: {', '.join(bad)} is NaN/inf at step {step}: stopping; the last checkpoint is kept. "
                    "Usually a learning rate too high or a reward with extreme values: lower lr, check the reward "
                    "model's scores, keep max_grad_norm at 1.0"], True
        found: dict[str, str] = {}
        kl = m.get("kl")
        if kl is not None and kl < lim.kl_negative:
            found["kl_negative"] = (f"KL to the reference is negative ({kl:.3f}): the responses were not sampled from the "
                                    "distribution the log-probs describe (temperature, top-k/top-p or padding mismatch), "
                                    "or the policy puts its mass where the reference has more; check the generation "
                                    "settings and try a smaller lr")
        if kl is not None and kl > lim.kl_explode:
            found["kl_explode"] = (f"KL to the reference is {kl:.1f} nats per response and growing out of bounds: the "
                                   "policy is drifting far from the reference (reward hacking is likely); raise kl_coef, "
                                   "turn on adaptive_kl, or lower lr")
        ent = m.get("entropy")
        if ent is not None:
            if self.first_entropy is None:
                self.first_entropy = ent
            if ent < lim.entropy_floor or ent < lim.entropy_drop * self.first_entropy:
                found["entropy_collapse"] = (f"entropy collapsed to {ent:.3f} nats/token (first step: {self.first_entropy:.3f}): "
                                             "the policy has become nearly deterministic and will stop exploring; raise "
                                             "kl_coef or temperature, or lower lr")
        length = m.get("response_len")
        if length is not None and length <= lim.length_collapse:
            found["length_collapse"] = (f"responses collapsed to {length:.1f} tokens on average: the reward or the "
                                        "missing-EOS penalty favours stopping at once; check missing_eos_penalty and "
                                        "the reward model on short answers, raise kl_coef")
        no_eos = m.get("no_eos_frac")
        if no_eos is not None and no_eos >= lim.limit_frac:
            found["length_limit"] = (f"{no_eos:.0%} of responses run to the {self.max_new_tokens}-token limit without EOS: "
                                     "the reward judges unfinished text (and with missing_eos_penalty set they all get the same "
                                     "penalty); raise max_new_tokens, or set missing_eos_penalty to null, or start from "
                                     "an SFT policy that stops")
        rmax, rmean = m.get("ratio_max"), m.get("ratio_mean")
        if (rmax is not None and rmax > lim.ratio_spike) or (rmean is not None and abs(rmean - 1.0) > lim.ratio_mean_band):
            found["ratio_spike"] = (f"importance ratio spiked (max {float(rmax or 1.0):.2f}, mean {float(rmean or 1.0):.3f}): the policy moved far "
                                    "within one update, or training log-probs do not match the rollout's; lower lr, "
                                    "fewer ppo_epochs, or set target_kl")
        vloss = m.get("value_loss")
        if vloss is not None:
            self.value_losses.append(vloss)
            if len(self.value_losses) > lim.value_loss_warmup:
                base = sorted(self.value_losses[: lim.value_loss_warmup])[lim.value_loss_warmup // 2]
                if vloss > lim.value_loss_growth * max(base, 1e-3):
                    found["value_loss_diverging"] = (f"value loss {vloss:.3f} is over {lim.value_loss_growth:g}× its early "
                                                     f"level ({base:.3f}): the value model is not keeping up with the "
                                                     "returns; lower value_lr, keep vf_clip, check the reward scale")
        distinct, n = m.get("distinct_responses"), m.get("batch_size", 0)
        if distinct is not None and n >= 4 and distinct <= lim.distinct_floor:
            found["identical_answers"] = (f"distinct responses for only {distinct:.0%} of the batch's prompts: the policy "
                                          "gives the same answer whatever the prompt (mode collapse onto what the reward "
                                          "likes); raise kl_coef, lower lr, check the reward model ignores the prompt")
        warnings = []
        for code, text in found.items():
            if step - self.last_warned.get(code, -10**9) >= lim.repeat_every:
                self.last_warned[code] = step
                warnings.append(f"{code}: {text}")
        return warnings, False

    def state_dict(self) -> dict:
        return {"first_entropy": self.first_entropy, "value_losses": list(self.value_losses), "last_warned": dict(self.last_warned)}

    def load_state_dict(self, state: dict) -> None:
        self.first_entropy = state["first_entropy"]
        self.value_losses = list(state["value_losses"])
        self.last_warned = dict(state["last_warned"])
