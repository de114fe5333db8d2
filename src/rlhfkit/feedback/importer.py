"""Load candidates (from ``rlhf sample``) into a project as tasks of the kinds asked for.

Accepted lines (JSONL):
  one per prompt:    {"prompt" | "messages", "responses": [str, ...], "model"?, "checkpoint"?, "sampling"?, ...}
  one per candidate: {"prompt" | "messages", "response": str, ...}  (grouped on the prompt)
A line may carry ``"gold": {"ranking": [best..worst indices, ties as lists], "ratings": [1..7 per response]}``:
its tasks become gold tasks with that known answer, mixed in among the others unseen.
A prompt's responses are texts (not blank) that differ: annotators would otherwise compare a copy with itself.

Tasks made per prompt with K responses: rate → one per response; rank → one over all K (K ≥ 2);
compare → one per pair of responses; edit → one on the first response; thumbs → one per response (up or down).
A thumbs task's gold answer comes from the gold ratings: up for 4 (acceptable) or more.
"""

from __future__ import annotations

import itertools
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from sqlalchemy import select

from rlhfkit.data.formats import (RecordError, check_ranking, decode_line, open_input, prompt_messages, prompt_text, read_located,
                                  record_responses)
from rlhfkit.feedback.annotate import refresh_open
from rlhfkit.feedback.checks import AUDIO_TYPES, check_name, find_bad_text, text_problem
from rlhfkit.feedback.db import IMPORT_KINDS, Database, Project, Prompt, Response, Task, get_project

THUMBS_UP_FROM = 4  # a gold or simulated rating of 4 (acceptable) or more is a thumbs up

KNOWN_FIELDS = {"prompt", "messages", "responses", "response", "model", "checkpoint", "sampling", "gold", "audio"}


@dataclass
class Group:
    """One prompt with its candidate responses, as read from the file."""

    record: dict  # {"prompt"} or {"messages"}
    responses: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    checkpoints: list[str] = field(default_factory=list)
    metas: list[dict] = field(default_factory=list)
    gold: Optional[dict] = None
    where: str = ""


def _opt_str(rec: dict, key: str, where: str) -> str:
    value = rec.get(key, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise RecordError(where, key, f"expected a string, got {type(value).__name__}")
    if len(value) > 500:  # the width of the column
        raise RecordError(where, key, "longer than 500 characters")
    return value


def _check_gold(gold: Any, k: int, where: str) -> dict:
    if not isinstance(gold, dict):
        raise RecordError(where, "gold", f"expected an object with ranking and/or ratings, got {type(gold).__name__}")
    unknown = set(gold) - {"ranking", "ratings"}
    if unknown:
        raise RecordError(where, f"gold.{sorted(unknown)[0]}", "unknown field; expected ranking or ratings")
    if "ranking" in gold:
        if k < 2:
            raise RecordError(where, "gold.ranking", "a ranking needs at least 2 responses")
        check_ranking(gold["ranking"], k, where, "gold.ranking")
    if "ratings" in gold:
        r = gold["ratings"]
        if not isinstance(r, list) or len(r) != k:
            raise RecordError(where, "gold.ratings", f"expected a list of {k} scores (one per response)")
        for i, v in enumerate(r):
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 7:
                raise RecordError(where, f"gold.ratings[{i}]", f"expected an integer 1..7, got {v!r}")
    return gold


def check_clip_name(name, where: str) -> str:
    """A record's ``audio``: the file name of a clip in the app's media folder (no folders; a known audio type)."""
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name.startswith("."):
        raise RecordError(where, "audio", f"expected a clip's file name in the app's media folder (no folders), got {name!r:.60}")
    if Path(name).suffix.lower() not in AUDIO_TYPES:
        raise RecordError(where, "audio", f"{name}: expected a {', '.join(sorted(AUDIO_TYPES))} file")
    return name


def read_candidates(path: str | Path) -> list[Group]:
    """Validated prompt groups from a candidates file; a bad line raises ``file:line: field: problem``."""
    groups: dict[str, Group] = {}
    for where, rec in read_located(path, "prompt"):
        bad = find_bad_text(rec)  # NUL too: PostgreSQL refuses it in text columns, and the page could not show it
        if bad:
            raise RecordError(where, *bad)
        responses, field = record_responses(rec, where), "responses" if "responses" in rec else "response"
        model, checkpoint = _opt_str(rec, "model", where), _opt_str(rec, "checkpoint", where)
        prompt = {"messages": prompt_messages(rec)} if "messages" in rec else {"prompt": rec["prompt"]}
        if rec.get("audio") is not None:  # a clip the annotator hears (the app serves it from its media folder)
            prompt["audio"] = check_clip_name(rec["audio"], where)
        key = json.dumps(prompt, sort_keys=True, ensure_ascii=False)
        g = groups.setdefault(key, Group(record=prompt, where=where))
        if "gold" in rec:
            if "response" in rec:
                raise RecordError(where, "gold", "gold answers need the one-line-per-prompt form (responses: [...])")
            g.gold = _check_gold(rec["gold"], len(responses), where)
        meta = {k: v for k, v in rec.items() if k not in KNOWN_FIELDS}
        if "sampling" in rec:
            meta["sampling"] = rec["sampling"]
        for r in responses:
            # One line per candidate adds to the prompt's earlier lines: a copy there would be compared with itself.
            if r.strip() in (seen.strip() for seen in g.responses):
                raise RecordError(where, field, f"the same text as an earlier response to this prompt (first at {g.where})")
            g.responses.append(r)
            g.models.append(model)
            g.checkpoints.append(checkpoint)
            g.metas.append(meta)
    return list(groups.values())


def read_guidelines(path: str | Path) -> str:
    """A project's guidelines (UTF-8 text or Markdown); a missing or undecodable file is a ``file[:line]: problem``."""
    with open_input(path) as f:
        return "".join(decode_line(raw, f"{path}:{lineno}") for lineno, raw in enumerate(f, 1))


def _gold_for(kind: str, positions: list[int], gold: Optional[dict]) -> Optional[dict]:
    """The known answer of a task over response ``positions`` (indices into the prompt's responses)."""
    if gold is None:
        return None
    if kind == "rate":
        return {"score": gold["ratings"][positions[0]]} if "ratings" in gold else None
    if kind == "thumbs":
        return {"thumb": "up" if gold["ratings"][positions[0]] >= THUMBS_UP_FROM else "down"} if "ratings" in gold else None
    if kind == "edit":
        return None  # an edit has no single right answer
    if "ranking" in gold:
        place = {j: p for p, grp in enumerate(gold["ranking"]) for j in (grp if isinstance(grp, list) else [grp])}
    elif "ratings" in gold:
        place = {j: -gold["ratings"][j] for j in range(len(gold["ratings"]))}
    else:
        return None
    if any(p not in place for p in positions):
        return None
    # Group the task's positions (0..len-1) by their place, best first.
    order = sorted(set(place[p] for p in positions))
    ranking = [[i for i, p in enumerate(positions) if place[p] == pl] for pl in order]
    if kind == "compare":
        return {"better": None if len(ranking) == 1 else ranking[0][0]}
    return {"ranking": ranking}


def task_specs(kinds: list[str], k: int) -> list[tuple[str, list[int]]]:
    """(kind, response positions) of the tasks made for one prompt with ``k`` responses."""
    specs: list[tuple[str, list[int]]] = []
    for kind in kinds:
        if kind in ("rate", "thumbs"):
            specs += [(kind, [i]) for i in range(k)]
        elif kind == "rank" and k >= 2:
            specs.append(("rank", list(range(k))))
        elif kind == "compare":
            specs += [("compare", [i, j]) for i, j in itertools.combinations(range(k), 2)]
        elif kind == "edit":
            specs.append(("edit", [0]))
    return specs


def parse_kinds(kinds: str | list[str]) -> list[str]:
    items = [k.strip() for k in kinds.split(",")] if isinstance(kinds, str) else list(kinds)
    items = [k for k in items if k]
    if "arena" in items:
        raise ValueError("--kinds: arena tasks compare two models' answers; make them with `rlhf eval --human` "
                         "(or `rlhf feedback arena`), not from candidates")
    bad = [k for k in items if k not in IMPORT_KINDS]
    if bad or not items:
        raise ValueError(f"--kinds: expected a comma-separated list of {','.join(IMPORT_KINDS)}, got {','.join(items) or 'nothing'}")
    return items


def import_candidates(db: Database, project: str, candidates: str | Path, kinds: str | list[str],
                      gold: Optional[str | Path] = None, guidelines: Optional[str] = None,
                      annotators_per_task: Optional[int] = None, max_held: Optional[int] = None,
                      hold_minutes: Optional[int] = None, seed: int = 0) -> dict:
    """Create or extend ``project``; returns counts. Prompts already in the project are skipped."""
    kinds = parse_kinds(kinds)
    project = check_name(project, "--project")  # a BadField is a ValueError: "--project: problem"
    if guidelines is not None and text_problem(guidelines):
        raise ValueError(f"--guidelines: {text_problem(guidelines)}")
    groups = read_candidates(candidates)
    gold_groups = read_candidates(gold) if gold else []
    for g in gold_groups:
        if g.gold is None:
            raise RecordError(g.where, "gold", "missing: every line of the gold file needs known answers")
    if annotators_per_task is not None and annotators_per_task < 1:
        raise ValueError("--annotators-per-task: must be at least 1")
    if max_held is not None and max_held < 1:
        raise ValueError("--max-held: must be at least 1")
    if hold_minutes is not None and hold_minutes < 0:
        raise ValueError("--hold-minutes: must be 0 (never release) or more")
    rng = random.Random(seed)
    counts = {"prompts": 0, "responses": 0, "tasks": 0, "gold_tasks": 0, "skipped_prompts": 0}
    with db.tx() as s:
        proj = get_project(s, project)
        if proj is None:
            proj = Project(name=project, guidelines="", annotators_per_task=1, max_held=5, open_tasks=0)
            s.add(proj)
        if guidelines is not None:
            proj.guidelines = guidelines
        if annotators_per_task is not None:
            proj.annotators_per_task = annotators_per_task
        if max_held is not None:
            proj.max_held = max_held
        if hold_minutes is not None:
            proj.hold_minutes = hold_minutes
        s.flush()
        existing = set(s.scalars(select(Prompt.text).where(Prompt.project_id == proj.id)))
        for g in groups + gold_groups:
            text = prompt_text(g.record)
            if text in existing:
                counts["skipped_prompts"] += 1
                continue
            existing.add(text)
            p = Prompt(project_id=proj.id, record=g.record, text=text)
            s.add(p)
            s.flush()
            rows = [Response(prompt_id=p.id, text=r, model=m, checkpoint=c, meta=meta)
                    for r, m, c, meta in zip(g.responses, g.models, g.checkpoints, g.metas)]
            s.add_all(rows)
            s.flush()
            counts["prompts"] += 1
            counts["responses"] += len(rows)
            for kind, positions in task_specs(kinds, len(rows)):
                known = _gold_for(kind, positions, g.gold)
                if g.gold is not None and known is None:
                    continue  # a gold prompt only makes the tasks whose answer is known
                s.add(Task(project_id=proj.id, prompt_id=p.id, kind=kind, response_ids=[rows[i].id for i in positions],
                           is_gold=known is not None, gold=known, order_key=rng.random(), n_active=0, is_open=True))
                counts["tasks"] += 1
                counts["gold_tasks"] += known is not None
        s.flush()
        refresh_open(s, proj)
    return counts
