"""Sampling a token per row from its probabilities with one uniform number: the same draw as a full
cumulative sum, at a fraction of the cost for a large vocabulary."""

from __future__ import annotations

import torch
from torch import Tensor


def inverse_cdf(probs: Tensor, u: Tensor, block: int = 256) -> Tensor:
    """Per row, the token whose slice of the cumulative distribution holds ``u`` (B,): a sample of ``probs`` (B, V).

    Two levels: the cumulative sums of blocks of ``block`` tokens find the block, then one block's cumulative
    sum finds the token, instead of one float64 cumulative sum over the whole (B, vocab) row: the same tokens
    (tests/accel/test_speed_paths.py), far less work per decoding step (bench/RESULTS.md).
    """
    # float64, as torch.multinomial accumulates: a float32 sum near 1 rounds the many tiny probabilities of a
    # large vocabulary to 0 or to one ulp, over-sampling junk tokens (KL spikes in training).
    rows, vocab = probs.shape
    pad = -vocab % block
    blocks = (torch.nn.functional.pad(probs, (0, pad)) if pad else probs).view(rows, -1, block)
    block_cdf = blocks.sum(-1, dtype=torch.float64).cumsum(-1)  # (B, blocks)
    x = u.double() * block_cdf[:, -1]  # scaled by the row's total: rounding never runs off the end
    b = torch.searchsorted(block_cdf, x[:, None], right=True).squeeze(1).clamp(max=blocks.shape[1] - 1)
    before = torch.where(b > 0, block_cdf.gather(1, (b - 1).clamp(min=0)[:, None]).squeeze(1), torch.zeros_like(x))
    inner = blocks[torch.arange(rows, device=probs.device), b].double().cumsum(-1)  # (B, block)
    i = torch.searchsorted(inner, (x - before)[:, None], right=True).squeeze(1).clamp(max=block - 1)
    return (b * block + i).clamp(max=vocab - 1)
