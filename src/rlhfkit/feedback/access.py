"""Who may work on which project: everyone when the project is open to all, else its members only.

A project is open to all until it gets its first member (so projects made before membership existed, and new
ones made without a member list, work as they always did). Removing members never opens a project again:
that takes an explicit ``open_to_all``.
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, delete, exists, or_, select
from sqlalchemy.orm import Session

from rlhfkit.feedback.db import Annotator, Member, Project


def visible_to(annotator_id: int) -> ColumnElement[bool]:
    """A WHERE clause on Project: the projects this annotator may work on."""
    member = exists().where(Member.project_id == Project.id, Member.annotator_id == annotator_id)
    return or_(Project.open_to_all, member)


def may_work_on(s: Session, project: Project, ann: Annotator) -> bool:
    return project.open_to_all or s.get(Member, (project.id, ann.id)) is not None


def add_member(s: Session, project: Project, ann: Annotator) -> None:
    """Let ``ann`` work on ``project``; the project is then open to its members only."""
    if s.get(Member, (project.id, ann.id)) is None:
        s.add(Member(project_id=project.id, annotator_id=ann.id))
    project.open_to_all = False


def remove_member(s: Session, project: Project, ann: Annotator) -> None:
    """``ann`` may no longer see or answer the project's tasks (answers given so far are kept)."""
    s.execute(delete(Member).where(Member.project_id == project.id, Member.annotator_id == ann.id))


def describe(s: Session, project: Project) -> dict:
    names = s.scalars(select(Annotator.name).join(Member, Member.annotator_id == Annotator.id)
                      .where(Member.project_id == project.id).order_by(Annotator.name))
    return {"project": project.name, "open_to_all": project.open_to_all, "members": list(names)}
