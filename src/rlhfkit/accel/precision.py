"""Matmul precision: bf16 autocast where the hardware runs bf16 fast, fp32 elsewhere.

On CPUs with bf16 instructions (AVX512-BF16, AMX) oneDNN runs bf16 matmuls about twice as fast as fp32;
on CPUs without them bf16 is emulated and slower, so ``auto`` only picks bf16 where it measured faster. Weights,
optimiser state and losses stay fp32 (autocast casts matmul inputs), as in mixed-precision training.
"""

from __future__ import annotations

import contextlib
import functools

import torch

from rlhfkit.accel.runtime import accel_on

PRECISIONS = ("auto", "fp32", "bf16")


# bf16 must be this much faster than fp32 on the probe's products to be chosen: autocast adds casts, and bf16
# rounds the products, so a small gain is not worth it.
BF16_MARGIN = 1.2


@functools.cache
def cpu_bf16_pays() -> bool:
    """Whether bf16 products run at least ``BF16_MARGIN`` × faster than fp32 ones on this CPU: the cached measurement
    of this machine (CPU model, flags, torch version), else a new one on a 135M model's training shapes, fp32 through
    the route this machine chose (``accel/cpu_linear.py``) against bf16 as autocast runs it; saved, and said once
    ("products on this CPU, training shapes: fp32 193 GFLOP/s, bf16 357 → bf16"). A CPU with bf16 instructions
    (AVX512-BF16, AMX) runs them about twice as fast; one without emulates bf16, slower than fp32."""
    from rlhfkit.accel.cpu_linear import PROBE_SHAPES, cached_choice, onednn_chosen, onednn_mm, rates_in_turns

    def measure():
        fp32 = onednn_mm if onednn_chosen("training") else torch.nn.functional.linear
        rates = rates_in_turns(PROBE_SHAPES, {"fp32": (fp32, torch.float32),
                                              "bf16": (torch.nn.functional.linear, torch.bfloat16)})
        choice = "bf16" if rates["bf16"] >= BF16_MARGIN * rates["fp32"] else "fp32"
        line = (f"products on this CPU, training shapes: fp32 {rates['fp32']:.0f} GFLOP/s, bf16 {rates['bf16']:.0f} → "
                f"{choice} for precision: auto; precision: fp32|bf16 overrides")
        return {"fp32_gflops": round(rates["fp32"], 1), "bf16_gflops": round(rates["bf16"], 1), "precision": choice}, line

    return cached_choice("precision", measure)["precision"] == "bf16"


def resolve_precision(precision: str, device_type: str = "cpu") -> str:
    """``auto`` → ``bf16`` where the device has fast bf16: CUDA with bf16 support; a CPU where it measured faster
    (:func:`cpu_bf16_pays`), unless the CPU speed paths are off (``RLHFKIT_ACCEL=0``)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return precision
    if device_type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if device_type == "cpu" and accel_on() and cpu_bf16_pays() else "fp32"


def autocast(precision: str, device_type: str = "cpu"):
    """A context running matmuls in bf16 (``precision == "bf16"``) or a no-op (``fp32``)."""
    if precision == "bf16":
        return torch.autocast(device_type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def dtype_for(precision: str, device_type: str = "cpu") -> torch.dtype:
    """The weight dtype for sampling-only work: bf16 where ``precision`` resolves to bf16, else fp32."""
    return torch.bfloat16 if resolve_precision(precision, device_type) == "bf16" else torch.float32


def sampling_copy(model, precision: str, device_type: str = "cpu"):
    """The model to sample answers from: ``model`` itself (fp32) or a bf16 copy of it.

    Decoding streams every weight once per token, so bf16 weights (half the bytes) decode faster on CPUs with
    bf16 instructions (bench/RESULTS.md); scoring (log-probs, KL) keeps using the fp32 ``model``.
    """
    if dtype_for(precision, device_type) == torch.float32:
        return model
    import copy

    return copy.deepcopy(model).to(torch.bfloat16)


def keep_input_dtype(policy) -> None:
    """Stop peft casting each LoRA layer's bf16 input to its fp32 adapter's dtype.

    Every pass of a bf16 policy runs under autocast, which casts that fp32 copy straight back to bf16 for the
    adapter's matmul: the same numbers, but two copies of every layer's activations (and their backward) per pass.
    """
    for module in policy.modules():
        if hasattr(module, "cast_input_dtype_enabled"):
            module.cast_input_dtype_enabled = False
