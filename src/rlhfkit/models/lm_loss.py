"""A causal LM's loss on response tokens: what SFT minimises and what evaluation reports as perplexity."""

from __future__ import annotations

import math

import torch

from rlhfkit import distributed as dist
from rlhfkit.data.tokenize import IGNORE_INDEX, Encoded, collate_right


def response_loss(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy over response tokens and their count (for exact accumulation)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logits = logits[:, :-1]  # position t predicts token t+1
    labels = batch["labels"][:, 1:]
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), labels.reshape(-1),
                                             ignore_index=IGNORE_INDEX, reduction="sum")
    return loss, int((labels != IGNORE_INDEX).sum())


@torch.no_grad()
def heldout_loss(model, examples: list[Encoded], pad_id: int, batch_size: int, device=None) -> dict[str, float]:
    """Mean per-token held-out loss and perplexity (``eval_loss``, ``eval_ppl``)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(examples), batch_size):
        batch = collate_right(examples[i:i + batch_size], pad_id)
        loss, n = response_loss(model, batch if device is None else dist.to_device(batch, device))
        total, count = total + float(loss), count + n
    model.train(was_training)
    mean = total / max(count, 1)
    return {"eval_loss": mean, "eval_ppl": math.exp(min(mean, 50.0))}
