"""The policy's output head in fp32: logits and per-token log-probs from (possibly bf16) hidden states.

PPO's ratio compares the same token's log-prob from passes of different shapes (the rollout's, a
minibatch's), so logits are always made in fp32: bf16 logits near 30 are 0.125 apart, ~0.2–0.5 nats at
temperature 0.7. On the CPU a frozen head's fp32 weight is also kept prepacked for oneDNN's fp32 matmul,
which on the 2-core benchmark machine ran the 49k × 576 head 2–4× faster than the default BLAS route
(8 rows: 24 → 5 ms; 128 rows: 87 → 39 ms; the backward's 128 × 49k · 49k × 576: 53 → 39 ms), with the
same fp32 arithmetic (results agree to summation order, ~1e-6).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from rlhfkit.ppo.losses import linear_logprobs, logprobs_from_logits


def fp32_weight(lm_head) -> Tensor:
    """An fp32 copy of a bf16 head's weight, made once and kept while the weight is unchanged.

    Casting the 49k × 576 head on every decoding step cost as much as the bf16 weights saved.
    A weight that trains (``requires_grad``) is cast each call, so that its gradient flows.
    """
    weight = lm_head.weight
    if weight.requires_grad:
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


@functools.cache
def onednn_linear_available() -> bool:
    """Whether torch's oneDNN ops for a prepacked fp32 linear layer exist and run here (CPU builds with mkldnn)."""
    try:
        w = torch.ops.mkldnn._reorder_linear_weight(torch.ones(3, 2))
        out = torch.ops.mkldnn._linear_pointwise(torch.ones(1, 2), w, None, "none", [], "")
        return bool(torch.equal(out, torch.full((1, 3), 2.0)))
    except (AttributeError, RuntimeError):
        return False


class PackedWeight:
    """A head weight (V, H) in fp32, prepacked for oneDNN: ``logits(h)`` = h·Wᵀ + b, ``grad_input(g)`` = g·W.

    The backward's packing (of Wᵀ) is made on its first use, so passes without gradients never pay for it.
    """

    def __init__(self, weight: Tensor, bias: Tensor | None):
        self.weight, self.bias = weight, None if bias is None else bias.detach().float()
        self.forward_packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach().float())
        self.backward_packed = None

    def logits(self, hidden: Tensor) -> Tensor:
        return torch.ops.mkldnn._linear_pointwise(hidden, self.forward_packed, self.bias, "none", [], "")

    def grad_input(self, grad_logits: Tensor) -> Tensor:
        if self.backward_packed is None:
            with torch.inference_mode(False):
                self.backward_packed = torch.ops.mkldnn._reorder_linear_weight(self.weight.detach().float().t().contiguous())
        return torch.ops.mkldnn._linear_pointwise(grad_logits, self.backward_packed, None, "none", [], "")


def plain_linear(lm_head) -> bool:
    """A bare ``nn.Linear`` (no wrapper, no hooks such as DDP's or FSDP's): its maths may bypass the module."""
    return type(lm_head) is torch.nn.Linear and not lm_head._forward_hooks and not lm_head._forward_pre_hooks


class Fp32Head:
    """``lm_head`` as fp32 logits from (possibly bf16) hidden states, autocast disabled; also the fused
    per-token log-probs (:func:`~rlhfkit.ppo.losses.linear_logprobs`) when the head is a plain linear layer.

    ``decoding``: the head of a sampling loop (no gradients, many calls on one unchanged weight). A
    trainable head is then packed too, once for this object, as it is called ~once per generated token.
    """

    def __init__(self, lm_head, decoding: bool = False):
        self.lm_head = lm_head
        self.packed = None
        if lm_head.weight.device.type == "cpu" and plain_linear(lm_head) and onednn_linear_available():
            if not lm_head.weight.requires_grad:
                self.packed = _cached(lm_head, "_rlhfkit_packed", lambda: PackedWeight(lm_head.weight, lm_head.bias))
            elif decoding:
                self.packed = PackedWeight(lm_head.weight, lm_head.bias)

    def decoding(self) -> "Fp32Head":
        """This head for a sampling loop (see the class)."""
        return Fp32Head(self.lm_head, decoding=True)

    def __call__(self, hidden: Tensor) -> Tensor:
        lm_head = self.lm_head
        with torch.autocast(hidden.device.type, enabled=False):
            if self.packed is not None and not (torch.is_grad_enabled() and (hidden.requires_grad or lm_head.weight.requires_grad)):
                return self.packed.logits(hidden.float())  # no gradient through it: the packed op has no backward
            if lm_head.weight.dtype == torch.float32:
                return lm_head(hidden.float())  # the module itself, hooks (FSDP, DDP) and all
            bias = None if lm_head.bias is None else lm_head.bias.float()
            return torch.nn.functional.linear(hidden.float(), fp32_weight(lm_head), bias)  # a bf16 base's frozen head

    def logprobs(self, hidden: Tensor, labels: Tensor, temperature: float) -> Tensor:
        """log softmax(logits / temperature)[labels], (B, R), the same numbers as from ``self(hidden)``."""
        if not plain_linear(self.lm_head):
            return logprobs_from_logits(self(hidden), labels, temperature)  # a wrapped head: through its module
        if self.packed is not None and not self.lm_head.weight.requires_grad:
            return linear_logprobs(hidden, None, None, labels, temperature, packed=self.packed)
        return linear_logprobs(hidden, fp32_weight(self.lm_head), self.lm_head.bias, labels, temperature)


def fp32_logits(lm_head) -> Fp32Head:
    """``lm_head`` as a function computing fp32 logits from (possibly bf16) hidden states, autocast disabled."""
    return Fp32Head(lm_head)
