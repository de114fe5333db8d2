"""PPO rollout: sample responses, then everything PPO needs about them, each computed once.

One rollout batch goes through:
1. ``sample``: our own KV-cache decoding loop over left-padded prompts. Each step runs the policy's
   backbone once; from the last hidden state come the next-token logits (sampled at the temperature),
   the sampled token's log-prob, the entropy of the sampling distribution and — with a value head on the
   policy — the value. So the policy never needs a second pass over the batch.
2. ``forward_tokens`` with the adapters disabled (LoRA) or on a separate reference model: reference
   log-probs. A separate value model (initialised from the reward model) runs once more for values.
3. The reward (a reward model or a gold judge) scores the decoded text.
All of it under ``torch.inference_mode()``.

Shapes: ``query`` (B, P) left-padded prompt ids; ``response`` (B, R) sampled ids, padded after the first
EOS; ``response_mask`` (B, R) is 1 up to and including the first EOS. SmolLM2's pad token *is* its EOS
token, so the mask comes from the first EOS position, never from comparing ids with the pad id.
"""

from __future__ import annotations

import inspect
from contextlib import nullcontext
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from rlhfkit.accel.attention import short_sequence_attention
from rlhfkit.accel.head import fp32_logits
from rlhfkit.accel.sampler import inverse_cdf
from rlhfkit.data.tokenize import left_pad, position_ids_from_mask
from rlhfkit.rl.losses import EXP_FLOOR, entropy_from_logits, logprobs_from_logits


@dataclass
class Rollout:
    """One batch of sampled responses and what PPO needs about them (tensors are (B, R) unless noted)."""

    query: Tensor  # (B, P) left-padded prompt ids
    query_mask: Tensor  # (B, P)
    response: Tensor  # (B, R) sampled ids; after the first EOS: pad
    response_mask: Tensor  # (B, R) 1 up to and including the first EOS
    logprobs: Tensor  # log π_old(token) at the sampling temperature
    ref_logprobs: Tensor  # log π_ref(token) at the same temperature
    values: Tensor  # V(state before each token)
    entropy: Tensor  # entropy of the sampling distribution at each step
    texts: list[str]  # decoded responses (what the reward scores)
    has_eos: Tensor  # (B,) bool: the response ended with EOS within the length limit
    engine_gap: float | None = None  # an inference engine sampled: max |its log-prob − the policy's| over the tokens

    def input_ids(self) -> Tensor:
        return torch.cat([self.query, self.response], dim=1)

    def attention_mask(self) -> Tensor:
        return torch.cat([self.query_mask, self.response_mask], dim=1)

    def to(self, device) -> "Rollout":
        """The same rollout with every tensor on ``device``."""
        return Rollout(**{f.name: (v.to(device) if isinstance(v := getattr(self, f.name), Tensor) else v) for f in fields(self)})


def causal_parts(model):
    """(backbone, lm_head) of a causal LM, through a peft wrapper when there is one (LoRA layers stay in).

    The lm_head returned always makes fp32 logits, autocast or not: bf16 logits near 30 are 0.125 apart, so
    the same token's log-prob from two passes of different shapes (the rollout's and a minibatch's) could
    differ by ~0.2–0.5 nats at temperature 0.7 and the PPO ratio would not start at 1.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder(), fp32_logits(base.get_output_embeddings())


def cache_keyword(backbone) -> str:
    """The keyword a decoder's forward takes its KV cache by: ``cache`` in newer transformers 5 releases (where
    ``past_key_values`` is deprecated, to be removed in 5.40), ``past_key_values`` in older ones."""
    return "cache" if "cache" in inspect.signature(backbone.forward).parameters else "past_key_values"


def response_mask_from_eos(response: Tensor, eos_id: int) -> Tensor:
    """1 on each row's tokens up to and including its first EOS (all ones when there is none)."""
    is_eos = (response == eos_id).long()
    eos_before = is_eos.cumsum(dim=1) - is_eos  # EOS tokens strictly before each position
    return (eos_before == 0).long()


def response_hidden(backbone, input_ids: Tensor, attention_mask: Tensor, prompt_width: int) -> Tensor:
    """Last hidden states at the positions that predict the response tokens: (B, R, H).

    Position ids come from the attention mask, so left-padded rows see the positions an unpadded prompt
    would (docs/design.md §4.7). Rows that repeat a prompt (K answers per prompt) share its pass
    (:func:`shared_prompt_hidden`).
    """
    query, query_mask = input_ids[:, :prompt_width], attention_mask[:, :prompt_width]
    first, row_of = shared_prompts(query, query_mask) if prompt_width > 0 else (None, None)
    if first is not None and not getattr(backbone, "gradient_checkpointing", False):
        return shared_prompt_hidden(backbone, input_ids, attention_mask, prompt_width, first, row_of)
    with short_sequence_attention(input_ids):
        out = backbone(input_ids=input_ids, attention_mask=attention_mask,
                       position_ids=position_ids_from_mask(attention_mask), use_cache=False)
    return out.last_hidden_state[:, prompt_width - 1 : -1]  # position t predicts token t+1


def shared_prompt_hidden(backbone, input_ids: Tensor, attention_mask: Tensor, prompt_width: int, first: Tensor,
                         row_of: Tensor) -> Tensor:
    """:func:`response_hidden` with each distinct prompt run once: the same numbers, fewer products.

    1. The distinct prompts (rows ``first``) go through the backbone, keeping their keys and values.
    2. Those keys and values are copied to every row that has the prompt (an index, so under autograd each row's
       gradient flows back into its prompt's one pass and the prompt's weights get the sum, as they would
       from the rows' own passes).
    3. The responses go through the backbone on top of them.
    A prompt of P tokens answered K times costs one P-token pass instead of K: in GRPO / RLOO's reference and
    training passes the prompt is often half the tokens. (Not under gradient checkpointing, which turns the cache off.)
    """
    from transformers import DynamicCache

    query, query_mask = input_ids[:, :prompt_width], attention_mask[:, :prompt_width]
    positions = position_ids_from_mask(attention_mask)
    cache = DynamicCache()
    with_cache = {cache_keyword(backbone): cache, "use_cache": True}
    with short_sequence_attention(query):
        prompt_out = backbone(input_ids=query[first], attention_mask=query_mask[first], position_ids=positions[first, :prompt_width],
                              **with_cache)
    cache.reorder_cache(row_of)  # the distinct prompts' keys and values, one copy per row
    last = prompt_out.last_hidden_state[row_of, -1:]  # (B, 1, H): the prompt's last position predicts the first token
    if input_ids.shape[1] == prompt_width + 1:  # a one-token response needs only the prompt's pass
        return last
    with short_sequence_attention(input_ids):
        out = backbone(input_ids=input_ids[:, prompt_width:-1], attention_mask=attention_mask[:, :-1],
                       position_ids=positions[:, prompt_width:-1], **with_cache)
    return torch.cat([last, out.last_hidden_state], dim=1)  # position t predicts token t+1


def trim(query: Tensor, query_mask: Tensor, response_mask: Tensor) -> tuple[int, int]:
    """(first prompt column, response columns) that drop padding every row shares (saves compute)."""
    first = int((query_mask.sum(0) > 0).long().argmax()) if query_mask.any() else 0
    width = int(response_mask.sum(1).max()) if response_mask.numel() else 0
    return first, max(width, 1)


def shared_prompts(query: Tensor, query_mask: Tensor) -> tuple[Tensor | None, Tensor]:
    """(the first row of each distinct prompt, each row's index among those), or (None, ·) when no prompt repeats."""
    distinct, row_of = torch.unique(torch.cat([query, query_mask], dim=1), dim=0, return_inverse=True)
    if distinct.shape[0] == query.shape[0]:
        return None, row_of
    first = torch.full((distinct.shape[0],), query.shape[0], dtype=torch.long, device=query.device)
    first.scatter_reduce_(0, row_of, torch.arange(query.shape[0], device=query.device), reduce="amin")
    return first, row_of


@torch.inference_mode()
def sample(model, query: Tensor, query_mask: Tensor, max_new_tokens: int, temperature: float, eos_id: int,
           pad_id: int, value_head=None, uniforms=None) -> dict[str, Tensor]:
    """Sample up to ``max_new_tokens`` per row from softmax(logits / temperature) with the KV cache.

    ``uniforms``: a function returning one uniform number per row for the next token (:func:`inverse_cdf`);
    the trainer draws them per row of the GLOBAL batch, so N processes sample what one process samples.
    None: one ``torch.rand`` per row on the global RNG.
    Sampling is from the full distribution (no top-k / top-p), which is the distribution the training
    log-probs describe. Stops early once every row has produced EOS.
    Returns response, response_mask, logprobs, entropy and (with ``value_head``) values, each (B, R).
    """
    from transformers import DynamicCache

    backbone, lm_head = causal_parts(model)
    batch = query.shape[0]
    cache = DynamicCache()
    ids, width = query, query.shape[1]
    # the whole mask up front; each step takes a longer slice of it instead of concatenating a column
    device = query.device
    mask = torch.cat([query_mask, torch.ones(batch, max_new_tokens, dtype=query_mask.dtype, device=device)], dim=1)
    positions = position_ids_from_mask(query_mask)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    tokens, logprobs, entropy, values = [], [], [], []
    # Rows that repeat a prompt (K answers per prompt side by side) share its pass: the prompt's keys and values
    # are computed once and copied to every row that has it, the attention each row would have computed itself.
    first, row_of = shared_prompts(query, query_mask)
    with_cache = {cache_keyword(backbone): cache, "use_cache": True}
    for step in range(max_new_tokens):
        if step == 0 and first is not None:
            out = backbone(input_ids=ids[first], attention_mask=query_mask[first], position_ids=positions[first],
                           **with_cache)
            cache.reorder_cache(row_of)
            hidden = out.last_hidden_state[row_of, -1]
        else:
            out = backbone(input_ids=ids, attention_mask=mask[:, : width + step], position_ids=positions, **with_cache)
            hidden = out.last_hidden_state[:, -1]  # (B, H)
        logits = lm_head(hidden).float()  # (B, V): one position per row, so no large float copy
        logp = torch.log_softmax(logits / temperature, dim=-1)  # one pass: the sample, its log-prob, the entropy
        probs = logp.clamp(min=EXP_FLOOR).exp()  # the clamp keeps exp off its slow path (see EXP_FLOOR)
        u = torch.rand(batch, dtype=torch.float64) if uniforms is None else uniforms()  # the CPU's RNG on any device
        token = inverse_cdf(probs, u.to(device))  # one uniform per row, not multinomial's exponential per token
        token = torch.where(done, torch.full_like(token, pad_id), token)  # finished rows: padding
        tokens.append(token)
        logprobs.append(logp.gather(1, token[:, None]).squeeze(1))
        entropy.append(-(probs * logp).sum(-1))
        if value_head is not None:
            values.append(value_head(hidden).squeeze(-1).float())
        done = done | (token == eos_id)
        if bool(done.all()):
            break
        ids = token[:, None]
        positions = positions[:, -1:] + 1
    response = torch.stack(tokens, dim=1)
    result = {"response": response, "response_mask": response_mask_from_eos(response, eos_id),
              "logprobs": torch.stack(logprobs, dim=1), "entropy": torch.stack(entropy, dim=1)}
    if value_head is not None:
        result["values"] = torch.stack(values, dim=1)
    return result


def token_logprobs(lm_head, hidden: Tensor, response: Tensor, temperature: float, with_entropy: bool = False):
    """log softmax(lm_head(hidden) / temperature)[response]: (B, R); optionally also the entropy (B, R).

    Logits are made for response positions only; the log-softmax runs in row chunks
    (``logprobs_from_logits``), never over the full (B, R, vocab) float tensor at once.
    """
    if not with_entropy and hasattr(lm_head, "logprobs"):
        return lm_head.logprobs(hidden, response, temperature)
    logits = lm_head(hidden)
    logprobs = logprobs_from_logits(logits, response, temperature)
    if not with_entropy:
        return logprobs
    with torch.no_grad():
        flat = logits.detach().reshape(-1, logits.shape[-1])
        ent = torch.cat([entropy_from_logits(flat[i:i + 256] / temperature) for i in range(0, flat.shape[0], 256)])
    return logprobs, ent.reshape(response.shape)


def forward_tokens(model, query: Tensor, query_mask: Tensor, response: Tensor, response_mask: Tensor,
                   temperature: float, value_head=None) -> tuple[Tensor, Tensor | None]:
    """Log-probs of ``response`` under ``model`` (and values from a head on its hidden states), (B, R).

    The training pass and the reference pass both go through here, so they agree with each other;
    columns of padding shared by every row are cut first.
    """
    first, width = trim(query, query_mask, response_mask)
    query, query_mask = query[:, first:], query_mask[:, first:]
    resp, resp_mask = response[:, :width], response_mask[:, :width]
    backbone, lm_head = causal_parts(model)
    hidden = response_hidden(backbone, torch.cat([query, resp], 1), torch.cat([query_mask, resp_mask], 1), query.shape[1])
    logprobs = _pad_to(token_logprobs(lm_head, hidden, resp, temperature), response.shape[1])
    values = None if value_head is None else _pad_to(value_head(hidden).squeeze(-1).float(), response.shape[1])
    return logprobs, values


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def _pad_to(x: Tensor, width: int) -> Tensor:
    return x if x.shape[1] == width else torch.nn.functional.pad(x, (0, width - x.shape[1]))


def engine_sample(engine, prompts: list[list[int]], max_new_tokens: int, temperature: float, eos_id: int, pad_id: int,
                  device) -> dict[str, Tensor]:
    """One answer per prompt from an inference engine (vLLM): the response (B, R), pad after each answer, its mask (up
    to and including EOS) and the engine's log-prob of each sampled token (a check on the policy's; never trained on)."""
    answers = engine.sample(prompts, max_new_tokens, temperature)
    width = max(1, max(len(ids) for ids, _ in answers))
    response = torch.full((len(answers), width), pad_id, dtype=torch.long)
    logprobs = torch.zeros(len(answers), width)
    for i, (ids, lps) in enumerate(answers):
        response[i, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        logprobs[i, :len(ids)] = torch.tensor(lps, dtype=torch.float32)
    lengths = torch.tensor([len(ids) for ids, _ in answers])
    mask = response_mask_from_eos(response, eos_id) * (torch.arange(width)[None, :] < lengths[:, None])
    return {"response": response.to(device), "response_mask": mask.to(device), "engine_logprobs": logprobs.to(device)}


@torch.inference_mode()
def collect(policy, tok, prompts: list[list[int]], records: list[dict], reward, *, max_new_tokens: int,
            temperature: float, value_model=None, value_head=None, reference=None, uniforms=None,
            amp=nullcontext, recompute: bool = False, engine=None) -> tuple[Rollout, Tensor]:
    """Sample a response per prompt and compute reference log-probs, values and raw reward scores.

    ``value_head``: a head on the policy's hidden states (values come out of sampling for free);
    ``value_model``: a separate :class:`~rlhfkit.models.value.ValueModel`. ``reference``: a separate
    reference model; None means the policy with its LoRA adapters disabled. ``uniforms``: see :func:`sample`.
    ``amp``: a context factory every pass runs under (``precision.autocast``). ``recompute``: take the
    policy's log-probs (and head values) from one full pass, the training pass's own code path, instead of
    from the sampling loop — needed under bf16, where the cached step-by-step pass rounds differently and
    the PPO ratio would not start at 1.
    ``engine``: an inference engine (vLLM, :class:`~rlhfkit.models.vllm_backend.VLLMGenerator`) samples instead, and
    the policy's own pass gives every log-prob (the ratio starts at 1); the entropy is then the one-sample estimate
    −log π(token), and ``engine_gap`` records how far the engine's log-probs were from the policy's.
    Every tensor of the rollout is on the policy's device; the scores are on the CPU.
    Returns the rollout and the raw scores (B,).
    """
    device = model_device(policy)
    query, query_mask = (t.to(device) for t in left_pad(prompts, tok.pad_token_id))
    with amp():  # every model pass; the reward below scores text with its own settings
        if engine is None:
            s = sample(policy, query, query_mask, max_new_tokens, temperature, tok.eos_token_id, tok.pad_token_id, value_head, uniforms)
        else:
            s = engine_sample(engine, prompts, max_new_tokens, temperature, tok.eos_token_id, tok.pad_token_id, device)
        response, response_mask = s["response"], s["response_mask"]
        if recompute or engine is not None:
            s["logprobs"], head_values = forward_tokens(policy, query, query_mask, response, response_mask, temperature, value_head)
            if head_values is not None:
                s["values"] = head_values
        if engine is not None:
            s["entropy"] = -s["logprobs"]  # E[−log π(x)] over x ~ π is the entropy: an unbiased one-sample estimate
        # the reference is the same weights without the adapters: one copy
        with policy.disable_adapter() if reference is None else nullcontext():
            ref_logprobs, _ = forward_tokens(reference or policy, query, query_mask, response, response_mask, temperature)
        values = s.get("values")
        if values is None and value_model is not None:
            values = value_model(torch.cat([query, response], 1), torch.cat([query_mask, response_mask], 1), query.shape[1])
    if values is None:
        values = torch.zeros(response.shape, device=device)
    has_eos = ((response == tok.eos_token_id) & response_mask.bool()).any(dim=1)
    texts = [tok.decode(r[m.bool()].tolist(), skip_special_tokens=True).strip() for r, m in zip(response, response_mask)]
    scores = reward.score(records, texts)
    mask = response_mask.to(torch.float32)
    gap = None if engine is None else float(((s["engine_logprobs"] - s["logprobs"]).abs() * mask).max())
    rollout = Rollout(query, query_mask, response, response_mask, s["logprobs"] * mask, ref_logprobs * mask,
                      values * mask, s["entropy"] * mask, texts, has_eos, gap)
    return rollout, scores


def concat(parts: list[Rollout], pad_id: int) -> Rollout:
    """One rollout from several (each process's share of a batch), in order: prompts left-padded and
    responses right-padded to the widest part, the added columns masked out."""
    if len(parts) == 1:
        return parts[0]
    P, R = max(p.query.shape[1] for p in parts), max(p.response.shape[1] for p in parts)

    def cat(name: str, width: int, left: bool, value) -> Tensor:
        pad = lambda x: torch.nn.functional.pad(x, (width - x.shape[1], 0) if left else (0, width - x.shape[1]), value=value)
        return torch.cat([pad(getattr(p, name)) for p in parts])

    return Rollout(cat("query", P, True, pad_id), cat("query_mask", P, True, 0), cat("response", R, False, pad_id),
                   cat("response_mask", R, False, 0), cat("logprobs", R, False, 0.0), cat("ref_logprobs", R, False, 0.0),
                   cat("values", R, False, 0.0), cat("entropy", R, False, 0.0), [t for p in parts for t in p.texts],
                   torch.cat([p.has_eos for p in parts]),
                   None if parts[0].engine_gap is None else max(p.engine_gap for p in parts))
