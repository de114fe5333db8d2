"""The policy's output head in fp32: logits and per-token log-probs from (possibly bf16) hidden states.

PPO's ratio compares the same token's log-prob from passes of different shapes (the rollout's, a
minibatch's), so logits are always made in fp32: bf16 logits near 30 are 0.125 apart, ~0.2–0.5 nats at
temperature 0.7. On the CPU the head's fp32 product (vocabulary × hidden, the largest of the model) goes
through oneDNN (:mod:`rlhfkit.accel.cpu_linear`), the same fp32 arithmetic in another summation order, and
the per-token log-probs are fused with it (:class:`LinearLogprobs`), so no (rows, vocabulary) tensor of the
whole batch is built. Measured speed-ups: bench/RESULTS.md.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlhfkit.accel import cpu_linear
from rlhfkit.accel.cpu_linear import onednn_mm
from rlhfkit.accel.runtime import accel_on
from rlhfkit.rl.losses import EXP_FLOOR, logprobs_from_logits


class LinearLogprobs(torch.autograd.Function):
    """log softmax((hidden · Wᵀ + b) / T)[label] per row, with a hand-written backward.

    The same numbers as ``logprobs_from_logits(F.linear(hidden, W, b), labels, T)``, without autograd's
    vocabulary-wide temporaries: the plain route keeps the logits, their ÷T copy and the log-softmax's
    intermediates, and its backward builds a zero (rows, vocab) tensor for the gather plus three more
    elementwise passes over it, each a fresh (rows, vocab) allocation. Here the forward keeps one logits buffer per chunk of rows (only when a gradient is needed) and the
    backward turns it in place into the gradient (softmax − one-hot) · −g / T. Backward runs once (the
    buffers are consumed), as PPO's does.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, temperature: float, chunk_rows: int):
        keep = any(ctx.needs_input_grad[:3])
        dnn = cpu_linear.applies(hidden, weight)  # fp32 on the CPU: oneDNN's products
        out = hidden.new_empty(hidden.shape[0])
        lse = hidden.new_empty(hidden.shape[0])
        scratch, buffers = None, []
        for s in range(0, hidden.shape[0], chunk_rows):
            h = hidden[s : s + chunk_rows]
            if dnn:
                logits = onednn_mm(h, weight, bias)
            else:
                logits = torch.mm(h, weight.t()) if bias is None else torch.addmm(bias, h, weight.t())
            if temperature != 1.0:
                logits.div_(temperature)
            top = logits.amax(-1, keepdim=True)
            if scratch is None or scratch.shape[0] < len(h):
                scratch = torch.empty_like(logits)
            shifted = torch.sub(logits, top, out=scratch[: len(h)]).clamp_(min=EXP_FLOOR).exp_()
            lse[s : s + len(h)] = top.squeeze(-1) + shifted.sum(-1).log()
            out[s : s + len(h)] = logits.gather(1, labels[s : s + chunk_rows, None]).squeeze(1) - lse[s : s + len(h)]
            if keep:
                buffers.append(logits)
        ctx.save_for_backward(hidden, weight, bias, labels, lse)
        ctx.buffers, ctx.temperature, ctx.chunk_rows, ctx.dnn = buffers, temperature, chunk_rows, dnn
        return out

    @staticmethod
    def backward(ctx, grad_out):
        if ctx.buffers is None:
            raise RuntimeError("LinearLogprobs: backward can run once (its buffers are consumed)")
        hidden, weight, bias, labels, lse = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = None
        grad_b = torch.zeros_like(bias) if need_b else None
        g = (grad_out.to(hidden.dtype) / ctx.temperature)[:, None]  # ∂/∂logits of logits/T
        with torch.autocast(hidden.device.type, enabled=False):
            for i, s in enumerate(range(0, hidden.shape[0], ctx.chunk_rows)):
                p = ctx.buffers[i]
                e = s + p.shape[0]
                p.sub_(lse[s:e, None]).clamp_(min=EXP_FLOOR).exp_().mul_(-g[s:e])  # softmax · (−g/T)
                p.scatter_add_(1, labels[s:e, None], g[s:e])  # + one-hot · g/T
                if need_h and ctx.dnn:
                    grad_h[s:e] = onednn_mm(p, weight.t())
                elif need_h:
                    torch.mm(p, weight, out=grad_h[s:e])
                if need_w and ctx.dnn and grad_w is None:  # the first chunk's product is the gradient: no zeros + add
                    grad_w = onednn_mm(p.t(), hidden[s:e].t())
                elif need_w:
                    if grad_w is None:
                        grad_w = torch.zeros_like(weight)
                    grad_w.addmm_(p.t(), hidden[s:e])
                if need_b:
                    grad_b += p.sum(0)
                ctx.buffers[i] = None
        ctx.buffers = None
        return grad_h, grad_w, grad_b, None, None, None


def linear_logprobs(hidden: Tensor, weight: Tensor, bias: Tensor | None, labels: Tensor, temperature: float = 1.0,
                    chunk_rows: int = 256) -> Tensor:
    """log softmax((hidden · Wᵀ + b) / T)[label]: (...,) for hidden (..., H), labels (...); fp32, autocast off.

    Rows go through ``chunk_rows`` at a time (256 × 49k logits = 50 MB), so no (rows, vocab) tensor of the
    whole batch is built; see :class:`LinearLogprobs` for the gradient.
    """
    shape = labels.shape
    with torch.autocast(hidden.device.type, enabled=False):
        flat = hidden.reshape(-1, hidden.shape[-1]).float()
        out = LinearLogprobs.apply(flat, weight.float(), None if bias is None else bias.float(),
                                   labels.reshape(-1).long(), temperature, chunk_rows)
    return out.reshape(shape)


def fp32_weight(lm_head) -> Tensor:
    """An fp32 copy of a bf16 head's weight, made once and kept while the weight is unchanged.

    Casting the whole head on every decoding step would cost as much as the bf16 weights save.
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
    """A bare ``nn.Linear`` (no wrapper, no hooks such as DDP's or FSDP's): its maths may bypass the module.
    With the speed paths off (``RLHFKIT_ACCEL=0``) no head is: every product and log-prob goes the plain way."""
    return (type(lm_head) is torch.nn.Linear and not lm_head._forward_hooks and not lm_head._forward_pre_hooks
            and accel_on())


class Fp32Head:
    """``lm_head`` as fp32 logits from (possibly bf16) hidden states, autocast disabled; also the fused
    per-token log-probs (:func:`linear_logprobs`) when the head is a plain linear layer.
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
