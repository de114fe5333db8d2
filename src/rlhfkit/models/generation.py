"""Batched generation with the KV cache, left-padded prompts: sampling from the whole distribution through our
decoding loop (``models/rollout.sample``: rows that repeat a prompt share its pass), greedy, top-p and top-k
decoding through transformers' ``generate``.

Prompts are sorted by length so that each batch carries little padding, then answers are put back in
the caller's order. A response is cut after its first EOS; the EOS stays, so the caller can tell a
finished answer from one that hit the length limit.
"""

from __future__ import annotations

from pathlib import Path

import torch
from rich.progress import Progress

from rlhfkit.config import ConfigError
from rlhfkit.data.formats import prompt_messages, prompt_text, read_records, write_records
from rlhfkit.data.tokenize import encode_prompt, left_pad
from rlhfkit.models.rollout import sample


def sampling_kwargs(temperature: float, top_p: float = 1.0, top_k: int = 0) -> dict:
    """``generate`` arguments for greedy (temperature 0) or sampled decoding."""
    if temperature <= 0:
        return {"do_sample": False}
    return {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": top_k or None}


def uses_our_sampler(temperature: float, top_p: float = 1.0, top_k: int = 0) -> bool:
    """Whether :func:`generate_ids` decodes through our loop (sampling from the whole distribution: faster, and rows
    that repeat a prompt share its pass) rather than through transformers' ``generate`` (greedy, top-p, top-k)."""
    return temperature > 0 and top_p >= 1.0 and not top_k


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
    # sampling from the whole distribution goes through our loop (faster, bench/RESULTS.md); greedy, top-p and
    # top-k through transformers' generate
    full_distribution = uses_our_sampler(temperature, top_p, top_k)
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("generating", total=len(prompts))
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            input_ids, attn = left_pad([prompts[i] for i in idx], tok.pad_token_id)
            if full_distribution:  # our decoding loop: repeated prompts share their pass (models/rollout.py)
                gen = sample(model, input_ids, attn, max_new_tokens, temperature, tok.eos_token_id, tok.pad_token_id)["response"]
            else:
                gen = model.generate(input_ids=input_ids, attention_mask=attn, max_new_tokens=max_new_tokens,
                                     pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, **kwargs)
                gen = gen[:, input_ids.shape[1]:]
            for row, i in enumerate(idx):
                out[i] = cut_at_eos(gen[row].tolist(), tok.eos_token_id, tok.pad_token_id)
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


class TransformersGenerator:
    """The default backend: ``generate`` on the in-process model, so it always samples with current weights."""

    def __init__(self, model, tok, batch_size: int = 8, progress: bool = False):
        self.model, self.tok, self.batch_size, self.progress = model, tok, batch_size, progress

    def generate(self, prompt_token_ids: list[list[int]], max_new_tokens: int, temperature: float = 0.0,
                 top_p: float = 1.0, top_k: int = 0, n: int = 1) -> list[list[int]]:
        """``n`` answers per prompt, prompt-major; each ends with EOS when one was produced."""
        repeated = [p for p in prompt_token_ids for _ in range(n)]
        return generate_ids(self.model, self.tok, repeated, max_new_tokens, temperature, top_p, top_k,
                            self.batch_size, self.progress)

    def load_weights(self, state_dict_or_model) -> int:
        return 0  # the generator IS the policy: nothing to push


def make_generator(backend: str, spec: str, tok, model=None, batch_size: int = 8, progress: bool = False, **vllm_kwargs):
    """The generation backend for ``--generation transformers|vllm``: an object with
    ``.generate(prompt_token_ids, max_new_tokens, temperature, top_p, top_k, n) -> list[list[int]]`` and
    ``.load_weights(model)`` (call it after each policy update; a no-op for transformers).

    ``spec`` is the model spec; ``model`` the in-process policy when there is one (vLLM then starts from its
    current weights, LoRA merged).
    """
    if backend == "transformers":
        from rlhfkit.models.loading import load_causal_lm

        return TransformersGenerator(model if model is not None else load_causal_lm(spec), tok, batch_size, progress)
    if backend == "vllm":
        from rlhfkit.models.loading import _adapter_base, is_adapter_dir, load_causal_lm, resolve
        from rlhfkit.models.vllm_backend import VLLMGenerator, require_vllm

        require_vllm()
        if spec in ("tiny", "tiny-minilm"):
            raise ConfigError("generation: vllm needs a model folder or hub id; the tiny test model exists only in memory")
        path = Path(resolve(spec))
        adapter = is_adapter_dir(path)
        # vLLM loads the base model; a LoRA policy's merged weights are pushed into it right away.
        gen = VLLMGenerator(resolve(_adapter_base(path)) if adapter else str(path), **vllm_kwargs)
        if model is None and adapter:
            model = load_causal_lm(spec)
        if model is not None:
            gen.load_weights(model)
        return gen
    raise ConfigError(f"generation: expected transformers or vllm, got {backend!r}")


def generate_file(cfg, prompt: str | None = None, prompts: str | Path | None = None, output: str | Path | None = None) -> list[dict]:
    """``rlhf generate``: answer one prompt or a prompt file; write JSONL when ``output`` is given."""
    from rlhfkit.accel.runtime import set_threads
    from rlhfkit.models.loading import load_tokenizer

    set_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    records = [{"prompt": prompt}] if prompt is not None else read_records(prompts, "prompt")
    tok = load_tokenizer(cfg.model)
    gen = make_generator(cfg.generation, cfg.model, tok, batch_size=cfg.batch_size, progress=len(records) > 1)
    prompt_ids = [encode_prompt(tok, prompt_messages(r), cfg.chat) for r in records]
    ids = gen.generate(prompt_ids, cfg.max_new_tokens, cfg.temperature, cfg.top_p, cfg.top_k)
    texts = [decode_response(tok, x) for x in ids]
    out = [{"prompt": prompt_text(r), "response": t, "model": cfg.model} for r, t in zip(records, texts)]
    if output is not None:
        write_records(output, out)
    return out
