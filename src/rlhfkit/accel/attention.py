"""The attention kernel for short sequences on the CPU."""

from __future__ import annotations

from contextlib import nullcontext

from torch import Tensor

from rlhfkit.accel.runtime import accel_on

# Up to this many tokens SDPA's math kernel beat the CPU flash kernel, forward and backward (bench/RESULTS.md,
# "Session 5"), so short PPO sequences use it; both compute the same attention.
MATH_ATTENTION_MAX_TOKENS = 256


def short_sequence_attention(input_ids: Tensor):
    """A context choosing SDPA's math kernel for short sequences on the CPU; a no-op otherwise."""
    if input_ids.device.type != "cpu" or input_ids.shape[1] > MATH_ATTENTION_MAX_TOKENS or not accel_on():
        return nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.MATH])
