"""Batched generation with the KV cache (transformers ``generate``), left-padded prompts.

Prompts are sorted by length so that each batch carries little padding, then answers are put back in
the caller's order. A response is cut after its first EOS; the EOS stays, so the caller can tell a
finished answer from one that hit the length limit.
"""

from __future__ import annotations

from pathlib import Path

import torch
from rich.progress import Progress

from rlhfkit.data.formats import prompt_messages, prompt_text, read_records, write_records
from rlhfkit.data.tokenize import encode_prompt, left_pad


def sampling_kwargs(temperature: float, top_p: float = 1.0, top_k: int = 0) -> dict:
    """``generate`` arguments for greedy (temperature 0) or sampled decoding."""
    if temperature <= 0:
        return {"do_sample": False}
    return {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": top_k or None}


def cut_at_eos(ids: list[int], eos_id: int, pad_id: int) -> list[int]:
    """Response ids up to and including the first EOS (generate pads finished rows afterwards)."""
    out = []
    for t in ids:
        out.append(t)
        if t == eos_id:
            return out
    # No EOS: strip trailing padding only when pad differs from EOS (otherwise it was handled above).
    while out and pad_id != eos_id and out[-1] == pad_id:
        out.pop()
    return out


@torch.inference_mode()
def generate_ids(model, tok, prompts: list[list[int]], max_new_tokens: int, temperature: float = 0.0,
                 top_p: float = 1.0, top_k: int = 0, batch_size: int = 8, progress: bool = False) -> list[list[int]]:
    """Generate an answer for each prompt (token ids); returns each answer's ids, EOS included when produced."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[list[int] | None] = [None] * len(prompts)
    kwargs = sampling_kwargs(temperature, top_p, top_k)
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("generating", total=len(prompts))
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            input_ids, attn = left_pad([prompts[i] for i in idx], tok.pad_token_id)
            gen = model.generate(input_ids=input_ids, attention_mask=attn, max_new_tokens=max_new_tokens,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, **kwargs)
            for row, i in enumerate(idx):
                out[i] = cut_at_eos(gen[row, input_ids.shape[1]:].tolist(), tok.eos_token_id, tok.pad_token_id)
            bar.advance(task, len(idx))
    return out  # type: ignore[return-value]


def decode_response(tok, ids: list[int]) -> str:
    return tok.decode(ids, skip_special_tokens=True).strip()


def generate_texts(model, tok, records: list[dict], max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
                   top_k: int = 0, batch_size: int = 8, chat: bool = True, progress: bool = False) -> list[str]:
    """Answer prompt records ({"prompt"} or {"messages"}) with decoded text."""
    prompts = [encode_prompt(tok, prompt_messages(r), chat) for r in records]
    ids = generate_ids(model, tok, prompts, max_new_tokens, temperature, top_p, top_k, batch_size, progress)
    return [decode_response(tok, x) for x in ids]


def generate_file(cfg, prompt: str | None = None, prompts: str | Path | None = None, output: str | Path | None = None) -> list[dict]:
    """``rlhf generate``: answer one prompt or a prompt file; write JSONL when ``output`` is given."""
    from rlhfkit.models.loading import load_causal_lm, load_tokenizer, set_threads

    set_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    records = [{"prompt": prompt}] if prompt is not None else read_records(prompts, "prompt")
    tok = load_tokenizer(cfg.model)
    model = load_causal_lm(cfg.model)
    texts = generate_texts(model, tok, records, cfg.max_new_tokens, cfg.temperature, cfg.top_p, cfg.top_k,
                           cfg.batch_size, cfg.chat, progress=len(records) > 1)
    out = [{"prompt": prompt_text(r), "response": t, "model": cfg.model} for r, t in zip(records, texts)]
    if output is not None:
        write_records(output, out)
    return out
