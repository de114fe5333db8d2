"""What an annotator can do, as plain functions on a database session: claim tasks, answer, skip, go back.

The HTTP layer (app.py) only authenticates and translates :class:`ApiError` into status codes.
Answers are stored in terms of the task's response positions (0..len-1), whatever order they were shown in.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Optional

from sqlalchemy import exists, func, select, update
from sqlalchemy.orm import Session

from rlhfkit.feedback.access import may_work_on
from rlhfkit.feedback.checks import MAX_ID, is_blank
from rlhfkit.feedback.db import Annotator, Answer, Assignment, Project, Prompt, Response, Task, now

RATING_LABELS = {1: "Very poor", 2: "Poor", 3: "Somewhat poor", 4: "Acceptable", 5: "Somewhat good", 6: "Good",
                 7: "Excellent"}
# Compare strength → margin on the reward model's preference loss (export writes it as "margin").
STRENGTH_MARGIN = {"slightly": 1.0, "clearly": 2.0, "much": 3.0}
# An arena answer, in the order shown: A better, B better, equally good, or neither is acceptable.
ARENA_CHOICES = ("a", "b", "tie", "both_bad")
MAX_TEXT = 100_000
_shuffle = random.SystemRandom().shuffle


class ApiError(Exception):
    """A request problem: HTTP status, the field at fault (or "" for none) and a sentence for people."""

    def __init__(self, status: int, field: str, problem: str):
        self.status, self.field, self.problem = status, field, problem
        super().__init__(f"{field}: {problem}" if field else problem)


# --- claiming ---------------------------------------------------------------------------------------

def held(s: Session, project: Project, ann: Annotator) -> list[Assignment]:
    return list(s.scalars(select(Assignment).where(Assignment.annotator_id == ann.id, Assignment.project_id == project.id,
                                                   Assignment.status == "held").order_by(Assignment.id)))


def claim(s: Session, project: Project, ann: Annotator, n: int = 1) -> list[Assignment]:
    """The annotator's held assignments, topped up with new ones to ``min(n, project.max_held)``."""
    # Serialise assigners per project so a task never gets more than N annotators, nor an annotator more
    # than the cap (PostgreSQL row lock; SQLite's BEGIN IMMEDIATE already serialises every writer).
    s.execute(select(Project.id).where(Project.id == project.id).with_for_update())
    release_stale(s, project)
    mine = held(s, project, ann)
    want = min(n, project.max_held) - len(mine)
    if want <= 0:
        return mine
    already = exists().where(Assignment.task_id == Task.id, Assignment.annotator_id == ann.id)
    tasks = s.scalars(select(Task).where(Task.project_id == project.id, Task.is_open, ~already)
                      .order_by(Task.order_key).limit(want)).all()
    for task in tasks:
        order = list(range(len(task.response_ids)))
        _shuffle(order)  # shown in random order (position bias); the order is recorded
        a = Assignment(task_id=task.id, annotator_id=ann.id, project_id=project.id, status="held", display_order=order)
        s.add(a)
        task.n_active += 1
        set_open(task, project, task.is_gold or task.n_active < project.annotators_per_task)
        mine.append(a)
    s.flush()
    return mine


def release_stale(s: Session, project: Project) -> None:
    """Hand back tasks held longer than the project's hold time (their annotator left); the owner may still answer."""
    if project.hold_minutes <= 0:
        return
    cutoff = now() - timedelta(minutes=project.hold_minutes)
    for a in s.scalars(select(Assignment).where(Assignment.project_id == project.id, Assignment.status == "held",
                                                Assignment.assigned_at < cutoff)):
        a.status = "expired"
        task = s.get(Task, a.task_id)
        task.n_active -= 1
        set_open(task, project, True)


def skip(s: Session, a: Assignment, project: Project) -> None:
    """Give a held task back: someone else may take it; this annotator will not see it again."""
    if a.status != "held":
        raise ApiError(409, "assignment", f"is {a.status}; only a held task can be skipped")
    a.status = "skipped"
    a.done_at = now()  # when it left the annotator's hands: the next task's working time starts here
    task = s.get(Task, a.task_id)
    task.n_active -= 1
    set_open(task, project, True)


def set_open(task: Task, project: Project, value: bool) -> None:
    """Open or close a task to new annotators, keeping the project's count of open tasks in step."""
    if task.is_open != value:
        project.open_tasks += 1 if value else -1
        task.is_open = value


def check_access(s: Session, project: Project, ann: Annotator) -> None:
    if not may_work_on(s, project, ann):
        raise ApiError(403, "project", f"{project.name!r} is open to its members only; ask the admin to add you")


def own_assignment(s: Session, assignment_id: int, ann: Annotator) -> Assignment:
    # An id past the column's range names no row; asking the database would overflow its integer type.
    a = s.get(Assignment, assignment_id) if 1 <= assignment_id <= MAX_ID else None
    if a is None:
        raise ApiError(404, "assignment", f"no assignment {assignment_id}")
    if a.annotator_id != ann.id:
        raise ApiError(403, "assignment", "belongs to another annotator")
    check_access(s, s.get(Project, a.project_id), ann)  # removed from the project: its held tasks are closed too
    return a


# --- answers ----------------------------------------------------------------------------------------

def _comment(body: dict) -> str:
    c = body.get("comment", "")
    if c is None:
        return ""
    if not isinstance(c, str):
        raise ApiError(422, "comment", f"expected a string, got {type(c).__name__}")
    if len(c) > MAX_TEXT:
        raise ApiError(422, "comment", f"longer than {MAX_TEXT} characters")
    return c


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def normalise_answer(kind: str, body: dict, n_responses: int, display_order: list[int]) -> dict:
    """Check a submitted answer of ``kind``; return it in task positions. Raises ApiError(422, field, ...)."""
    if kind == "rate":
        score = body.get("score")
        if score is None:
            raise ApiError(422, "score", "missing (an integer 1..7)")
        if not _int(score) or not 1 <= score <= 7:
            raise ApiError(422, "score", f"expected an integer 1..7, got {score!r}")
        return {"score": score, "comment": _comment(body)}
    if kind == "compare":
        choice = body.get("choice")
        if choice not in ("a", "b", "tie"):
            raise ApiError(422, "choice", f"expected a, b or tie, got {choice!r}")
        strength = body.get("strength")
        if choice == "tie":
            strength, better, margin = None, None, 0.0
        else:
            if strength not in STRENGTH_MARGIN:
                raise ApiError(422, "strength", f"expected slightly, clearly or much, got {strength!r}")
            better = display_order[0 if choice == "a" else 1]
            margin = STRENGTH_MARGIN[strength]
        return {"choice": choice, "strength": strength, "better": better, "margin": margin,
                "shown": display_order, "comment": _comment(body)}
    if kind == "rank":
        none_ok = body.get("none_acceptable", False)
        if not isinstance(none_ok, bool):
            raise ApiError(422, "none_acceptable", f"expected true or false, got {none_ok!r}")
        ranking = body.get("ranking", [])
        if not isinstance(ranking, list):
            raise ApiError(422, "ranking", "expected a list of response ids (best first; a list of ids is a tie)")
        groups, seen = [], set()
        for i, g in enumerate(ranking):
            g = g if isinstance(g, list) else [g]
            if not g:
                raise ApiError(422, f"ranking[{i}]", "empty tie group")
            for j in g:
                if not _int(j) or not 0 <= j < n_responses:
                    raise ApiError(422, f"ranking[{i}]", f"expected a response id 0..{n_responses - 1}, got {j!r}")
                if j in seen:
                    raise ApiError(422, f"ranking[{i}]", f"response {j} appears twice")
                seen.add(j)
            groups.append(sorted(g))
        if len(seen) < 2 and not none_ok:
            raise ApiError(422, "ranking", "rank at least 2 responses (or set none_acceptable)")
        return {"ranking": groups, "none_acceptable": none_ok, "partial": len(seen) < n_responses,
                "shown": display_order, "comment": _comment(body)}
    if kind == "arena":  # two models' answers, blind: which is better, a tie, or both bad
        choice = body.get("choice")
        if choice not in ARENA_CHOICES:
            raise ApiError(422, "choice", f"expected a, b, tie or both_bad, got {choice!r}")
        better = display_order[0 if choice == "a" else 1] if choice in ("a", "b") else None
        return {"choice": choice, "better": better, "shown": display_order, "comment": _comment(body)}
    if kind == "thumbs":
        thumb = body.get("thumb")
        if thumb not in ("up", "down"):
            raise ApiError(422, "thumb", f"expected up or down, got {thumb!r}")
        return {"thumb": thumb, "comment": _comment(body)}
    if kind == "edit":
        edited = body.get("edited")
        if not isinstance(edited, str):
            raise ApiError(422, "edited", f"expected a string, got {type(edited).__name__ if edited is not None else 'nothing'}")
        if is_blank(edited):
            # Zero-width and other invisible characters count as empty: such an "edit" would train on nothing.
            raise ApiError(422, "edited", "empty (only spaces or invisible characters); keep the response text if "
                                          "it needs no change")
        if len(edited) > MAX_TEXT:
            raise ApiError(422, "edited", f"longer than {MAX_TEXT} characters")
        return {"edited": edited, "comment": _comment(body)}
    raise ApiError(500, "kind", f"unknown task kind {kind!r}")


def check_submission_id(body: dict) -> str:
    sid = body.get("submission_id")
    if not isinstance(sid, str) or not 8 <= len(sid) <= 100:
        raise ApiError(422, "submission_id", "expected a client-made unique string of 8..100 characters (e.g. a UUID)")
    return sid


@dataclass
class Submitted:
    answer: Answer
    duplicate: bool  # True when this submission_id was already stored: nothing new was written


def find_submission(s: Session, sid: str, ann: Annotator, assignment_id: int) -> Optional[Submitted]:
    """A stored answer with this submission id (a retry), or None. Another's or another task's is a 409."""
    prev = s.scalar(select(Answer).where(Answer.submission_id == sid))
    if prev is None:
        return None
    a = s.get(Assignment, prev.assignment_id)
    if a.annotator_id != ann.id or a.id != assignment_id:
        raise ApiError(409, "submission_id", "already used for another answer; make a new id for each answer")
    return Submitted(prev, duplicate=True)


def submit(s: Session, assignment_id: int, ann: Annotator, body: dict) -> Submitted:
    """Store an answer (a new revision if the task was answered before). A retried submission_id is a no-op."""
    if not isinstance(body, dict):
        raise ApiError(422, "body", "expected a JSON object")
    sid = check_submission_id(body)
    a = own_assignment(s, assignment_id, ann)
    prev = find_submission(s, sid, ann, assignment_id)
    if prev is not None:
        return prev
    if a.status == "skipped":
        raise ApiError(409, "assignment", "was skipped; it cannot be answered")
    task = s.get(Task, a.task_id)
    payload = normalise_answer(task.kind, body, len(task.response_ids), a.display_order)
    if a.status == "expired":  # its hold ran out but the answer is still wanted: count it again
        project = s.get(Project, a.project_id)
        task.n_active += 1
        set_open(task, project, task.is_gold or task.n_active < project.annotators_per_task)
    revision = (s.scalar(select(func.count()).select_from(Answer).where(Answer.assignment_id == a.id)) or 0) + 1
    ans = Answer(assignment_id=a.id, submission_id=sid, revision=revision, payload=payload)
    s.add(ans)
    a.status = "done"
    a.done_at = now()
    s.flush()
    return Submitted(ans, duplicate=False)


def current_answer(s: Session, a: Assignment) -> Optional[Answer]:
    return s.scalar(select(Answer).where(Answer.assignment_id == a.id).order_by(Answer.revision.desc()).limit(1))


def last_done(s: Session, project: Project, ann: Annotator) -> Optional[Assignment]:
    """The assignment this annotator answered most recently (to go back and change it)."""
    return s.scalar(select(Assignment).join(Answer, Answer.assignment_id == Assignment.id)
                    .where(Assignment.annotator_id == ann.id, Assignment.project_id == project.id)
                    .order_by(Answer.id.desc()).limit(1))


# --- what the annotator sees ------------------------------------------------------------------------

def task_view(s: Session, a: Assignment) -> dict:
    """One task as shown to its annotator: no gold, no model names, no one else's answers."""
    task = s.get(Task, a.task_id)
    prompt = s.get(Prompt, task.prompt_id)
    texts = {r.id: r.text for r in s.scalars(select(Response).where(Response.id.in_(task.response_ids)))}
    ans = current_answer(s, a)
    view = {"assignment_id": a.id, "kind": task.kind, "status": a.status, "prompt": prompt.text,
            "responses": [{"id": pos, "text": texts[task.response_ids[pos]]} for pos in a.display_order],
            "answer": None, "revision": 0}
    if "messages" in prompt.record:
        view["messages"] = prompt.record["messages"]
    if prompt.record.get("audio"):
        view["audio"] = True  # the page plays GET /api/assignments/{id}/audio
    if ans is not None:
        view["answer"], view["revision"] = ans.payload, ans.revision
    return view


def progress(s: Session, project: Project, ann: Annotator) -> dict:
    rows = dict(s.execute(select(Assignment.status, func.count()).where(Assignment.annotator_id == ann.id,
                                                                      Assignment.project_id == project.id)
                          .group_by(Assignment.status)).all())
    # Open tasks minus the open ones this annotator already has (cheaper than a NOT EXISTS per open task).
    mine_open = s.scalar(select(func.count()).select_from(Assignment).join(Task, Task.id == Assignment.task_id)
                         .where(Assignment.annotator_id == ann.id, Assignment.project_id == project.id, Task.is_open))
    available = project.open_tasks - mine_open
    done = rows.get("done", 0)
    return {"done": done, "skipped": rows.get("skipped", 0), "held": rows.get("held", 0), "available": available or 0}


def refresh_open(s: Session, project: Project) -> None:
    """Recompute which tasks want annotators and how many (after an import or a change of N)."""
    s.execute(update(Task).where(Task.project_id == project.id)
              .values(is_open=Task.is_gold | (Task.n_active < project.annotators_per_task)))
    project.open_tasks = s.scalar(select(func.count()).select_from(Task)
                                  .where(Task.project_id == project.id, Task.is_open))
