"""Review: a reviewer sees the tasks whose annotators disagree most and resolves them.

Disagreement is measured as the stats measure agreement (:func:`agreement.answer_agreement`): over every pair of
a task's answers, the share of compared units that agree (a choice or a rating the same, a ranking per response
pair, an edit by text similarity). The review queue holds the non-gold tasks with two or more answers whose
agreement is below ``below`` (1.0: any disagreement), unresolved first, then the least agreed first.

A resolution is the reviewer's own answer to the task, checked as an annotator's answer is (in task positions:
the reviewer sees the responses in the task's own order). It is stored in its own table beside the annotators'
answers, which stay as they were; a task resolved again keeps both, and the latest is its label
(``rlhf feedback export --labels resolved``).
"""

from __future__ import annotations

from typing import Optional

from sqlalchemy import select
from sqlalchemy.orm import Session

from rlhfkit.feedback import agreement as agr
from rlhfkit.feedback.annotate import RATING_LABELS, ApiError, normalise_answer
from rlhfkit.feedback.db import Annotator, Answer, Assignment, Project, Prompt, Resolution, Response, Task


def task_agreement(kind: str, payloads: list[dict]) -> Optional[float]:
    """The share of compared units that agree over every pair of the answers; None with fewer than 2."""
    values = [v for i, a in enumerate(payloads) for b in payloads[i + 1:] for v in agr.answer_agreement(kind, a, b)]
    return sum(values) / len(values) if values else None


def describe(kind: str, payload: dict) -> str:
    """An answer in words, responses named by their place in the task's own order (A/B, Response 1..K)."""
    if kind == "rate":
        return f"{payload['score']} · {RATING_LABELS[payload['score']]}"
    if kind == "thumbs":
        return f"thumbs {payload['thumb']}"
    if kind == "arena":
        return {"tie": "tie", "both_bad": "both bad"}.get(payload["choice"]) or f"{'AB'[payload['better']]} better"
    if kind == "compare":
        if payload["better"] is None:
            return "tie"
        return f"{'AB'[payload['better']]} {payload['strength']} better"
    if kind == "rank":
        places = [" = ".join(f"Response {j + 1}" for j in g) for g in payload["ranking"]]
        text = ", ".join(f"#{p + 1} {names}" for p, names in enumerate(places)) or "nothing ranked"
        return text + (" · none acceptable" if payload["none_acceptable"] else "")
    return payload["edited"]


def latest_answers(s: Session, task_ids: list[int]) -> dict[int, list[tuple[str, dict]]]:
    """task id → (annotator name, latest answer payload) of each annotator who answered it."""
    rows = s.execute(select(Assignment.task_id, Annotator.name, Answer.payload)
                     .join(Answer, Answer.assignment_id == Assignment.id)
                     .join(Annotator, Annotator.id == Assignment.annotator_id)
                     .where(Assignment.task_id.in_(task_ids)).order_by(Assignment.id, Answer.revision)).all()
    latest: dict[tuple[int, str], dict] = {}
    for task_id, name, payload in rows:  # ordered by revision: the last one wins
        latest[(task_id, name)] = payload
    out: dict[int, list[tuple[str, dict]]] = {}
    for (task_id, name), payload in sorted(latest.items(), key=lambda kv: kv[0]):
        out.setdefault(task_id, []).append((name, payload))
    return out


def latest_resolutions(s: Session, task_ids: list[int]) -> dict[int, tuple[str, Resolution]]:
    """task id → (reviewer name, latest resolution)."""
    rows = s.execute(select(Resolution, Annotator.name).join(Annotator, Annotator.id == Resolution.reviewer_id)
                     .where(Resolution.task_id.in_(task_ids)).order_by(Resolution.id)).all()
    return {r.task_id: (name, r) for r, name in rows}


def queue(s: Session, project: Project, limit: int = 20, below: float = 1.0) -> list[dict]:
    """The review queue: up to ``limit`` task views, unresolved first, then the least agreed first."""
    tasks = list(s.scalars(select(Task).where(Task.project_id == project.id, ~Task.is_gold)))
    answers = latest_answers(s, [t.id for t in tasks])
    scored = []
    for t in tasks:
        given = answers.get(t.id, [])
        agreement = task_agreement(t.kind, [p for _, p in given]) if len(given) >= 2 else None
        if agreement is not None and agreement < below:
            scored.append((t, agreement, given))
    resolved = latest_resolutions(s, [t.id for t, _, _ in scored])
    scored.sort(key=lambda x: (x[0].id in resolved, x[1], x[0].id))
    return [view(s, t, agreement, given, resolved.get(t.id)) for t, agreement, given in scored[:limit]]


def view(s: Session, task: Task, agreement: float, given: list[tuple[str, dict]],
         resolution: Optional[tuple[str, Resolution]]) -> dict:
    """One task as a reviewer sees it: the responses in the task's order, every answer in words, the resolution."""
    prompt = s.get(Prompt, task.prompt_id)
    texts = {r.id: r.text for r in s.scalars(select(Response).where(Response.id.in_(task.response_ids)))}
    out = {"task_id": task.id, "kind": task.kind, "prompt": prompt.text, "agreement": agreement,
           "responses": [{"id": pos, "text": texts[rid]} for pos, rid in enumerate(task.response_ids)],
           "answers": [{"annotator": name, "answer": p, "says": describe(task.kind, p), "comment": p.get("comment", "")}
                       for name, p in given],
           "resolution": None}
    if "messages" in prompt.record:
        out["messages"] = prompt.record["messages"]
    if resolution is not None:
        name, r = resolution
        out["resolution"] = {"reviewer": name, "answer": r.payload, "says": describe(task.kind, r.payload)}
    return out


def resolve(s: Session, task_id: int, reviewer: Annotator, body: dict) -> Resolution:
    """Store the reviewer's answer to a task (checked as an annotator's, in task positions)."""
    task = s.get(Task, task_id)
    if task is None:
        raise ApiError(404, "task", f"no task {task_id}")
    n = len(task.response_ids)
    payload = normalise_answer(task.kind, body, n, list(range(n)))
    res = Resolution(task_id=task.id, reviewer_id=reviewer.id, payload=payload)
    s.add(res)
    s.flush()
    return res
