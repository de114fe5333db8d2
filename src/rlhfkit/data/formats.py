"""Record formats shared by the trainers and the feedback app (DESIGN §3).

Every JSONL reader goes through :func:`read_records`, which validates each line and reports problems
as ``file:line: field: problem``. Nothing is dropped silently: one bad line stops the read with a
:class:`RecordError` that names it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

KINDS = ("sft", "prompt", "preference", "ranking", "rating", "edit")


class RecordError(ValueError):
    """A malformed record; the message is ``file:line: field: problem``."""

    def __init__(self, where: str, field: str, problem: str):
        self.where, self.field, self.problem = where, field, problem
        super().__init__(f"{where}: {field}: {problem}")


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _need_str(rec: dict, key: str, where: str, allow_empty: bool = False) -> str:
    if key not in rec:
        raise RecordError(where, key, "missing")
    value = rec[key]
    if not isinstance(value, str):
        raise RecordError(where, key, f"expected a string, got {_type_name(value)}")
    if not allow_empty and not value.strip():
        raise RecordError(where, key, "empty string")
    return value


def _check_messages(rec: dict, where: str) -> list[dict]:
    msgs = rec["messages"]
    if not isinstance(msgs, list) or not msgs:
        raise RecordError(where, "messages", f"expected a non-empty list, got {_type_name(msgs)}")
    for i, m in enumerate(msgs):
        field = f"messages[{i}]"
        if not isinstance(m, dict):
            raise RecordError(where, field, f"expected an object, got {_type_name(m)}")
        role = m.get("role")
        if role not in ("system", "user", "assistant"):
            raise RecordError(where, f"{field}.role", f"expected system|user|assistant, got {role!r}")
        if not isinstance(m.get("content"), str):
            raise RecordError(where, f"{field}.content", f"expected a string, got {_type_name(m.get('content'))}")
    return msgs


def _check_prompt(rec: dict, where: str) -> None:
    if "messages" in rec:
        msgs = _check_messages(rec, where)
        if msgs[-1]["role"] == "assistant" and len(msgs) == 1:
            raise RecordError(where, "messages", "a prompt needs at least one user message")
    else:
        _need_str(rec, "prompt", where)


def _check_sft(rec: dict, where: str) -> None:
    if "messages" in rec:
        msgs = _check_messages(rec, where)
        if msgs[-1]["role"] != "assistant":
            raise RecordError(where, "messages", "the last message must be the assistant's answer")
    else:
        _need_str(rec, "prompt", where)
        _need_str(rec, "completion", where)


def _check_optional_number(rec: dict, key: str, where: str) -> None:
    if key in rec and rec[key] is not None:
        if isinstance(rec[key], bool) or not isinstance(rec[key], (int, float)):
            raise RecordError(where, key, f"expected a number, got {_type_name(rec[key])}")


def _check_preference(rec: dict, where: str) -> None:
    _check_prompt(rec, where)
    _need_str(rec, "chosen", where, allow_empty=True)
    _need_str(rec, "rejected", where, allow_empty=True)
    _check_optional_number(rec, "margin", where)


def _check_ranking(rec: dict, where: str) -> None:
    _check_prompt(rec, where)
    responses = rec.get("responses")
    if not isinstance(responses, list) or len(responses) < 2:
        raise RecordError(where, "responses", f"expected a list of at least 2 strings, got {_type_name(responses)}")
    for i, r in enumerate(responses):
        if not isinstance(r, str):
            raise RecordError(where, f"responses[{i}]", f"expected a string, got {_type_name(r)}")
    ranking = rec.get("ranking")
    if not isinstance(ranking, list) or len(ranking) < 2:
        raise RecordError(where, "ranking", "expected a list of at least 2 response indices (best first)")
    seen: set[int] = set()
    for i, idx in enumerate(ranking):
        # A tie group is a list of indices that share one place, e.g. [0, [1, 2], 3].
        group = idx if isinstance(idx, list) else [idx]
        for j in group:
            if isinstance(j, bool) or not isinstance(j, int) or not 0 <= j < len(responses):
                raise RecordError(where, f"ranking[{i}]", f"expected an index in 0..{len(responses) - 1}, got {j!r}")
            if j in seen:
                raise RecordError(where, f"ranking[{i}]", f"index {j} appears twice")
            seen.add(j)


def _check_rating(rec: dict, where: str) -> None:
    _check_prompt(rec, where)
    _need_str(rec, "response", where, allow_empty=True)
    if "score" not in rec:
        raise RecordError(where, "score", "missing")
    _check_optional_number(rec, "score", where)
    if rec["score"] is None:
        raise RecordError(where, "score", "expected a number, got null")


def _check_edit(rec: dict, where: str) -> None:
    _check_prompt(rec, where)
    _need_str(rec, "response", where, allow_empty=True)
    _need_str(rec, "edited", where)


CHECKS: dict[str, Callable[[dict, str], None]] = {
    "sft": _check_sft,
    "prompt": _check_prompt,
    "preference": _check_preference,
    "ranking": _check_ranking,
    "rating": _check_rating,
    "edit": _check_edit,
}


def detect_kind(rec: dict) -> str:
    """Guess a feedback record's kind from its fields (used for mixed feedback files)."""
    if "chosen" in rec or "rejected" in rec:
        return "preference"
    if "ranking" in rec or "responses" in rec:
        return "ranking"
    if "edited" in rec:
        return "edit"
    if "score" in rec:
        return "rating"
    if "completion" in rec or ("messages" in rec and rec["messages"] and rec["messages"][-1].get("role") == "assistant"):
        return "sft"
    return "prompt"


def validate(rec: Any, kind: str, where: str) -> dict:
    """Check one record of ``kind`` ("auto" detects feedback kinds); return it or raise RecordError."""
    if not isinstance(rec, dict):
        raise RecordError(where, "(line)", f"expected a JSON object, got {_type_name(rec)}")
    if kind == "auto":
        kind = detect_kind(rec)
    if kind not in CHECKS:
        raise ValueError(f"unknown record kind {kind!r}; expected one of {', '.join(KINDS)}")
    CHECKS[kind](rec, where)
    return rec


def iter_records(path: str | Path, kind: str) -> Iterator[dict]:
    """Yield validated records of ``kind`` from a JSONL file; blank lines are skipped."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise RecordError(where, "(line)", f"invalid JSON: {e.msg} at column {e.colno}") from None
            yield validate(rec, kind, where)


def read_records(path: str | Path, kind: str) -> list[dict]:
    """All validated records of ``kind`` from a JSONL file (see :func:`iter_records`)."""
    return list(iter_records(path, kind))


def write_records(path: str | Path, records: Iterable[dict], append: bool = False) -> int:
    """Write records as JSONL (UTF-8, one object per line); returns how many were written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("a" if append else "w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            n += 1
    return n


def prompt_messages(rec: dict) -> list[dict]:
    """The chat messages of a record's prompt (a plain ``prompt`` becomes one user message)."""
    if "messages" in rec:
        msgs = rec["messages"]
        return msgs[:-1] if msgs[-1]["role"] == "assistant" else msgs
    return [{"role": "user", "content": rec["prompt"]}]


def prompt_text(rec: dict) -> str:
    """A readable key for a record's prompt: the plain prompt, or the last user message."""
    if "prompt" in rec and isinstance(rec["prompt"], str):
        return rec["prompt"]
    users = [m["content"] for m in prompt_messages(rec) if m["role"] == "user"]
    return users[-1] if users else ""


def sft_pair(rec: dict) -> tuple[list[dict], str]:
    """(prompt messages, response text) of an SFT record."""
    if "messages" in rec:
        return rec["messages"][:-1], rec["messages"][-1]["content"]
    return [{"role": "user", "content": rec["prompt"]}], rec["completion"]


@dataclass(frozen=True)
class Pair:
    """One preference pair for reward-model training; ``group`` keeps one prompt's pairs together."""

    prompt: str
    chosen: str
    rejected: str
    margin: float = 0.0
    group: str = ""


def ranking_to_pairs(rec: dict) -> list[Pair]:
    """Expand a ranking (best first, tie groups as lists) to all pairs with a strict order: K·(K−1)/2 without ties."""
    prompt = prompt_text(rec)
    groups = [g if isinstance(g, list) else [g] for g in rec["ranking"]]
    pairs = []
    for hi in range(len(groups)):
        for lo in range(hi + 1, len(groups)):
            for a in groups[hi]:
                for b in groups[lo]:
                    pairs.append(Pair(prompt, rec["responses"][a], rec["responses"][b], 0.0, prompt))
    return pairs


def ratings_to_pairs(records: list[dict]) -> list[Pair]:
    """Pairs within each prompt from ratings; equal scores (ties) give no pair. Margin = score gap."""
    by_prompt: dict[str, list[dict]] = {}
    for rec in records:
        by_prompt.setdefault(prompt_text(rec), []).append(rec)
    pairs = []
    for prompt, recs in by_prompt.items():
        for i in range(len(recs)):
            for j in range(i + 1, len(recs)):
                a, b = recs[i], recs[j]
                if a["score"] == b["score"]:
                    continue
                hi, lo = (a, b) if a["score"] > b["score"] else (b, a)
                pairs.append(Pair(prompt, hi["response"], lo["response"], float(hi["score"] - lo["score"]), prompt))
    return pairs


def feedback_to_pairs(records: list[dict]) -> list[Pair]:
    """Turn mixed feedback records (preference, ranking, rating, edit) into preference pairs."""
    pairs: list[Pair] = []
    ratings: list[dict] = []
    for rec in records:
        kind = detect_kind(rec)
        if kind == "preference":
            p = prompt_text(rec)
            pairs.append(Pair(p, rec["chosen"], rec["rejected"], float(rec.get("margin") or 0.0), p))
        elif kind == "ranking":
            pairs.extend(ranking_to_pairs(rec))
        elif kind == "rating":
            ratings.append(rec)
        elif kind == "edit":
            p = prompt_text(rec)
            if rec["edited"].strip() != rec["response"].strip():
                pairs.append(Pair(p, rec["edited"], rec["response"], 0.0, p))
    pairs.extend(ratings_to_pairs(ratings))
    return pairs
