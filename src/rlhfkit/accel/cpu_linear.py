"""fp32 linear layers on the CPU through oneDNN instead of the default BLAS route, forward and backward.

torch's CPU ``F.linear`` and ``mm`` in fp32 go to MKL's sgemm, which on AMD processors runs its AVX2 code
path. oneDNN (shipped inside torch, ``torch.ops.mkldnn``) uses AVX-512 where the CPU has it. It is the same
fp32 arithmetic in another summation order: results agree to ~1e-6 relative (tests/accel/test_cpu_linear.py).
bf16 matmuls (autocast) already go through oneDNN and are left alone. Which route is faster depends on the
CPU (on one without AVX-512 it can be the slower one); the measurements are in bench/RESULTS.md.

:func:`use_onednn_linears` switches a model's plain ``nn.Linear`` layers to :class:`OneDNNLinear`, a
subclass with the same parameters, state dict and hooks, whose forward takes this route whenever it
applies (CPU, fp32 input and weight, autocast off, both matrix sides ≥ ``MIN_DIM``) and ``F.linear`` else.
``RLHFKIT_CPU_MATMUL=blas`` in the environment keeps every product on torch's default route.
"""

from __future__ import annotations

import functools
import os

import torch
from torch import Tensor

from rlhfkit.accel.runtime import accel_on

MIN_DIM = 64  # narrower products (LoRA's rank-16 factors, 1-output heads) ran as fast or faster through MKL


@functools.cache
def onednn_linear_available() -> bool:
    """Whether torch's oneDNN linear ops exist and run here (CPU builds with mkldnn) and are not switched off."""
    if os.environ.get("RLHFKIT_CPU_MATMUL", "").lower() == "blas":
        return False
    try:  # a transposed view as the weight: the backward's products pass such views
        out = onednn_mm(torch.ones(1, 2), torch.ones(2, 3).t())
        return bool(torch.equal(out, torch.full((1, 3), 2.0)))
    except (AttributeError, RuntimeError):
        return False


def onednn_mm(a: Tensor, b_t: Tensor, bias: Tensor | None = None) -> Tensor:
    """a · b_tᵀ (+ bias) for 2-D fp32 CPU tensors through oneDNN; either operand may be a transposed view."""
    return torch.ops.mkldnn._linear_pointwise(a, b_t, bias, "none", [], "")


def applies(x: Tensor, weight: Tensor) -> bool:
    """Whether ``x · weightᵀ`` takes the oneDNN route (see the module's docstring)."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32
            and min(weight.shape) >= MIN_DIM and not torch.is_autocast_enabled("cpu") and onednn_linear_available()
            and accel_on())


class OneDNNLinearFn(torch.autograd.Function):
    """y = x·Wᵀ + b with all three products (forward, ∂x = g·W, ∂W = gᵀ·x) through oneDNN."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        flat = x.reshape(-1, x.shape[-1])
        ctx.save_for_backward(flat, weight)
        ctx.in_shape, ctx.has_bias = x.shape, bias is not None
        return onednn_mm(flat, weight, bias).reshape(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad: Tensor):
        flat, weight = ctx.saved_tensors
        g = grad.reshape(-1, weight.shape[0])
        grad_x = onednn_mm(g, weight.t()).reshape(ctx.in_shape) if ctx.needs_input_grad[0] else None
        grad_w = onednn_mm(g.t(), flat.t()) if ctx.needs_input_grad[1] else None
        grad_b = g.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear``, through oneDNN where that applies."""
    if applies(x, weight):
        return OneDNNLinearFn.apply(x, weight, bias)
    return torch.nn.functional.linear(x, weight, bias)


class OneDNNLinear(torch.nn.Linear):
    """``nn.Linear`` whose product goes through oneDNN where that applies; otherwise identical."""

    def forward(self, input: Tensor) -> Tensor:
        return linear(input, self.weight, self.bias)


def use_onednn_linears(model: torch.nn.Module, skip: tuple[torch.nn.Module, ...] = ()) -> int:
    """Switch ``model``'s plain ``nn.Linear`` layers (not ``skip``) to :class:`OneDNNLinear`; returns how many.

    Nothing changes where oneDNN is not available. The switch keeps parameters, buffers, hooks and the
    state dict; ``isinstance(layer, nn.Linear)`` stays true, so peft and saving see the same model.
    """
    if not onednn_linear_available() or not accel_on():
        return 0
    count = 0
    for module in model.modules():
        if type(module) is torch.nn.Linear and not any(module is s for s in skip):
            module.__class__ = OneDNNLinear
            count += 1
    return count
