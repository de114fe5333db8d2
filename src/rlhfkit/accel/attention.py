"""The attention kernel for short sequences on the CPU, chosen by measurement.

SDPA on the CPU has a flash kernel (its default) and a math kernel (plain products and a softmax). For short
sequences the math kernel can be the faster one, forward and backward: on one AVX-512 machine, bf16, 9 heads,
4.9 ms a layer at 92 tokens against the flash kernel's 10.1, equal at 256, 0.6× at 512 (bench/RESULTS.md).
Where the lines cross differs by CPU and precision, so it is measured, not assumed: the first PPO pass on a
machine times both kernels on a 135M Llama's attention at ``PROBE_TOKENS`` (about a second), keeps the longest
length at which the math kernel was faster, caches it per machine and precision in the cache folder beside the
product routes (``accel/cpu_linear.py``) and says it once. Both kernels compute the same attention.
``RLHFKIT_MATH_ATTENTION_MAX_TOKENS=N`` sets the length without measuring (0: never the math kernel).
"""

from __future__ import annotations

import functools
import os
import time
from contextlib import nullcontext

import torch
from torch import Tensor

from rlhfkit.accel.runtime import accel_on

PROBE_TOKENS = (128, 256, 512)  # PPO's training and reference passes are prompt + answer: ~100–300 tokens
PROBE_SHAPE = (2, 9, 64)  # rows, heads, head size: a 135M Llama's attention


def measure_kernels(dtype: torch.dtype, tokens=PROBE_TOKENS, reps: int = 2) -> dict[int, dict[str, float]]:
    """Seconds of SDPA forward + backward by the math and the flash kernel at each length, the best of ``reps``.

    Causal, with a padding mask (left-padded rows, as the trainers pass them); the kernels take turns, one
    repetition each, so that a busy spell slows both alike. Operands come from a generator of their own: the
    measurement happens inside a run and must not change what it samples next.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    gen = torch.Generator().manual_seed(0)
    rows, heads, size = PROBE_SHAPE
    kernels = {"math": SDPBackend.MATH, "flash": SDPBackend.FLASH_ATTENTION}
    out: dict[int, dict[str, float]] = {}
    for n in tokens:
        q, k, v = (torch.randn(rows, heads, n, size, generator=gen).to(dtype).requires_grad_() for _ in range(3))
        keep = torch.ones(rows, n, dtype=torch.bool)
        keep[0, : n // 4] = False  # one left-padded row
        mask = torch.ones(n, n, dtype=torch.bool).tril()[None, None] & keep[:, None, None, :]
        mask = mask | torch.eye(n, dtype=torch.bool)[None, None]  # every query sees itself: no empty softmax row
        grad = torch.randn(rows, heads, n, size, generator=gen).to(dtype)

        def step(kernel) -> None:
            with sdpa_kernel([kernel]):
                y = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            y.backward(grad)

        for kernel in kernels.values():  # warm up
            step(kernel)
        best = dict.fromkeys(kernels, float("inf"))
        for _ in range(reps):
            for name, kernel in kernels.items():  # in turn
                t0 = time.perf_counter()
                step(kernel)
                best[name] = min(best[name], time.perf_counter() - t0)
        out[n] = best
    return out


@functools.cache
def math_attention_max_tokens(dtype: torch.dtype = torch.float32) -> int:
    """The longest sequence that takes the math kernel at ``dtype``: the setting, else this machine's cached
    measurement, else a new one (saved, and said once on stderr)."""
    setting = os.environ.get("RLHFKIT_MATH_ATTENTION_MAX_TOKENS", "")
    if setting:
        if not setting.isdigit():
            raise ValueError(f"RLHFKIT_MATH_ATTENTION_MAX_TOKENS: expected a whole number of tokens (0: never), got {setting!r}")
        return int(setting)
    from rlhfkit.accel.cpu_linear import cached_choice

    name = "bf16" if dtype == torch.bfloat16 else "fp32"

    def measure():
        # the first pass that asks may run without gradients or under autocast: the probe needs the one, not the other
        with torch.inference_mode(False), torch.enable_grad(), torch.autocast("cpu", enabled=False):
            times = measure_kernels(dtype)
        longest = max((n for n, t in times.items() if t["math"] < t["flash"]), default=0)
        said = ", ".join(f"{n} tokens {1e3 * t['math']:.1f} / {1e3 * t['flash']:.1f} ms" for n, t in times.items())
        line = (f"attention forward + backward on this CPU, {name}, math / flash kernel: {said} → the math kernel up to "
                f"{longest} tokens; RLHFKIT_MATH_ATTENTION_MAX_TOKENS=N overrides")
        return {"ms": {str(n): {k: round(1e3 * s, 2) for k, s in t.items()} for n, t in times.items()},
                "math_max_tokens": longest}, line

    return int(cached_choice(f"attention {name}", measure)["math_max_tokens"])


def short_sequence_attention(input_ids: Tensor):
    """A context choosing SDPA's math kernel for sequences up to the measured length on the CPU; a no-op otherwise.

    The length is measured at the precision of the pass: bf16 under autocast, fp32 otherwise."""
    if input_ids.device.type != "cpu" or not accel_on():
        return nullcontext()
    dtype = torch.bfloat16 if torch.is_autocast_enabled("cpu") else torch.float32
    if input_ids.shape[1] > math_attention_max_tokens(dtype):
        return nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.MATH])
