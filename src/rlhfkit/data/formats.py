"""Record formats shared by the trainers and the feedback app (docs/design.md §3).

Every JSONL reader goes through :func:`iter_records` (or :func:`read_records`), which checks each line and
reports a problem as ``file:line: field: problem`` (``file: problem`` for the file as a whole). Nothing is
dropped silently: one bad line stops the read with a :class:`RecordError` that names it, and the stages
read their data before they load a model, so a bad file fails in seconds. Whatever its kind, a line is
- UTF-8 (no byte-order mark; CRLF line ends are fine) holding one JSON object; blank lines are skipped;
- valid Unicode throughout: json turns an escape like ``"\udc80"`` into a lone surrogate, which no
  tokenizer or UTF-8 writer takes;
- finite numbers throughout: json reads ``NaN`` and ``Infinity``, which would poison training silently.
Then each kind's check: the texts a record needs are non-blank strings, texts it compares differ, and its
numbers are in range.
"""

from __future__ import annotations

import codecs
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator

from rlhfkit.data.shapes import ShapeError, from_trl, is_unpaired

KINDS = ("sft", "prompt", "preference", "ranking", "rating", "edit", "candidates")
ROLES = ("system", "user", "assistant")
# Scores and margins past this are typos, not feedback; squared when ratings are z-scored, 1e308 overflows.
NUMBER_LIMIT = 1e6


class RecordError(ValueError):
    """A malformed record or file: ``file:line: field: problem``, or ``file[:line]: problem`` without a field."""

    def __init__(self, where: str, field: str | None, problem: str):
        self.where, self.field, self.problem = where, field, problem
        super().__init__(f"{where}: {field}: {problem}" if field else f"{where}: {problem}")


class _HugeLiteral(float):
    """A number literal past a float's range (json reads 1e400 as inf); keeps its text for the error message."""

    text: str


def _parse_float(text: str) -> float:
    value = float(text)
    if math.isfinite(value):
        return value
    huge = _HugeLiteral(value)
    huge.text = text
    return huge


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _number_text(value: float) -> str:
    """A non-finite number as the JSON line wrote it: NaN, Infinity, -Infinity or a literal like 1e400."""
    if isinstance(value, _HugeLiteral):
        return value.text
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_values(value: Any, where: str) -> None:
    """Every string (keys too) valid Unicode and every number finite, anywhere in a line; the field is its path."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:  # a loop, not recursion: a line may nest as deeply as json itself allows
        path, v = stack.pop()
        field = path or "(line)"
        if isinstance(v, str) and not _is_unicode(v):
            raise RecordError(where, field, "text is not valid Unicode (lone surrogate)")
        if isinstance(v, float) and not math.isfinite(v):
            raise RecordError(where, field, f"expected a finite number, got {_number_text(v)}")
        if isinstance(v, dict):
            if not all(_is_unicode(k) for k in v):
                raise RecordError(where, field, "a field name is not valid Unicode (lone surrogate)")
            stack.extend(reversed([(f"{path}.{k}" if path else k, item) for k, item in v.items()]))
        elif isinstance(v, list):
            stack.extend(reversed([(f"{path}[{i}]", item) for i, item in enumerate(v)]))


def check_number(value: Any, field: str, where: str, lo: float = -NUMBER_LIMIT, hi: float = NUMBER_LIMIT) -> float:
    """A finite number (not a bool) from ``lo`` to ``hi``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RecordError(where, field, f"expected a number, got {_type_name(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise RecordError(where, field, f"expected a finite number, got {_number_text(value)}")
    if not lo <= value <= hi:
        raise RecordError(where, field, f"expected a number from {lo:g} to {hi:g}, got {value!r}")
    return value


def check_text(value: Any, field: str, where: str) -> str:
    """A text the record needs: a string with more than whitespace in it."""
    if not isinstance(value, str):
        raise RecordError(where, field, f"expected a string, got {_type_name(value)}")
    if not value.strip():
        raise RecordError(where, field, f"expected text, got {'an empty string' if not value else 'only whitespace'}")
    return value


def check_texts(values: Any, field: str, where: str, at_least: int) -> list[str]:
    """At least ``at_least`` texts that all differ (e.g. one prompt's responses: a copy can only tie with itself)."""
    if not isinstance(values, list) or len(values) < at_least:
        need = "a non-empty list of strings" if at_least == 1 else f"a list of at least {at_least} strings"
        got = (f"a list of {len(values)}" if values else "an empty list") if isinstance(values, list) else _type_name(values)
        raise RecordError(where, field, f"expected {need}, got {got}")
    first: dict[str, int] = {}
    for i, value in enumerate(values):
        j = first.setdefault(check_text(value, f"{field}[{i}]", where).strip(), i)
        if j != i:
            raise RecordError(where, f"{field}[{i}]", f"the same text as {field}[{j}]; each response must differ")
    return values


def record_responses(rec: dict, where: str) -> list[str]:
    """The texts a candidates-like record carries: ``responses`` (one or more, all different) or one ``response``."""
    if "responses" in rec:
        return check_texts(rec["responses"], "responses", where, 1)
    if "response" in rec:
        return [check_text(rec["response"], "response", where)]
    raise RecordError(where, "responses", "missing (give responses: [...] or response: ...)")


def check_ranking(ranking: Any, n: int, where: str, field: str = "ranking") -> None:
    """Places best first, each an index into ``n`` responses or a tie group (a non-empty list of indices);
    at least 2 places, no index twice. Responses left out are unranked."""
    if not isinstance(ranking, list) or len(ranking) < 2:
        raise RecordError(where, field, "expected a list of at least 2 places (response indices, best first)")
    seen: set[int] = set()
    for i, place in enumerate(ranking):
        group = place if isinstance(place, list) else [place]
        if not group:
            raise RecordError(where, f"{field}[{i}]", "an empty tie group; a place needs at least one index")
        for j in group:
            if isinstance(j, bool) or not isinstance(j, int) or not 0 <= j < n:
                raise RecordError(where, f"{field}[{i}]", f"expected an index in 0..{n - 1}, got {j!r}")
            if j in seen:
                raise RecordError(where, f"{field}[{i}]", f"index {j} appears twice")
            seen.add(j)


def _field(obj: dict, key: str, where: str, name: str | None = None) -> Any:
    if key not in obj:
        raise RecordError(where, name or key, "missing")
    return obj[key]


def _need_str(rec: dict, key: str, where: str) -> str:
    return check_text(_field(rec, key, where), key, where)


def _check_messages(rec: dict, where: str) -> list[dict]:
    msgs = rec["messages"]
    if not isinstance(msgs, list) or not msgs:
        raise RecordError(where, "messages", f"expected a non-empty list, got {_type_name(msgs)}")
    for i, m in enumerate(msgs):
        field = f"messages[{i}]"
        if not isinstance(m, dict):
            raise RecordError(where, field, f"expected an object with role and content, got {_type_name(m)}")
        role = _field(m, "role", where, f"{field}.role")
        if role not in ROLES:
            raise RecordError(where, f"{field}.role", f"expected {'|'.join(ROLES)}, got {role!r}")
        check_text(_field(m, "content", where, f"{field}.content"), f"{field}.content", where)
    return msgs


def _need_user(msgs: list[dict], where: str, what: str) -> None:
    if not any(m["role"] == "user" for m in msgs):
        raise RecordError(where, "messages", f"{what} needs at least one user message")


def _check_prompt(rec: dict, where: str) -> None:
    if "messages" in rec:
        _need_user(_check_messages(rec, where), where, "a prompt")
    else:
        _need_str(rec, "prompt", where)


def _check_sft(rec: dict, where: str) -> None:
    if "text" in rec and "prompt" not in rec and "messages" not in rec:  # language modelling: loss on all of it
        _need_str(rec, "text", where)
        return
    if "messages" in rec:
        msgs = _check_messages(rec, where)
        if msgs[-1]["role"] != "assistant":
            raise RecordError(where, "messages", "the last message must be the assistant's answer")
        _need_user(msgs[:-1], where, "the prompt before the answer")
    else:
        _need_str(rec, "prompt", where)
        _need_str(rec, "completion", where)


def _check_preference(rec: dict, where: str) -> None:
    _check_prompt(rec, where)
    chosen, rejected = _need_str(rec, "chosen", where), _need_str(rec, "rejected", where)
    if chosen.strip() == rejected.strip():
        raise RecordError(where, "rejected", "the same text as chosen; a preference needs two different responses")
    if rec.get("margin") is not None:  # optional: how much better chosen is (Bradley–Terry with margin)
        check_number(rec["margin"], "margin", where, lo=0.0)


def _check_ranking(rec: dict, where: str) -> None:
    _check_prompt(rec, where)
    responses = check_texts(_field(rec, "responses", where), "responses", where, 2)
    check_ranking(_field(rec, "ranking", where), len(responses), where)


def _check_rating(rec: dict, where: str) -> None:
    _check_prompt(rec, where)
    _need_str(rec, "response", where)
    check_number(_field(rec, "score", where), "score", where)


def _check_edit(rec: dict, where: str) -> None:
    _check_prompt(rec, where)
    _need_str(rec, "response", where)
    _need_str(rec, "edited", where)


def _check_candidates(rec: dict, where: str) -> None:
    _check_prompt(rec, where)
    check_texts(_field(rec, "responses", where), "responses", where, 2)


def _check_optional_fields(rec: dict, where: str) -> None:
    """Optional fields some stage reads, in any record: eval's ``reference``, the judges' ``keywords`` and ``draft``,
    a transcription prompt's ``nbest`` and ``one_best`` (a speech recogniser's hypotheses), and a feedback record's
    ``weight`` (the reward model's and DPO's losses count its pairs that much)."""
    if rec.get("weight") is not None:
        check_number(rec["weight"], "weight", where, lo=0.0)
        if rec["weight"] == 0:
            raise RecordError(where, "weight", "expected a number above 0, got 0 (leave the record out instead)")
    for key in ("reference", "draft"):
        if rec.get(key) is not None:
            check_text(rec[key], key, where)
    if rec.get("keywords") is not None:
        keywords = rec["keywords"]
        if not isinstance(keywords, list):
            raise RecordError(where, "keywords", f"expected a list of strings, got {_type_name(keywords)}")
        for i, k in enumerate(keywords):
            check_text(k, f"keywords[{i}]", where)
    if rec.get("one_best") is not None and not isinstance(rec["one_best"], str):
        raise RecordError(where, "one_best", f"expected a string (\"\" when nothing was heard), got {_type_name(rec['one_best'])}")
    if rec.get("nbest") is not None:
        nbest = rec["nbest"]
        if not isinstance(nbest, list) or not nbest:
            raise RecordError(where, "nbest", f"expected a non-empty list of {{\"text\", \"score\"}} hypotheses, got "
                                              f"{_type_name(nbest) if not isinstance(nbest, list) else 'an empty list'}")
        for i, h in enumerate(nbest):
            if not isinstance(h, dict) or not isinstance(h.get("text"), str):
                raise RecordError(where, f"nbest[{i}].text", "expected an object with a \"text\" string (\"\" when "
                                                             "nothing was heard)")
            if h.get("score") is not None:
                check_number(h["score"], f"nbest[{i}].score", where)


CHECKS: dict[str, Callable[[dict, str], None]] = {
    "sft": _check_sft,
    "prompt": _check_prompt,
    "preference": _check_preference,
    "ranking": _check_ranking,
    "rating": _check_rating,
    "edit": _check_edit,
    "candidates": _check_candidates,
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
    msgs = rec.get("messages")
    ends_with_answer = isinstance(msgs, list) and bool(msgs) and isinstance(msgs[-1], dict) and msgs[-1].get("role") == "assistant"
    if "completion" in rec or ends_with_answer or ("text" in rec and "prompt" not in rec):
        return "sft"
    return "prompt"


def validate(rec: Any, kind: str, where: str) -> dict:
    """Check one record of ``kind`` ("auto" detects feedback kinds); return it or raise RecordError."""
    if not isinstance(rec, dict):
        raise RecordError(where, "(line)", f"expected a JSON object, got {_type_name(rec)}")
    if kind != "auto" and kind not in CHECKS:
        raise ValueError(f"unknown record kind {kind!r}; expected one of {', '.join(KINDS)}")
    _check_values(rec, where)
    if kind == "sft" and is_unpaired(rec):
        raise RecordError(where, "label", "an unpaired preference record (prompt, completion, label): SFT would learn the "
                                          "label-false completions too; keep the label-true rows for SFT, or train a "
                                          "reward model or DPO on the file (its labels are read as ratings 1 and 0)")
    try:
        rec = from_trl(rec)  # TRL's shapes as rlhfkit's records (data/shapes.py)
    except ShapeError as e:
        raise RecordError(where, e.field, e.problem) from None
    CHECKS[detect_kind(rec) if kind == "auto" else kind](rec, where)
    _check_optional_fields(rec, where)
    return rec


def open_input(path: str | Path) -> BinaryIO:
    """An input file opened for reading bytes, or a RecordError saying why it cannot be (``file: problem``)."""
    try:
        return open(path, "rb")  # bytes: a bad UTF-8 sequence is then reported with its line, not as a crash
    except FileNotFoundError:
        raise RecordError(str(path), None, "no such file") from None
    except IsADirectoryError:
        raise RecordError(str(path), None, "is a folder, expected a file (or a datasets save_to_disk folder)") from None
    except OSError as e:
        raise RecordError(str(path), None, f"cannot be read ({e.strerror})") from None


def decode_line(raw: bytes, where: str) -> str:
    """One line of an input file as text, or ``file:line: invalid UTF-8 at byte N`` (N counts from 1 in the line)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RecordError(where, None, f"invalid UTF-8 at byte {e.start + 1}") from None


def _json_lines(path: Path) -> Iterator[tuple[str, Any]]:
    """(``file:line``, parsed JSON) of each non-blank line, or a RecordError naming the file or line."""
    with open_input(path) as f:
        for lineno, raw in enumerate(f, 1):
            where = f"{path}:{lineno}"
            if lineno == 1 and raw.startswith(codecs.BOM_UTF8):
                raise RecordError(where, None, "starts with a UTF-8 byte-order mark (BOM); save the file as UTF-8 without one")
            line = decode_line(raw, where)
            if not line.strip():
                continue
            try:
                value = json.loads(line, parse_float=_parse_float)
            except json.JSONDecodeError as e:
                # json words one message "Invalid control character at" (it adds the position itself)
                raise RecordError(where, "(line)", f"invalid JSON: {e.msg.removesuffix(' at')} at column {e.colno}") from None
            except RecursionError:
                raise RecordError(where, "(line)", "invalid JSON: nested too deeply") from None
            except ValueError:  # the one other error json raises: an integer past Python's digit limit
                raise RecordError(where, "(line)", "invalid JSON: a number with too many digits") from None
            yield where, value


def iter_records(path: str | Path, kind: str) -> Iterator[tuple[str, dict]]:
    """(``file:line``, record) for each non-blank line of a JSONL file, validated as ``kind``; other data
    (parquet, CSV, JSON, a ``datasets`` folder, a cached hub dataset: :func:`dataset_rows`) row by row as
    (``source:row N``, record)."""
    rows = dataset_rows(str(path))
    if rows is None:
        for where, value in _json_lines(Path(path)):
            yield where, validate(value, kind, where)
        return
    for where, value in rows:
        yield where, validate(value, kind, where)


DATASET_SUFFIXES = {".parquet": "parquet", ".csv": "csv", ".json": "json", ".arrow": "arrow"}


def split_spec(spec: str) -> tuple[str, str | None]:
    """``PATH:SPLIT`` → (PATH, SPLIT) when PATH names a dataset (``hf:NAME`` or an existing path); else (spec, None)."""
    head, sep, tail = spec.rpartition(":")
    if sep and tail and "/" not in tail and (head.startswith("hf:") or Path(head).exists()) and not Path(spec).exists():
        return head, tail
    return spec, None


def with_split(spec: str, split: str | None) -> str:
    """``spec`` with a ``--split`` given apart: ``PATH:SPLIT`` (what :func:`dataset_rows` reads); ``spec`` when None."""
    if split is None:
        return spec
    if split_spec(spec)[1] is not None:
        raise RecordError(spec, None, f"names its split already; give --split {split} or {split_spec(spec)[0]}:{split}, not both")
    if not (spec.startswith("hf:") or Path(spec).is_dir()):
        raise RecordError(spec, None, f"--split {split}: only a saved dataset folder (save_to_disk) or hf:NAME has splits")
    return f"{spec}:{split}"


def dataset_rows(spec: str) -> Iterator[tuple[str, dict]] | None:
    """The rows of a dataset that is not JSONL, through the ``datasets`` library, or None for a JSONL file.

    ``FILE.parquet|.csv|.json|.arrow``; a ``save_to_disk`` folder (a DatasetDict names its split: ``FOLDER:test``,
    else its only split or ``train``); ``hf:NAME[:SPLIT]``, a hub dataset already in the local cache (offline).
    A null column value is a field the row does not have (columnar files give every row every column).
    """
    path, split = split_spec(spec)
    p = Path(path)
    if path.startswith("hf:"):
        dataset = _hub_dataset(path[3:], split)
    elif p.is_dir():
        if not ((p / "dataset_info.json").exists() or (p / "dataset_dict.json").exists() or (p / "state.json").exists()):
            raise RecordError(path, None, "is a folder but not a saved dataset (save_to_disk); give a JSONL, parquet, "
                                          "CSV or JSON file, or the dataset's folder")
        dataset = _pick_split(path, _load_from_disk(path), split)
    elif p.suffix.lower() in DATASET_SUFFIXES and p.exists():
        dataset = _from_file(path, DATASET_SUFFIXES[p.suffix.lower()])
    else:
        if split is not None:
            raise RecordError(spec, None, f"{path} is not a dataset with splits (a datasets folder or hf:NAME)")
        return None
    return ((f"{spec}:row {i}", {k: v for k, v in row.items() if v is not None})
            for i, row in enumerate(dataset, 1))


def _from_file(path: str, builder: str):
    import datasets

    try:
        return datasets.load_dataset(builder, data_files=path, split="train")
    except Exception as e:  # the builders raise their parsers' errors: say which file, in one line
        raise RecordError(path, None, f"cannot be read as {builder} ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None


def _load_from_disk(path: str):
    import datasets

    try:
        return datasets.load_from_disk(path)
    except Exception as e:
        raise RecordError(path, None, f"cannot be read as a saved dataset ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None


def _pick_split(where: str, data, split: str | None):
    import datasets

    if not isinstance(data, datasets.DatasetDict):
        if split is not None:
            raise RecordError(where, None, f"a single dataset has no split {split!r}; name the folder alone")
        return data
    names = list(data)
    if split is None:
        if len(names) == 1 or "train" in names:
            return data[names[0] if len(names) == 1 else "train"]
        raise RecordError(where, None, f"a DatasetDict with splits {', '.join(names)}: name one as {where}:SPLIT")
    if split not in data:
        raise RecordError(where, None, f"no split {split!r} (splits: {', '.join(names)})")
    return data[split]


def _hub_dataset(name: str, split: str | None):
    import datasets

    # rlhfkit reads data offline: the local cache only (the switch datasets read from the environment at import)
    datasets.config.HF_DATASETS_OFFLINE = datasets.config.HF_HUB_OFFLINE = True
    try:
        data = datasets.load_dataset(name)
    except Exception as e:
        raise RecordError(f"hf:{name}", None, "not a hub dataset in the local cache (rlhfkit reads datasets offline; "
                                              f"download it once with datasets.load_dataset) ({type(e).__name__})") from None
    return _pick_split(f"hf:{name}", data, split)


def read_located(path: str | Path, kind: str) -> list[tuple[str, dict]]:
    """Every (``file:line``, record) of an input file (see :func:`iter_records`); a file without one is an error."""
    located = list(iter_records(path, kind))
    if not located:
        raise RecordError(str(path), None, "no records")
    return located


def read_records(path: str | Path, kind: str) -> list[dict]:
    """All validated records of ``kind`` from an input file, at least one (see :func:`read_located`)."""
    return [rec for _, rec in read_located(path, kind)]


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


def prompt_key(rec: dict) -> str:
    """A prompt's identity (for grouping feedback, splitting, resuming): its chat messages, so a plain prompt
    and the same text as one user message are the same prompt."""
    return json.dumps(prompt_messages(rec), ensure_ascii=False, sort_keys=True)


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
    """(prompt messages, response text) of an SFT record; a language-modelling ``text`` has no prompt."""
    if "text" in rec and "prompt" not in rec and "messages" not in rec:
        return [], rec["text"]
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
    weight: float = 1.0  # how much the pair counts in the loss (the record's ``weight``)


def record_weight(rec: dict) -> float:
    """A feedback record's optional ``weight`` (1 when it has none)."""
    return 1.0 if rec.get("weight") is None else float(rec["weight"])


def ranking_to_pairs(rec: dict) -> list[Pair]:
    """Expand a ranking (best first, tie groups as lists) to all pairs with a strict order: K·(K−1)/2 without ties."""
    prompt = prompt_text(rec)
    groups = [g if isinstance(g, list) else [g] for g in rec["ranking"]]
    pairs = []
    for hi in range(len(groups)):
        for lo in range(hi + 1, len(groups)):
            for a in groups[hi]:
                for b in groups[lo]:
                    pairs.append(Pair(prompt, rec["responses"][a], rec["responses"][b], 0.0, prompt, record_weight(rec)))
    return pairs


def ratings_to_pairs(records: list[dict]) -> list[Pair]:
    """Pairs within each prompt from ratings; equal scores (ties) give no pair. Margin = score gap; weight = the
    product of the two ratings' weights."""
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
                pairs.append(Pair(prompt, hi["response"], lo["response"], float(hi["score"] - lo["score"]), prompt,
                                  record_weight(a) * record_weight(b)))
    return pairs


def feedback_to_pairs(records: list[dict]) -> list[Pair]:
    """Turn mixed feedback records (preference, ranking, rating, edit) into preference pairs."""
    pairs: list[Pair] = []
    ratings: list[dict] = []
    for rec in records:
        kind = detect_kind(rec)
        if kind == "preference":
            p = prompt_text(rec)
            pairs.append(Pair(p, rec["chosen"], rec["rejected"], float(rec.get("margin") or 0.0), p, record_weight(rec)))
        elif kind == "ranking":
            pairs.extend(ranking_to_pairs(rec))
        elif kind == "rating":
            ratings.append(rec)
        elif kind == "edit":
            p = prompt_text(rec)
            if rec["edited"].strip() != rec["response"].strip():
                pairs.append(Pair(p, rec["edited"], rec["response"], 0.0, p, record_weight(rec)))
    pairs.extend(ratings_to_pairs(ratings))
    return pairs
