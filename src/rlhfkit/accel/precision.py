"""Matmul precision: bf16 autocast where the hardware runs bf16 fast, fp32 elsewhere.

On CPUs with bf16 instructions (AVX512-BF16, AMX) oneDNN runs bf16 matmuls about twice as fast as fp32;
on CPUs without them bf16 is emulated and slower, so ``auto`` only picks bf16 where it pays. Weights,
optimiser state and losses stay fp32 (autocast casts matmul inputs), as in mixed-precision training.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch

from rlhfkit.accel.runtime import accel_on

PRECISIONS = ("auto", "fp32", "bf16")


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """True when the CPU advertises bf16 matmul instructions (Linux ``/proc/cpuinfo`` flags)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def resolve_precision(precision: str, device_type: str = "cpu") -> str:
    """``auto`` → ``bf16`` where the device has fast bf16 (CUDA with bf16 support, CPUs with bf16 instructions
    unless the CPU speed paths are off: ``RLHFKIT_ACCEL=0``)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return precision
    if device_type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if device_type == "cpu" and cpu_has_fast_bf16() and accel_on() else "fp32"


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
