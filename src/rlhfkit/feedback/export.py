"""Export answers as the record formats of docs/design.md §3, and the project's stats (progress, agreement, gold).

Formats (each record carries the annotator's name):
  pairs    compare answers  → {"prompt", "chosen", "rejected", "margin", "annotator"} (ties are left out);
           arena answers    → {"prompt", "chosen", "rejected", "annotator"} (ties and "both bad" are left out)
  rankings rank answers     → {"prompt", "responses", "ranking", "annotator"}, one per task: several
                              annotators' rankings merged by Bradley–Terry, with their "agreement"
  ratings  rate answers     → {"prompt", "response", "score", "annotator"}
  edits    edit answers     → {"prompt", "response", "edited", "annotator"} (the latest revision)
  thumbs   thumbs answers   → {"prompt", "completion", "label", "annotator"}: the unpaired (KTO) shape, label true
                              for up; the reward model and DPO read it as a rating 1 or 0
  (each record also carries the annotator's ``"comment"`` when they wrote one; a merged ranking ``"comments"``)
  all      every one of the above in one file (``read_records(path, "auto")`` tells them apart)
A file export is written all or nothing (:func:`write_export`).

Quality control (:class:`GoldRule`, :func:`judge_annotators`): annotators whose accuracy on the gold tasks is below
a threshold are left out of an export, or their records carry ``"weight"``: their gold accuracy, which the reward
model's and DPO's losses honour. A merged ranking leaves out the rankings of annotators left out, weighs each
ranking by its annotator's weight in the Bradley–Terry merge, and carries its annotators' mean weight.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import statistics
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime
from itertools import combinations
from pathlib import Path
from typing import Callable, Iterator, Optional

from sqlalchemy import func, select

from rlhfkit.feedback import agreement as agr
from rlhfkit.feedback.checks import find_bad_text
from rlhfkit.feedback.db import (Annotator, Answer, Assignment, Database, Project, Prompt, Resolution, Response, Task,
                                 get_project)

FORMATS = ("all", "pairs", "rankings", "ratings", "edits", "thumbs")
LABELS = ("all", "majority", "resolved")
KINDS_OF_FORMAT = {"pairs": ("compare", "arena"), "rankings": ("rank",), "ratings": ("rate",), "edits": ("edit",),
                   "thumbs": ("thumbs",)}


@dataclass
class Done:
    """One annotator's current (latest) answer to one task."""

    task: Task
    annotator: str
    payload: dict
    revisions: int
    seconds: Optional[float] = None  # working time of the first answer (:func:`working_seconds`)


def working_seconds(events: list[tuple[int, str, datetime, datetime]]) -> dict[int, float]:
    """Seconds an annotator spent on each first answer, from (assignment id, what, when, assigned at) rows of
    one annotator, ``what`` being "first" (a first answer), "revision" or "skip".

    The clock of a task starts when it was handed out or when the annotator's previous answer or skip came in,
    whichever is later: the app hands out several tasks at once, and a task waiting behind others is not worked on.
    """
    out, last = {}, None
    for assignment, what, when, assigned in sorted(events, key=lambda e: e[2]):
        if what == "first":
            start = assigned if last is None else max(assigned, last)
            out[assignment] = max((when - start).total_seconds(), 0.0)
        last = when
    return out


def load_answers(db: Database, project: str) -> tuple[list[Task], dict[int, list[Done]], dict, dict, list[dict]]:
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
        skips = [(a.id, "skip", a.done_at, a.assigned_at, a.annotator_id) for a in s.scalars(
            select(Assignment).where(Assignment.project_id == proj.id, Assignment.status == "skipped",
                                     Assignment.done_at.is_not(None)))]
    by_task_id = {t.id: t for t in tasks}
    events: dict[int, list] = defaultdict(list)  # annotator id → what they did when
    for ans, a in rows:
        events[a.annotator_id].append((a.id, "first" if ans.revision == 1 else "revision", ans.created_at, a.assigned_at))
    for *event, who in skips:
        events[who].append(tuple(event))
    seconds = {k: v for evs in events.values() for k, v in working_seconds(evs).items()}
    latest: dict[int, Done] = {}
    for ans, a in rows:  # ordered by revision: the last one wins
        latest[a.id] = Done(by_task_id[a.task_id], names[a.annotator_id], ans.payload, ans.revision, seconds.get(a.id))
    answers: dict[int, list[Done]] = defaultdict(list)
    for d in latest.values():
        answers[d.task.id].append(d)
    return tasks, answers, prompts, texts, assignments


def _weighted(rec: dict, weight: float, comment: str = "") -> dict:
    """``rec`` with its ``weight`` when that is not 1, and the annotator's comment when there is one."""
    if comment:
        rec = {**rec, "comment": comment}
    return rec if weight == 1.0 else {**rec, "weight": round(weight, 4)}


def _merged_ranking_record(prompt: dict, responses: list[str], dones: list[Done], weights: dict[str, float]) -> Optional[dict]:
    ranked = [d for d in dones if d.payload["ranking"]]
    rankings = [d.payload["ranking"] for d in ranked]
    merged = agr.merge_rankings(rankings, weights=[weights.get(d.annotator, 1.0) for d in ranked])
    if sum(len(g) for g in merged) < 2:
        return None
    mean_weight = sum(weights.get(d.annotator, 1.0) for d in dones) / len(dones)
    rec = {**prompt, "responses": responses,
           "ranking": [g[0] if len(g) == 1 else g for g in merged],
           "annotator": dones[0].annotator if len(dones) == 1 else "merged",
           "annotators": sorted(d.annotator for d in dones),
           "agreement": agr.pairwise_agreement(agr.ranking_units(rankings)),
           "none_acceptable": sum(d.payload["none_acceptable"] for d in dones) / len(dones)}
    comments = [{"annotator": d.annotator, "comment": d.payload["comment"]} for d in dones if d.payload.get("comment")]
    if comments:
        rec["comments"] = comments
    return _weighted(rec, mean_weight)


def _answer_record(kind: str, prompt: dict, responses: list[str], name: str, p: dict, weight: float,
                   revisions: int = 1) -> Optional[dict]:
    """One answer (a payload in task positions) as its §3 record; None for a tied comparison or an empty ranking."""
    c = p.get("comment", "")
    if kind == "compare":
        if p["better"] is None:
            return None
        return _weighted({**prompt, "chosen": responses[p["better"]], "rejected": responses[1 - p["better"]],
                          "margin": p["margin"], "annotator": name, "strength": p["strength"]}, weight, c)
    if kind == "arena":
        if p["better"] is None:
            return None
        return _weighted({**prompt, "chosen": responses[p["better"]], "rejected": responses[1 - p["better"]],
                          "annotator": name}, weight, c)
    if kind == "rate":
        return _weighted({**prompt, "response": responses[0], "score": p["score"], "annotator": name}, weight, c)
    if kind == "edit":
        return _weighted({**prompt, "response": responses[0], "edited": p["edited"], "annotator": name,
                          "revisions": revisions}, weight, c)
    if kind == "thumbs":
        return _weighted({**prompt, "completion": responses[0], "label": p["thumb"] == "up", "annotator": name},
                         weight, c)
    if sum(len(g) for g in p["ranking"]) < 2:
        return None
    return _weighted({**prompt, "responses": responses, "annotator": name,
                      "ranking": [g[0] if len(g) == 1 else g for g in p["ranking"]],
                      "none_acceptable": p["none_acceptable"]}, weight, c)


def _majority(kind: str, dones: list[Done]) -> Optional[dict]:
    """The answer most of a task's annotators gave, as a payload: a comparison's most chosen side (None when the
    top is shared or is "tie"; its margin the mean of that side's voters), a rating's median score."""
    if kind == "rate":
        return {"score": statistics.median(d.payload["score"] for d in dones)}
    if kind == "thumbs":
        (top, n), *rest = Counter(d.payload["thumb"] for d in dones).most_common()
        return None if rest and rest[0][1] == n else {"thumb": top}
    votes = Counter(d.payload["better"] for d in dones)
    (top, n), *rest = votes.most_common()
    if top is None or (rest and rest[0][1] == n):
        return None
    if kind == "arena":
        return {"better": top, "choice": "ab"[top]}
    side = [d.payload for d in dones if d.payload["better"] == top]
    return {"better": top, "margin": sum(p["margin"] for p in side) / len(side),
            "strength": Counter(p["strength"] for p in side).most_common(1)[0][0]}


def _resolutions(db: Database, project: str) -> dict[int, tuple[str, dict]]:
    """task id → (reviewer name, payload) of each task's latest resolution."""
    with db.tx() as s:
        rows = s.execute(select(Resolution.task_id, Annotator.name, Resolution.payload)
                         .join(Annotator, Annotator.id == Resolution.reviewer_id).join(Task, Task.id == Resolution.task_id)
                         .join(Project, Project.id == Task.project_id).where(Project.name == project)
                         .order_by(Resolution.id)).all()
    return {task_id: (name, payload) for task_id, name, payload in rows}


def _records(db: Database, project: str, fmt: str, merge: bool, weights: Optional[dict[str, float]] = None,
             labels: str = "all") -> Iterator[tuple[str, dict]]:
    """(where it comes from, record) for each exported record: where names the task and the annotator.

    ``weights``: annotator → the weight of their records (0: left out; missing: 1). ``labels``: "all" (every
    annotator's answer), "majority" (one record per task of several answers: the most chosen side of a comparison,
    the median rating, the merged ranking; edits all, free text has no majority) or "resolved" (a reviewer's
    resolution where a task has one, every answer elsewhere)."""
    if fmt not in FORMATS:
        raise ValueError(f"--format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    if labels not in LABELS:
        raise ValueError(f"--labels: expected one of {', '.join(LABELS)}, got {labels!r}")
    kinds = {k for ks in KINDS_OF_FORMAT.values() for k in ks} if fmt == "all" else set(KINDS_OF_FORMAT[fmt])
    weights = weights or {}
    tasks, answers, prompts, texts, _ = load_answers(db, project)
    resolved = _resolutions(db, project) if labels == "resolved" else {}
    for task in tasks:
        if task.is_gold or task.kind not in kinds:
            continue
        dones = sorted((d for d in answers.get(task.id, []) if weights.get(d.annotator, 1.0) > 0), key=lambda d: d.annotator)
        prompt = prompts[task.prompt_id]
        responses = [texts[r] for r in task.response_ids]
        where = f"task {task.id} ({task.kind})"
        if task.id in resolved:  # the reviewer's label stands for the task
            reviewer, payload = resolved[task.id]
            rec = _answer_record(task.kind, prompt, responses, f"review:{reviewer}", payload, 1.0)
            if rec:
                rec["resolved_from"] = sorted(d.annotator for d in answers.get(task.id, []))
                yield f"{where}, resolved by {reviewer!r}", rec
            continue
        if not dones:
            continue
        if task.kind == "rank" and (merge or labels == "majority"):
            rec = _merged_ranking_record(prompt, responses, dones, weights)
            if rec:
                yield f"{where}, annotators {[d.annotator for d in dones]!r}", rec
            continue
        if labels == "majority" and task.kind in ("rate", "compare", "thumbs", "arena") and len(dones) >= 2:
            payload = _majority(task.kind, dones)
            if payload is not None:
                mean_weight = sum(weights.get(d.annotator, 1.0) for d in dones) / len(dones)
                rec = _answer_record(task.kind, prompt, responses, "majority", payload, mean_weight)
                if rec:
                    yield f"{where}, annotators {[d.annotator for d in dones]!r}", {
                        **rec, "annotators": [d.annotator for d in dones]}
            continue
        for d in dones:
            rec = _answer_record(task.kind, prompt, responses, d.annotator, d.payload, weights.get(d.annotator, 1.0),
                                 d.revisions)
            if rec:
                yield f"{where}, annotator {d.annotator!r}", rec


def export_records(db: Database, project: str, fmt: str = "all", merge: bool = True,
                   weights: Optional[dict[str, float]] = None, labels: str = "all") -> Iterator[dict]:
    """The project's answers as §3 records; gold tasks are left out (they measure annotators, not models).
    ``weights``: :func:`judge_annotators`' weights (annotators at 0 left out, others' records weighted);
    ``labels``: all | majority | resolved (:func:`_records`)."""
    for _, rec in _records(db, project, fmt, merge, weights, labels):
        yield rec


class BadRecord(ValueError):
    """A stored record that cannot be written as UTF-8 JSON (it came in before text was checked)."""


def export_lines(db: Database, project: str, fmt: str = "all", merge: bool = True,
                 weights: Optional[dict[str, float]] = None, labels: str = "all") -> Iterator[str]:
    """The records as JSONL lines; a record with text that is not valid Unicode raises :class:`BadRecord` naming it."""
    for where, rec in _records(db, project, fmt, merge, weights, labels):
        bad = find_bad_text(rec)
        if bad:
            raise BadRecord(f"{where}: {bad[0]}: {bad[1]}; fix or remove that answer")
        yield json.dumps(rec, ensure_ascii=False) + "\n"


def write_export(path: str | Path, db: Database, project: str, fmt: str = "all", merge: bool = True,
                 weights: Optional[dict[str, float]] = None, labels: str = "all") -> int:
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
            for line in export_lines(db, project, fmt, merge, weights, labels):
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
    if task.kind == "thumbs" and "thumb" in gold:
        return float(p["thumb"] == gold["thumb"])
    if task.kind == "compare" and "better" in gold:
        return float(p["better"] == gold["better"])
    if task.kind == "rank" and "ranking" in gold:
        want = {k: v for k, v in agr.pair_preferences(gold["ranking"]).items() if v != "tie"}
        got = agr.pair_preferences(p["ranking"])
        return sum(got.get(k) == v for k, v in want.items()) / len(want) if want else None
    return None




def agreement_by_kind(tasks: list[Task], answers: dict[int, list[Done]]) -> dict:
    """Pairwise agreement and Krippendorff's alpha per task kind, over tasks with at least 2 answers."""
    out = {}
    for kind in ("rate", "rank", "compare", "edit", "thumbs", "arena"):
        multi = [answers[t.id] for t in tasks if t.kind == kind and len(answers.get(t.id, [])) >= 2]
        if kind == "rank":
            units = [u for ds in multi for u in agr.ranking_units([d.payload["ranking"] for d in ds])]
        else:
            units = [[agr.unit_value(kind, d.payload) for d in ds] for ds in multi]
        entry = {"tasks_with_2plus": len(multi)}
        if kind == "edit":
            # Free text has no exact-agreement scale: mean similarity of two annotators' edits (difflib ratio).
            sims = [v for ds in multi for a, b in combinations(ds, 2) for v in agr.answer_agreement(kind, a.payload, b.payload)]
            entry.update(pairwise=sum(sims) / len(sims) if sims else None, alpha=None, metric="text similarity")
        else:
            metric = "interval" if kind == "rate" else "nominal"
            entry.update(pairwise=agr.pairwise_agreement(units), alpha=agr.krippendorff_alpha(units, metric),
                         metric=metric)
        out[kind] = entry
    return out


def agreement_by_annotator(tasks: list[Task], answers: dict[int, list[Done]]) -> dict[str, tuple[int, Optional[float]]]:
    """annotator → (units compared with someone else's answer, the share that agreed), over tasks with 2+ answers."""
    got: dict[str, list[float]] = defaultdict(list)
    for t in tasks:
        for a, b in combinations(answers.get(t.id, []), 2):
            values = agr.answer_agreement(t.kind, a.payload, b.payload)
            got[a.annotator].extend(values)
            got[b.annotator].extend(values)
    return {name: (len(v), sum(v) / len(v) if v else None) for name, v in got.items()}


def gold_accuracy(tasks: list[Task], answers: dict[int, list[Done]]) -> dict[str, tuple[int, float]]:
    """annotator → (gold tasks answered that have a known answer to score, mean score over them)."""
    scores: dict[str, list[float]] = defaultdict(list)
    for t in tasks:
        for d in answers.get(t.id, []) if t.is_gold else []:
            score = _gold_score(t, d.payload)
            if score is not None:
                scores[d.annotator].append(score)
    return {name: (len(v), sum(v) / len(v)) for name, v in scores.items()}


QC_ACTIONS = ("drop", "weight")


@dataclass(frozen=True)
class GoldRule:
    """Quality control on export: annotators whose gold accuracy is below ``min_accuracy`` over at least
    ``min_answers`` gold tasks are left out (``drop``) or have their records weigh their gold accuracy (``weight``).
    Annotators with fewer gold answers cannot be judged and are kept as they are."""

    min_accuracy: float
    action: str = "drop"
    min_answers: int = 3

    def __post_init__(self):
        if not 0.0 <= self.min_accuracy <= 1.0:
            raise ValueError(f"--min-gold-accuracy: expected a number from 0 to 1, got {self.min_accuracy!r}")
        if self.action not in QC_ACTIONS:
            raise ValueError(f"--low-gold: expected one of {', '.join(QC_ACTIONS)}, got {self.action!r}")
        if self.min_answers < 1:
            raise ValueError(f"--min-gold-answers: expected 1 or more, got {self.min_answers!r}")


@dataclass
class Decision:
    """What an export does with one annotator's records, and why."""

    annotator: str
    gold_answered: int
    gold_accuracy: Optional[float]
    weight: float  # 1: kept as they are; 0: left out; else their records' weight
    why: str


def judge_annotators(db: Database, project: str, rule: GoldRule) -> list[Decision]:
    """One decision per annotator with an answer in ``project``; their ``weight`` goes to :func:`write_export`."""
    tasks, answers, _, _, _ = load_answers(db, project)
    gold = gold_accuracy(tasks, answers)
    out = []
    for name in sorted({d.annotator for ds in answers.values() for d in ds}):
        n, acc = gold.get(name, (0, None))
        if n < rule.min_answers:
            weight, why = 1.0, f"{n} gold task(s) answered, fewer than {rule.min_answers}: too few to judge, kept"
        elif acc >= rule.min_accuracy:
            weight, why = 1.0, f"gold accuracy {acc:.2f} on {n} gold tasks, at least {rule.min_accuracy:.2f}: kept"
        elif rule.action == "drop" or acc == 0.0:
            weight, why = 0.0, f"gold accuracy {acc:.2f} on {n} gold tasks, below {rule.min_accuracy:.2f}: left out"
        else:
            weight, why = acc, (f"gold accuracy {acc:.2f} on {n} gold tasks, below {rule.min_accuracy:.2f}: "
                                f"records weigh {acc:.2f}")
        out.append(Decision(name, n, acc, weight, why))
    return out


def stats(db: Database, project: str, fast_seconds: float = 2.0) -> dict:
    """Progress per task kind and per annotator, gold accuracy per annotator, agreement per kind and per annotator,
    each annotator's median working seconds per task and their answers faster than ``fast_seconds``."""
    tasks, answers, _, _, assignments = load_answers(db, project)
    kinds: dict[str, dict] = {}
    for t in tasks:
        k = kinds.setdefault(t.kind, {"tasks": 0, "gold": 0, "answered": 0, "answers": 0})
        k["tasks"] += 1
        k["gold"] += t.is_gold
        k["answered"] += bool(answers.get(t.id))
        k["answers"] += len(answers.get(t.id, []))
    people: dict[str, dict] = defaultdict(lambda: {"done": 0, "skipped": 0, "held": 0, "expired": 0})
    for a in assignments:
        people[a["annotator"]][a["status"]] += 1
    gold, agree = gold_accuracy(tasks, answers), agreement_by_annotator(tasks, answers)
    seconds: dict[str, list[float]] = defaultdict(list)
    for ds in answers.values():
        for d in ds:
            if d.seconds is not None:
                seconds[d.annotator].append(d.seconds)
    annotators = []
    for name in sorted(people):
        times = sorted(seconds.get(name, []))
        n_gold, acc = gold.get(name, (0, None))
        n_agree, agreement = agree.get(name, (0, None))
        annotators.append({"annotator": name, **people[name], "gold_answered": n_gold, "gold_accuracy": acc,
                           "agreement_units": n_agree, "agreement": agreement,
                           "median_seconds": statistics.median(times) if times else None,
                           "fast_answers": sum(t < fast_seconds for t in times)})
    return {"project": project, "kinds": kinds, "annotators": annotators, "fast_seconds": fast_seconds,
            "agreement": agreement_by_kind(tasks, answers)}


def answer_progress(db: Database, project: str) -> tuple[int, int]:
    """(answers given, answers wanted: non-gold tasks × annotators per task) of a project; an answer's revisions
    count once and gold tasks (every annotator's) not at all."""
    with db.tx() as s:
        proj = get_project(s, project)
        if proj is None:
            raise ValueError(f"--project: no project named {project!r} in this database")
        tasks = s.scalar(select(func.count()).select_from(Task).where(Task.project_id == proj.id, ~Task.is_gold))
        done = s.scalar(select(func.count(func.distinct(Assignment.id))).select_from(Assignment)
                        .join(Answer, Answer.assignment_id == Assignment.id).join(Task, Task.id == Assignment.task_id)
                        .where(Assignment.project_id == proj.id, ~Task.is_gold))
        return int(done or 0), int(tasks or 0) * proj.annotators_per_task


def wait_for_answers(db: Database, project: str, poll_seconds: float, say: Callable[[str], None], target: int = 0) -> None:
    """Poll until every task has its annotators' answers (or ``target`` answers are in)."""
    while True:
        done, wanted = answer_progress(db, project)
        wanted = target or wanted
        say(f"project {project}: {done}/{wanted} answers")
        if done >= wanted:
            return
        time.sleep(poll_seconds)
