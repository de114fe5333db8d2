"""Export answers as the record formats of docs/design.md §3, and the project's stats (progress, agreement, gold).

Formats (each record carries the annotator's name):
  pairs    compare answers  → {"prompt", "chosen", "rejected", "margin", "annotator"} (ties are left out)
  rankings rank answers     → {"prompt", "responses", "ranking", "annotator"}, one per task: several
                              annotators' rankings merged by Bradley–Terry, with their "agreement"
  ratings  rate answers     → {"prompt", "response", "score", "annotator"}
  edits    edit answers     → {"prompt", "response", "edited", "annotator"} (the latest revision)
  all      every one of the above in one file (``read_records(path, "auto")`` tells them apart)
A file export is written all or nothing (:func:`write_export`).
"""

from __future__ import annotations

import difflib
import json
import os
import secrets
import shutil
from collections import defaultdict
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Iterator, Optional

from sqlalchemy import select

from rlhfkit.feedback import agreement as agr
from rlhfkit.feedback.checks import find_bad_text
from rlhfkit.feedback.db import Annotator, Answer, Assignment, Database, Prompt, Response, Task, get_project

FORMATS = ("all", "pairs", "rankings", "ratings", "edits")
KIND_OF_FORMAT = {"pairs": "compare", "rankings": "rank", "ratings": "rate", "edits": "edit"}


@dataclass
class Done:
    """One annotator's current (latest) answer to one task."""

    task: Task
    annotator: str
    payload: dict
    revisions: int


def _load(db: Database, project: str) -> tuple[list[Task], dict[int, list[Done]], dict, dict, list[dict]]:
    """Tasks, answers per task id, prompt records and response texts by id, and assignment rows."""
    with db.tx() as s:
        proj = get_project(s, project)
        if proj is None:
            raise ValueError(f"--project: no project named {project!r} in this database")
        tasks = list(s.scalars(select(Task).where(Task.project_id == proj.id).order_by(Task.id)))
        prompts = {p.id: p.record for p in s.scalars(select(Prompt).where(Prompt.project_id == proj.id))}
        texts = dict(s.execute(select(Response.id, Response.text).join(Prompt, Prompt.id == Response.prompt_id)
                               .where(Prompt.project_id == proj.id)).all())
        names = dict(s.execute(select(Annotator.id, Annotator.name)).all())
        assignments = [{"id": a.id, "task_id": a.task_id, "annotator": names[a.annotator_id], "status": a.status}
                       for a in s.scalars(select(Assignment).where(Assignment.project_id == proj.id))]
        rows = s.execute(select(Answer, Assignment).join(Assignment, Assignment.id == Answer.assignment_id)
                         .where(Assignment.project_id == proj.id).order_by(Answer.assignment_id, Answer.revision)).all()
    by_task_id = {t.id: t for t in tasks}
    latest: dict[int, Done] = {}
    for ans, a in rows:  # ordered by revision: the last one wins
        latest[a.id] = Done(by_task_id[a.task_id], names[a.annotator_id], ans.payload, ans.revision)
    answers: dict[int, list[Done]] = defaultdict(list)
    for d in latest.values():
        answers[d.task.id].append(d)
    return tasks, answers, prompts, texts, assignments


def _merged_ranking_record(prompt: dict, responses: list[str], dones: list[Done]) -> Optional[dict]:
    rankings = [d.payload["ranking"] for d in dones if d.payload["ranking"]]
    merged = agr.merge_rankings(rankings)
    if sum(len(g) for g in merged) < 2:
        return None
    return {**prompt, "responses": responses,
            "ranking": [g[0] if len(g) == 1 else g for g in merged],
            "annotator": dones[0].annotator if len(dones) == 1 else "merged",
            "annotators": sorted(d.annotator for d in dones),
            "agreement": agr.pairwise_agreement(agr.ranking_units(rankings)),
            "none_acceptable": sum(d.payload["none_acceptable"] for d in dones) / len(dones)}


def _records(db: Database, project: str, fmt: str, merge: bool) -> Iterator[tuple[str, dict]]:
    """(where it comes from, record) for each exported record: where names the task and the annotator."""
    if fmt not in FORMATS:
        raise ValueError(f"--format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    kinds = set(KIND_OF_FORMAT.values()) if fmt == "all" else {KIND_OF_FORMAT[fmt]}
    tasks, answers, prompts, texts, _ = _load(db, project)
    for task in tasks:
        if task.is_gold or task.kind not in kinds or not answers.get(task.id):
            continue
        prompt = prompts[task.prompt_id]
        responses = [texts[r] for r in task.response_ids]
        dones = sorted(answers[task.id], key=lambda d: d.annotator)
        where = f"task {task.id} ({task.kind})"
        if task.kind == "rank":
            if merge:
                rec = _merged_ranking_record(prompt, responses, dones)
                if rec:
                    yield f"{where}, annotators {[d.annotator for d in dones]!r}", rec
                continue
            for d in dones:
                if sum(len(g) for g in d.payload["ranking"]) >= 2:
                    yield f"{where}, annotator {d.annotator!r}", {
                        **prompt, "responses": responses, "annotator": d.annotator,
                        "ranking": [g[0] if len(g) == 1 else g for g in d.payload["ranking"]],
                        "none_acceptable": d.payload["none_acceptable"]}
            continue
        for d in dones:
            p, by = d.payload, f"{where}, annotator {d.annotator!r}"
            if task.kind == "compare" and p["better"] is not None:
                yield by, {**prompt, "chosen": responses[p["better"]], "rejected": responses[1 - p["better"]],
                           "margin": p["margin"], "annotator": d.annotator, "strength": p["strength"]}
            elif task.kind == "rate":
                yield by, {**prompt, "response": responses[0], "score": p["score"], "annotator": d.annotator}
            elif task.kind == "edit":
                yield by, {**prompt, "response": responses[0], "edited": p["edited"], "annotator": d.annotator,
                           "revisions": d.revisions}


def export_records(db: Database, project: str, fmt: str = "all", merge: bool = True) -> Iterator[dict]:
    """The project's answers as §3 records; gold tasks are left out (they measure annotators, not models)."""
    for _, rec in _records(db, project, fmt, merge):
        yield rec


class BadRecord(ValueError):
    """A stored record that cannot be written as UTF-8 JSON (it came in before text was checked)."""


def export_lines(db: Database, project: str, fmt: str = "all", merge: bool = True) -> Iterator[str]:
    """The records as JSONL lines; a record with text that is not valid Unicode raises :class:`BadRecord` naming it."""
    for where, rec in _records(db, project, fmt, merge):
        bad = find_bad_text(rec)
        if bad:
            raise BadRecord(f"{where}: {bad[0]}: {bad[1]}; fix or remove that answer")
        yield json.dumps(rec, ensure_ascii=False) + "\n"


def write_export(path: str | Path, db: Database, project: str, fmt: str = "all", merge: bool = True) -> int:
    """Write the export to ``path`` all or nothing; returns the number of records.

    The lines go to a new file beside ``path`` that replaces it only once complete and on disk, so a failure
    half-way (a bad record, a full disk) leaves an existing export as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    n = 0
    try:
        with tmp.open("x", encoding="utf-8") as f:
            for line in export_lines(db, project, fmt, merge):
                f.write(line)
                n += 1
            f.flush()
            os.fsync(f.fileno())
        if path.exists():
            shutil.copymode(path, tmp)  # the replacement keeps the old file's permissions
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return n


# --- stats --------------------------------------------------------------------------------------------

def _gold_score(task: Task, p: dict) -> Optional[float]:
    """How right one answer to a gold task is, in [0, 1]."""
    gold = task.gold or {}
    if task.kind == "rate" and "score" in gold:
        return float(abs(p["score"] - gold["score"]) <= 1)  # within one step of the known rating
    if task.kind == "compare" and "better" in gold:
        return float(p["better"] == gold["better"])
    if task.kind == "rank" and "ranking" in gold:
        want = {k: v for k, v in agr.pair_preferences(gold["ranking"]).items() if v != "tie"}
        got = agr.pair_preferences(p["ranking"])
        return sum(got.get(k) == v for k, v in want.items()) / len(want) if want else None
    return None


def _unit_value(kind: str, p: dict):
    return {"rate": lambda: p["score"], "compare": lambda: "tie" if p["better"] is None else p["better"],
            "edit": lambda: p["edited"]}[kind]()


def agreement_by_kind(tasks: list[Task], answers: dict[int, list[Done]]) -> dict:
    """Pairwise agreement and Krippendorff's alpha per task kind, over tasks with at least 2 answers."""
    out = {}
    for kind in ("rate", "rank", "compare", "edit"):
        multi = [answers[t.id] for t in tasks if t.kind == kind and len(answers.get(t.id, [])) >= 2]
        if kind == "rank":
            units = [u for ds in multi for u in agr.ranking_units([d.payload["ranking"] for d in ds])]
        else:
            units = [[_unit_value(kind, d.payload) for d in ds] for ds in multi]
        entry = {"tasks_with_2plus": len(multi)}
        if kind == "edit":
            # Free text has no exact-agreement scale: mean similarity of two annotators' edits (difflib ratio).
            sims = [difflib.SequenceMatcher(None, a, b).ratio() for u in units for a, b in combinations(u, 2)]
            entry.update(pairwise=sum(sims) / len(sims) if sims else None, alpha=None, metric="text similarity")
        else:
            metric = "interval" if kind == "rate" else "nominal"
            entry.update(pairwise=agr.pairwise_agreement(units), alpha=agr.krippendorff_alpha(units, metric),
                         metric=metric)
        out[kind] = entry
    return out


def stats(db: Database, project: str) -> dict:
    """Progress per task kind and per annotator, gold accuracy per annotator, agreement per kind."""
    tasks, answers, _, _, assignments = _load(db, project)
    kinds: dict[str, dict] = {}
    for t in tasks:
        k = kinds.setdefault(t.kind, {"tasks": 0, "gold": 0, "answered": 0, "answers": 0})
        k["tasks"] += 1
        k["gold"] += t.is_gold
        k["answered"] += bool(answers.get(t.id))
        k["answers"] += len(answers.get(t.id, []))
    people: dict[str, dict] = defaultdict(lambda: {"done": 0, "skipped": 0, "held": 0, "expired": 0, "gold_answered": 0,
                                                    "gold_accuracy": None, "_gold": 0.0})
    for a in assignments:
        people[a["annotator"]][a["status"]] += 1
    for t in tasks:
        for d in answers.get(t.id, []) if t.is_gold else []:
            score = _gold_score(t, d.payload)
            if score is not None:
                people[d.annotator]["gold_answered"] += 1
                people[d.annotator]["_gold"] += score
    annotators = []
    for name in sorted(people):
        row = people[name]
        g = row.pop("_gold")
        if row["gold_answered"]:
            row["gold_accuracy"] = g / row["gold_answered"]
        annotators.append({"annotator": name, **row})
    return {"project": project, "kinds": kinds, "annotators": annotators,
            "agreement": agreement_by_kind(tasks, answers)}
