"""The policy's output head in fp32: logits and per-token log-probs from (possibly bf16) hidden states.

PPO's ratio compares the same token's log-prob from passes of different shapes (the rollout's, a
minibatch's), so logits are always made in fp32: bf16 logits near 30 are 0.125 apart, ~0.2–0.5 nats at
temperature 0.7. On the CPU the head's fp32 product (49k × 576, the largest of the model) goes through
oneDNN (:mod:`rlhfkit.accel.cpu_linear`): on the 2-core benchmark machine 8 rows 12.8 → 4.4 ms, 256 rows
105 → 49 ms, the same fp32 arithmetic in another summation order.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlhfkit.accel import cpu_linear
from rlhfkit.rl.losses import linear_logprobs, logprobs_from_logits


def fp32_weight(lm_head) -> Tensor:
    """An fp32 copy of a bf16 head's weight, made once and kept while the weight is unchanged.

    Casting the 49k × 576 head on every decoding step cost as much as the bf16 weights saved.
    An fp32 weight is itself; a weight that trains (``requires_grad``) is cast each call, so that its gradient flows.
    """
    weight = lm_head.weight
    if weight.dtype == torch.float32 or weight.requires_grad:
        return weight.float()
    return _cached(lm_head, "_rlhfkit_fp32", lambda: weight.detach().float())


def _cached(lm_head, attr: str, make):
    """``make()`` kept on ``lm_head`` until its weight changes (in place or replaced)."""
    weight = lm_head.weight
    key = (weight.data_ptr(), weight._version)
    cached = getattr(lm_head, attr, None)
    if cached is None or cached[0] != key:
        with torch.inference_mode(False):  # normal tensors: a training pass may use them
            cached = (key, make())
        setattr(lm_head, attr, cached)
    return cached[1]


def plain_linear(lm_head) -> bool:
    """A bare ``nn.Linear`` (no wrapper, no hooks such as DDP's or FSDP's): its maths may bypass the module."""
    return type(lm_head) is torch.nn.Linear and not lm_head._forward_hooks and not lm_head._forward_pre_hooks


class Fp32Head:
    """``lm_head`` as fp32 logits from (possibly bf16) hidden states, autocast disabled; also the fused
    per-token log-probs (:func:`~rlhfkit.rl.losses.linear_logprobs`) when the head is a plain linear layer.
    A plain head's fp32 product goes through oneDNN on the CPU (:mod:`rlhfkit.accel.cpu_linear`).
    """

    def __init__(self, lm_head):
        self.lm_head = lm_head

    def __call__(self, hidden: Tensor) -> Tensor:
        lm_head = self.lm_head
        with torch.autocast(hidden.device.type, enabled=False):
            if not plain_linear(lm_head):
                return lm_head(hidden.float())  # the module itself, hooks (FSDP, DDP) and all
            bias = None if lm_head.bias is None else lm_head.bias.float()
            return cpu_linear.linear(hidden.float(), fp32_weight(lm_head), bias)

    def logprobs(self, hidden: Tensor, labels: Tensor, temperature: float) -> Tensor:
        """log softmax(logits / temperature)[labels], (B, R), the same numbers as from ``self(hidden)``."""
        if not plain_linear(self.lm_head):
            return logprobs_from_logits(self(hidden), labels, temperature)  # a wrapped head: through its module
        return linear_logprobs(hidden, fp32_weight(self.lm_head), self.lm_head.bias, labels, temperature)


def fp32_logits(lm_head) -> Fp32Head:
    """``lm_head`` as a function computing fp32 logits from (possibly bf16) hidden states, autocast disabled."""
    return Fp32Head(lm_head)
