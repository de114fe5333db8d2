"""The reward model as a component: its input text, its pooling, its scorer, and how one is built.

Input text (:func:`rm_inputs`, shared by training and scoring): a causal-LM backbone reads the chat
template of the prompt followed by the response, right-padded, and pools the last non-pad token (with
``pad_token_id`` set and position ids taken from the attention mask, left and right padding give the same
score); an encoder (MiniLM) reads the (prompt, response) sentence pair and pools its
[CLS] token through its pooler (``pooling: cls``, the default: what ``AutoModelForSequenceClassification``
computes, so plain transformers scores a saved model as rlhfkit does) or the mean of its non-pad tokens
(``pooling: mean``, as sentence-transformers pools; plain transformers then needs the code in the model's
README); the choice is saved in the model's config.json, so a reloaded model scores the same.

:class:`RewardScorer` is what PPO and evaluation use: raw scores, and scores normalised with the mean and
std of reference-policy samples stored beside the model (``reward_stats.json``, docs/design.md §4.2).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from rlhfkit.config import RewardConfig
from rlhfkit.data.formats import check_number, prompt_messages
from rlhfkit.data.tokenize import encode_prompt, pad_sequences, position_ids_from_mask, uses_chat_template
from rlhfkit.models.loading import add_lora, disable_dropout, load_sequence_classifier, load_tokenizer

STATS_FILE = "reward_stats.json"


def is_encoder_tokenizer(tok) -> bool:
    """BERT-like tokenizers (a [CLS] token, no chat template) read (prompt, response) sentence pairs."""
    return getattr(tok, "cls_token_id", None) is not None and not uses_chat_template(tok)


def prompt_for_encoder(prompt: dict) -> str:
    return "\n".join(m["content"] for m in prompt_messages(prompt) if m["role"] != "system")


def rm_inputs(tokenizer, prompts: list[dict], responses: list[str], max_len: int, padding_side: str = "right") -> dict[str, torch.Tensor]:
    """Model inputs for (prompt record, response) pairs: the one place the reward model's text format lives.

    Returns keyword arguments for the model: ``input_ids``, ``attention_mask`` (batch, width), plus
    ``token_type_ids`` for an encoder or ``position_ids`` for a causal LM. Too long: the prompt loses
    tokens from its start first (it keeps at least half of ``max_len``), then the response from its end.
    """
    if is_encoder_tokenizer(tokenizer):
        if padding_side != "right":
            raise ValueError("an encoder reward model pools [CLS] at position 0: use right padding")
        enc = tokenizer([prompt_for_encoder(p) for p in prompts], list(responses), truncation="longest_first",
                        max_length=max_len, padding=False)
        ids, attn = pad_sequences(enc["input_ids"], tokenizer.pad_token_id, "right")
        types, _ = pad_sequences(enc["token_type_ids"], 0, "right")
        return {"input_ids": ids, "attention_mask": attn, "token_type_ids": types}
    seqs = []
    for p, r in zip(prompts, responses):
        prompt_ids = encode_prompt(tokenizer, prompt_messages(p), chat=True)
        resp_ids = tokenizer(r, add_special_tokens=False)["input_ids"]
        keep = max(max_len - len(resp_ids), max_len // 2)
        prompt_ids = prompt_ids[-keep:]
        seqs.append(prompt_ids + resp_ids[: max_len - len(prompt_ids)])
    ids, attn = pad_sequences(seqs, tokenizer.pad_token_id, padding_side)
    # Positions count real tokens only, so a left-padded row sees the positions a right-padded one does.
    return {"input_ids": ids, "attention_mask": attn, "position_ids": position_ids_from_mask(attn)}


CARD_FILE = "README.md"  # written beside a saved reward model: its input layout and pooling, as runnable code


def reward_card(tokenizer, model, max_len: int) -> str:
    """The reward model's README: how plain transformers scores (prompt, response) as rlhfkit does (:func:`rm_inputs`,
    :func:`reward_forward`), as a function to copy; tests/interop runs it and compares its scores with rlhfkit's."""
    if is_encoder_tokenizer(tokenizer):
        layout = ("a sentence pair, truncated longest-first to MAX_LEN tokens: the prompt's non-system message texts "
                  "joined by newlines, then the response")
        body = ['    text = "\\n".join(m["content"] for m in messages if m["role"] != "system")',
                '    enc = tok(text, response, truncation="longest_first", max_length=MAX_LEN, return_tensors="pt")']
        if getattr(classifier_of(model).config, POOLING_KEY, "cls") == "mean":
            pool = ("the mean of the tokens' last hidden states (not the [CLS] pooler), then the classifier head; "
                    "`AutoModelForSequenceClassification`'s own forward uses the pooler and gives other scores")
            body += ['    hidden = model.base_model(**enc).last_hidden_state',
                     '    mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)',
                     '    return model.classifier((hidden * mask).sum(1) / mask.sum(1))[0, 0].item()']
        else:
            pool = "[CLS] through the pooler, as `AutoModelForSequenceClassification` does"
            body += ['    return model(**enc).logits[0, 0].item()']
    else:
        if uses_chat_template(tokenizer):
            layout = ("the prompt's messages through the tokenizer's chat template with the generation prompt (the text "
                      "up to where the assistant's answer starts)")
            prompt_ids = "tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)"
        else:
            layout = "BOS, then the prompt's message texts joined by newlines"
            prompt_ids = '[tok.bos_token_id] + tok("\\n".join(m["content"] for m in messages), add_special_tokens=False)["input_ids"]'
        layout += (", then the response's tokens (no special tokens); a prompt too long loses tokens from its start (it "
                   "keeps at least MAX_LEN // 2), then the response from its end")
        pool = "the last token, as `AutoModelForSequenceClassification` does"
        body = [f'    prompt = list({prompt_ids})',
                '    resp = tok(response, add_special_tokens=False)["input_ids"]',
                '    prompt = prompt[-max(MAX_LEN - len(resp), MAX_LEN // 2):]',
                '    ids = torch.tensor([prompt + resp[:MAX_LEN - len(prompt)]])',
                '    return model(input_ids=ids).logits[0, 0].item()']
    code = ["import torch", "from transformers import AutoModelForSequenceClassification, AutoTokenizer", "",
            'FOLDER = "path/to/this/folder"', f"MAX_LEN = {max_len}", "tok = AutoTokenizer.from_pretrained(FOLDER)",
            "model = AutoModelForSequenceClassification.from_pretrained(FOLDER).eval()", "", "",
            "@torch.no_grad()", "def score(messages: list[dict], response: str) -> float:",
            '    """messages: the prompt as chat messages, e.g. [{"role": "user", "content": "..."}]."""', *body]
    return ("# Reward model (rlhfkit)\n\n"
            f"One score per (prompt, response), higher is better. Input: {layout}. Pooling: {pool}. "
            "`reward_stats.json` holds the mean and std of its scores on reference answers (PPO divides by them).\n\n"
            "Scored with plain transformers exactly as `rlhf rm score` scores it:\n\n"
            "```python\n" + "\n".join(code) + "\n```\n")


POOLING_KEY = "rm_pooling"  # model.config attribute (saved in config.json): "mean" or "cls" for encoders


def classifier_of(model):
    """The plain classifier under a LoRA (peft) wrapper, or the model itself."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def reward_forward(model, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Raw scores, shape (batch,).

    A causal LM's classifier pools the last token that is not ``pad_token_id``. An encoder pools [CLS]
    through its pooler, or, when ``config.rm_pooling == "mean"``, feeds the mean of the non-pad tokens'
    last hidden states to its classifier head, skipping the pooler (all-MiniLM-L6-v2 was trained for mean
    pooling by sentence-transformers; its [CLS] pooler was not part of that training).
    """
    inner = classifier_of(model)
    if getattr(inner.config, POOLING_KEY, "cls") != "mean":
        return model(**inputs).logits[:, 0].float()
    hidden = inner.base_model(**inputs).last_hidden_state  # (batch, width, hidden)
    mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (batch, width, 1)
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # (batch, hidden)
    return inner.classifier(pooled)[:, 0].float()


def score_texts(model, tokenizer, prompts: list[dict], responses: list[str], max_len: int, batch_size: int = 16) -> torch.Tensor:
    """Scores of many (prompt, response) pairs in batches of similar length, without gradients; shape (n,).
    ``model``: a classifier, or a :class:`RewardModule` (possibly prepared by accelerate)."""
    out = torch.empty(len(responses))
    order = sorted(range(len(responses)), key=lambda i: len(responses[i]))
    device = next(model.parameters()).device
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            inputs = rm_inputs(tokenizer, [prompts[i] for i in idx], [responses[i] for i in idx], max_len)
            inputs = {k: v.to(device) for k, v in inputs.items()}
            # a (prepared) RewardModule scores through its own forward: under FSDP that gathers the shards
            out[idx] = (model(**inputs) if isinstance(model, RewardModule) else reward_forward(model, inputs)).cpu()
    return out


def load_stats(path: Path) -> dict | None:
    """``reward_stats.json`` (None if absent), checked: scores are divided by its std, so a NaN must not get through."""
    if not path.exists():
        return None
    stats = json.loads(path.read_text(encoding="utf-8"))
    for key, lo in (("mean", -math.inf), ("std", 0.0)):
        check_number(stats.get(key), key, str(path), lo, math.inf)
    return stats


class RewardScorer:
    """A trained reward model for PPO and evaluation: raw scores and normalised scores.

    ``RewardScorer.load(dir_or_spec)``; ``.score(prompts, responses)`` → raw scores (n,);
    ``.normalize(scores)`` → (scores − mean)/std with the stats stored beside the model (identity if none).
    """

    def __init__(self, model, tokenizer, stats: dict | None = None, max_len: int = 512):
        self.model, self.tokenizer, self.stats, self.max_len = model, tokenizer, stats, max_len

    @classmethod
    def load(cls, dir_or_spec: str | Path, max_len: int | None = None) -> "RewardScorer":
        import yaml

        spec = str(dir_or_spec)
        model = load_sequence_classifier(spec)
        disable_dropout(model)
        tok = load_tokenizer(spec)
        folder = Path(spec)
        stats = load_stats(folder / STATS_FILE)
        if max_len is None and (folder / "config.yaml").exists():
            max_len = (yaml.safe_load((folder / "config.yaml").read_text()) or {}).get("max_len")
        return cls(model, tok, stats, int(max_len or 512))

    def score(self, prompts: list[dict], responses: list[str], batch_size: int = 16) -> torch.Tensor:
        """Raw reward-model scores of (prompt record, response) pairs, shape (n,), under inference mode."""
        return score_texts(self.model, self.tokenizer, prompts, responses, self.max_len, batch_size)

    def normalize(self, scores: torch.Tensor) -> torch.Tensor:
        if not self.stats:
            return scores
        return (scores - self.stats["mean"]) / max(self.stats["std"], 1e-8)


def is_encoder_classifier(model) -> bool:
    """A BERT-like classifier: a ``classifier`` head on an encoder (not a causal LM's ``score`` head)."""
    return hasattr(model, "classifier") and not getattr(model.config, "is_decoder", False)


def freeze_lower(model, n_top: int) -> None:
    """Train only the top ``n_top`` transformer layers and what sits above them (final norm, pooler, head).

    The embeddings stay as pretrained: with a few hundred prompts, a fully trained reward model learns
    the training prompts' words by heart and generalises worse to held-out prompts.
    """
    import re

    index = [int(m.group(1)) for n, _ in model.named_parameters() if (m := re.search(r"\.layers?\.(\d+)\.", n))]
    first = max(index, default=-1) + 1 - n_top
    for name, param in model.named_parameters():
        m = re.search(r"\.layers?\.(\d+)\.", name)
        param.requires_grad = not ("embed" in name or (m is not None and int(m.group(1)) < first))


class RewardModule(torch.nn.Module):
    """The classifier with :func:`reward_forward` as its forward: what ``accelerator.prepare`` wraps.

    Mean pooling calls the encoder directly; wrapped in this module, the whole scoring pass still goes
    through the DDP/FSDP wrapper's forward, which is what synchronises gradients across processes.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        return reward_forward(self.model, inputs)


def build_reward_model(cfg: RewardConfig, ckpt: Path | None):
    """A fresh classifier on the backbone (LoRA optional), or the checkpoint's weights when resuming."""
    model = load_sequence_classifier(cfg.model)
    if is_encoder_classifier(model):
        setattr(model.config, POOLING_KEY, cfg.pooling)  # saved in config.json, read by reward_forward
    if cfg.lora:
        if ckpt is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(ckpt / "model"), is_trainable=True)
        else:
            # SEQ_CLS keeps the new score head fully trainable (peft's modules_to_save).
            model = add_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets, task_type="SEQ_CLS")
    elif ckpt is not None:
        model = load_sequence_classifier(str(ckpt / "model"))
    if cfg.trainable_layers and not cfg.lora:
        freeze_lower(model, cfg.trainable_layers)
    disable_dropout(model)  # docs/design.md §4.6: dropout off, so a score does not depend on train/eval mode
    return model


# ------------------------------------------------------------------------------------------------ as a reward


class JudgeReward:
    """A gold judge as the reward (``judge:NAME``): scores decoded text; no normalisation stats."""

    def __init__(self, name: str):
        from rlhfkit.judges import get_judge

        self.name, self.fn, self.model, self.tokenizer, self.stats = name, get_judge(name), None, None, None

    def score(self, prompts: list[dict], responses: list[str]) -> torch.Tensor:
        return torch.tensor(self.fn(prompts, responses), dtype=torch.float32)

    def normalize(self, scores: torch.Tensor) -> torch.Tensor:
        return scores


class ModelReward:
    """A trained reward model (``rlhf rm train`` folder): scores decoded text with its own tokenizer."""

    def __init__(self, spec: str, batch_size: int):
        self.scorer, self.batch_size = RewardScorer.load(spec), batch_size
        self.model, self.tokenizer, self.stats = self.scorer.model, self.scorer.tokenizer, self.scorer.stats

    def score(self, prompts: list[dict], responses: list[str]) -> torch.Tensor:
        return self.scorer.score(prompts, responses, self.batch_size).float()

    def normalize(self, scores: torch.Tensor) -> torch.Tensor:
        return self.scorer.normalize(scores)


def load_reward(spec: str, batch_size: int):
    if not spec:
        raise ValueError("reward: required: a reward-model folder or judge:NAME")
    if spec.startswith("judge:"):
        return JudgeReward(spec.split(":", 1)[1])
    return ModelReward(spec, batch_size)
