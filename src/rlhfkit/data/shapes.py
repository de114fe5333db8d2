"""TRL's dataset shapes → rlhfkit's records (docs/design.md §3), so data made for TRL reads as it is.

TRL documents each dataset *type* in a *standard* (strings) and a *conversational* (message lists) form.
rlhfkit's own records are the standard forms plus ``messages`` for chat prompts; the others become them here,
one record at a time, before the record is checked (so a problem still names its file, line and field):

| shape | fields | becomes |
|---|---|---|
| language modelling | ``text`` | an SFT record on all of the text (no prompt; unchanged) |
| conversational prompt-only | ``prompt: [messages]`` | ``messages`` |
| conversational prompt–completion | ``prompt: [messages]``, ``completion: [messages]`` | ``messages`` (prompt + completion) |
| conversational preference | ``prompt: [messages]``, ``chosen``/``rejected: [one assistant message]`` | ``messages``, ``chosen``/``rejected`` texts |
| implicit prompt | ``chosen``/``rejected`` only (whole conversations or texts) | the shared start as the prompt |
| Anthropic HH | ``chosen``/``rejected`` strings of ``\\n\\nHuman: … \\n\\nAssistant: …`` turns | ``messages`` + the last answers |
| unpaired preference (KTO) | ``prompt``, ``completion``, ``label`` (bool) | a rating: ``response``, ``score`` 1 (true) or 0 (false), ``label`` kept |

Unpaired records are ratings for the reward model and DPO (label-true ≻ label-false answers to one prompt);
SFT refuses them by name (it would learn the label-false answers too).
"""

from __future__ import annotations

import re
from typing import Any

HH_TURN = re.compile(r"\n\n(Human|Assistant): ?")
HH_ROLES = {"Human": "user", "Assistant": "assistant"}


class ShapeError(ValueError):
    """A record in a TRL shape that cannot become an rlhfkit record: (field, problem)."""

    def __init__(self, field: str, problem: str):
        self.field, self.problem = field, problem
        super().__init__(f"{field}: {problem}")


def is_messages(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(m, dict) and "role" in m for m in value)


def is_unpaired(rec: dict) -> bool:
    """A KTO-style record: one completion with a true/false label."""
    return "completion" in rec and isinstance(rec.get("label"), bool) and "chosen" not in rec


def answer_text(value: Any, field: str) -> str:
    """The text of an answer given as a string or as a list of exactly one assistant message."""
    if isinstance(value, str):
        return value
    if is_messages(value):
        if len(value) != 1 or value[0].get("role") != "assistant":
            raise ShapeError(field, f"expected one assistant message, got {len(value)} message(s) "
                                    f"({', '.join(str(m.get('role')) for m in value)})")
        return value[0].get("content")
    return value  # left for the record check to name


def hh_messages(text: str, field: str) -> list[dict]:
    """An Anthropic-HH conversation ("\\n\\nHuman: …\\n\\nAssistant: …") as chat messages."""
    parts = HH_TURN.split(text)
    if parts[0].strip():
        raise ShapeError(field, "an HH conversation must start with \\n\\nHuman:")
    return [{"role": HH_ROLES[role], "content": content.strip()} for role, content in zip(parts[1::2], parts[2::2])]


def is_hh(value: Any) -> bool:
    return isinstance(value, str) and value.lstrip(" ").startswith("\n\nHuman:") and "\n\nAssistant:" in value


def split_implicit(chosen: list[dict], rejected: list[dict]) -> tuple[list[dict], str, str]:
    """(prompt messages, chosen answer, rejected answer) of two whole conversations that share their start."""
    n = 0
    while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
        n += 1
    prompt = chosen[:n]
    if not prompt:
        raise ShapeError("chosen", "implicit prompt: the chosen and rejected conversations share no first messages")
    return prompt, answer_text(chosen[n:], "chosen"), answer_text(rejected[n:], "rejected")


def split_text(chosen: str, rejected: str) -> tuple[str, str, str]:
    """(prompt, chosen answer, rejected answer) of two texts that share their start, cut at a word boundary."""
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    while n > 0 and not chosen[n - 1].isspace() and n < len(chosen) and not chosen[n].isspace():
        n -= 1  # back to the start of the word where they differ
    prompt = chosen[:n].rstrip()
    if not prompt.strip():
        raise ShapeError("chosen", "implicit prompt: the chosen and rejected texts share no start (give a prompt field)")
    return prompt, chosen[len(prompt):], rejected[len(prompt):]


def from_trl(rec: dict) -> dict:
    """``rec`` as an rlhfkit record (extra fields kept); records already in rlhfkit's shapes come back unchanged."""
    out = dict(rec)
    prompt = out.get("prompt")
    if is_unpaired(out):
        label = out["label"]  # kept beside the score: KTO reads the label itself
        completion = out.pop("completion")
        if is_messages(prompt):
            out["messages"] = out.pop("prompt")
        out["response"] = answer_text(completion, "completion")
        out["score"] = 1.0 if label else 0.0
        return out
    if is_messages(prompt):
        msgs = out.pop("prompt")
        if "completion" in out:
            completion = out.pop("completion")
            out["messages"] = msgs + (completion if is_messages(completion) else
                                      [{"role": "assistant", "content": completion}])
            return out
        out["messages"] = msgs
        for key in ("chosen", "rejected"):
            if key in out:
                out[key] = answer_text(out[key], key)
        return out
    if "prompt" not in out and "messages" not in out and "chosen" in out and "rejected" in out:
        chosen, rejected = out["chosen"], out["rejected"]
        if is_hh(chosen) and is_hh(rejected):
            chosen, rejected = hh_messages(chosen, "chosen"), hh_messages(rejected, "rejected")
        if is_messages(chosen) and is_messages(rejected):
            out["messages"], out["chosen"], out["rejected"] = split_implicit(chosen, rejected)
        elif isinstance(chosen, str) and isinstance(rejected, str):
            out["prompt"], out["chosen"], out["rejected"] = split_text(chosen, rejected)
        return out
    if "prompt" in out or "messages" in out:
        for key in ("chosen", "rejected", "completion"):
            if is_messages(out.get(key)):
                out[key] = answer_text(out[key], key)
    return out
