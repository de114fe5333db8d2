"""Seeded splits and step batches, shared by every trainer.

A held-out split is by prompt (no prompt on both sides), and the batch of optimiser step ``s`` is a pure
function of (seed, s), so a resumed run reads the data in the order an unbroken one would.
"""

from __future__ import annotations

import torch


def split_records(records: list, fraction: float, seed: int) -> tuple[list, list]:
    """Hold out ``fraction`` of the records (seeded); none when that rounds to zero.

    Records are SFT examples, prompts, or the reward model's groups (one per prompt): either way no item is on both sides.
    """
    n_eval = int(round(len(records) * fraction))
    if n_eval == 0 or n_eval >= len(records):
        return records, []
    perm = torch.randperm(len(records), generator=torch.Generator().manual_seed(seed)).tolist()
    held = set(perm[:n_eval])
    return [r for i, r in enumerate(records) if i not in held], [r for i, r in enumerate(records) if i in held]


def none_held_out(n: int, fraction: float, held: list, what: str) -> str:
    """Why a positive ``eval_fraction`` of ``n`` ``what`` held out nothing (so no held-out metrics), or ""."""
    if fraction <= 0 or held or n == 0:
        return ""
    if round(n * fraction) >= n:
        return f"; eval_fraction {fraction:g} would hold out all {n} {what}, so none is: no held-out metrics"
    return (f"; eval_fraction {fraction:g} of {n} {what} rounds to none held out: no held-out metrics "
            f"(eval_fraction ≥ {0.5 / n:.2g} holds out one, or give eval_data)")


def batch_indices(step: int, batch_size: int, n: int, seed: int) -> list[int]:
    """Example indices of optimiser step ``step``: epochs of seeded permutations, read in order."""
    out = []
    for j in range(step * batch_size, (step + 1) * batch_size):
        epoch, pos = divmod(j, n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100003 + epoch))
        out.append(int(perm[pos]))
    return out
