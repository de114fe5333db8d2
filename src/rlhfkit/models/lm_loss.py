"""A causal LM's loss on response tokens: what SFT minimises and what evaluation reports as perplexity."""

from __future__ import annotations

import math

import torch

from rlhfkit import distributed as dist
from rlhfkit.data.tokenize import IGNORE_INDEX, Encoded, collate_right


def response_window(labels: torch.Tensor) -> tuple[int, int]:
    """(first, end) columns of shifted ``labels`` that hold a response token in some row: the logits that matter."""
    cols = (labels != IGNORE_INDEX).any(0).nonzero()
    return (int(cols[0]), int(cols[-1]) + 1) if len(cols) else (0, 1)


def logits_between(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, first: int, end: int) -> torch.Tensor:
    """The logits at positions ``first`` to ``end`` − 1 only, (B, end − first, V): the output head runs on the
    columns from ``first`` to the last alone (transformers' ``logits_to_keep`` as a count, which every causal LM
    there takes), then the columns past ``end`` are cut; a model that ignores the argument makes them all."""
    keep = input_ids.shape[1] - first
    logits = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=keep).logits
    if logits.shape[1] != keep:  # the argument went into a forward's **kwargs unread: every column was made
        logits = logits[:, first:]
    return logits[:, : end - first]


def response_loss(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy over response tokens and their count (for exact accumulation).

    Logits are made only for the columns from the batch's first response token to its last (``logits_to_keep``):
    the output head is the model's largest product (vocabulary × hidden), and a prompt's columns carry no loss.
    Where prompts are long and answers short (the asr recipe: ~112 prompt tokens, ~12 answer) this cut a bf16 SFT
    step by 14 % (a quarter with the fused AdamW, bench/RESULTS.md); the numbers are the same as from the full logits.
    """
    labels = batch["labels"][:, 1:]  # position t predicts token t+1
    first, end = response_window(labels)
    logits = logits_between(model, batch["input_ids"], batch["attention_mask"], first, end)
    labels = labels[:, first:end]
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
