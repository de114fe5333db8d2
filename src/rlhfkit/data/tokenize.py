"""Chat templates, tokenisation with prompt masking, truncation and collation.

The prompt is the chat template applied to the prompt messages with the generation prompt; the response
is the assistant text followed by the EOS token. Tokenising the two separately is what generation does
too (it starts from exactly these prompt ids), so training and sampling see the same boundary.

Truncation policy: the prompt keeps its last ``max_prompt_len`` tokens (the question is at the end), the
response keeps its first ``max_len - len(prompt)`` tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE_INDEX = -100


def uses_chat_template(tok) -> bool:
    return bool(getattr(tok, "chat_template", None))


def encode_prompt(tok, messages: list[dict], chat: bool = True) -> list[int]:
    """Token ids of a prompt, ending where the assistant's answer starts."""
    if chat and uses_chat_template(tok):
        ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return list(ids)
    text = "\n".join(m["content"] for m in messages)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
    return bos + ids


def encode_response(tok, text: str, add_eos: bool = True) -> list[int]:
    ids = tok(text, add_special_tokens=False)["input_ids"]
    return ids + [tok.eos_token_id] if add_eos else ids


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX on prompt tokens
    truncated: bool


def encode_sft(tok, messages: list[dict], response: str, max_len: int, max_prompt_len: int, chat: bool = True) -> Encoded:
    """One SFT example: prompt ids masked out of the loss, response ids (with EOS) as labels. No messages (a
    language-modelling text): no chat template, only BOS before the text, and the loss on all of it."""
    prompt = encode_prompt(tok, messages, chat) if messages else [tok.bos_token_id] if tok.bos_token_id is not None else []
    resp = encode_response(tok, response)
    truncated = False
    if len(prompt) > max_prompt_len:
        prompt, truncated = prompt[-max_prompt_len:], True
    room = max_len - len(prompt)
    if len(resp) > room:
        resp, truncated = resp[: max(room, 0)], True
    return Encoded(prompt + resp, [IGNORE_INDEX] * len(prompt) + resp, truncated)


def collate_right(batch: list[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad for training: padding gets attention 0 and label IGNORE_INDEX."""
    width = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    attn = torch.zeros((len(batch), width), dtype=torch.long)
    for i, e in enumerate(batch):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        attn[i, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": attn}


def pad_sequences(seqs: list[list[int]], pad_id: int, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad token lists on the ``side`` ("left" or "right"): returns (input_ids, attention_mask), both (batch, width)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        cols = slice(0, len(s)) if side == "right" else slice(width - len(s), width)
        ids[i, cols] = torch.tensor(s, dtype=torch.long)
        attn[i, cols] = 1
    return ids, attn


def left_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token lists (generation): returns (input_ids, attention_mask), both (batch, width)."""
    return pad_sequences(seqs, pad_id, "left")


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that start at 0 on each row's first real token (padded rows stay correct)."""
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.clamp(min=0)
