"""The annotation web app (FastAPI): the JSON API under /api and the page under /.

Auth: ``Authorization: Bearer <token>``. The admin token creates annotators and projects and reads
stats and exports; an annotator token reads and writes only that annotator's own assignments.
No token or an unknown one → 401; a known token on something it may not touch → 403.
Every handler is one database transaction; an answer is acknowledged only after its commit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from fastapi import Body, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from rlhfkit.feedback import annotate as ops
from rlhfkit.feedback.annotate import ApiError
from rlhfkit.feedback.auth import create_annotator, find_annotator, hash_token, is_admin
from rlhfkit.feedback.db import Annotator, Database, Project, Task, get_project

STATIC = Path(__file__).with_name("static")


class Caller:
    """Who is calling: the admin, or one annotator (by id)."""

    def __init__(self, admin: bool, annotator_id: Optional[int] = None, name: str = "admin"):
        self.admin, self.annotator_id, self.name = admin, annotator_id, name


def _error(status: int, field: str, problem: str) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    detail = f"{field}: {problem}" if field else problem
    return JSONResponse({"detail": detail, "field": field}, status_code=status, headers=headers)


def create_app(db_url: str, admin_token: str) -> FastAPI:
    db = Database(db_url)
    # No Swagger page: it loads its scripts from a CDN, and the app must work offline. The schema is served.
    app = FastAPI(title="rlhfkit feedback", docs_url=None, redoc_url=None, openapi_url="/api/openapi.json")
    app.state.db = db
    known: dict[str, Caller] = {}  # token hash → annotator, so a request does not look the token up again

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, e: ApiError):
        return _error(e.status, e.field, e.problem)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, e: RequestValidationError):
        first = e.errors()[0]
        field = ".".join(str(p) for p in first["loc"] if p != "body") or "body"
        return _error(422, field, first["msg"])

    def caller(request: Request) -> Caller:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "Authorization", "missing; send 'Authorization: Bearer <token>'")
        token = token.strip()
        if is_admin(token, admin_token):
            return Caller(admin=True)
        key = hash_token(token)
        if key not in known:  # annotators are never removed, so a token once found stays valid
            with db.tx() as s:
                ann = find_annotator(s, token)
                if ann is None:
                    raise ApiError(401, "Authorization", "unknown token")
                known[key] = Caller(admin=False, annotator_id=ann.id, name=ann.name)
        return known[key]

    def admin(c: Caller = Depends(caller)) -> Caller:
        if not c.admin:
            raise ApiError(403, "Authorization", "needs the admin token")
        return c

    def annotator(c: Caller = Depends(caller)) -> Caller:
        if c.admin:
            raise ApiError(403, "Authorization", "the admin token does not annotate; use an annotator's token")
        return c

    def project_or_404(s, name: str) -> Project:
        p = get_project(s, name)
        if p is None:
            raise ApiError(404, "project", f"no project named {name!r}")
        return p

    # --- the page --------------------------------------------------------------------------------

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def index():
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    @app.get("/healthz", include_in_schema=False)
    def healthz():
        return {"ok": True, "schema_version": db.version}

    # --- admin -----------------------------------------------------------------------------------

    @app.post("/api/admin/annotators", status_code=201)
    def add_annotator(body: dict = Body(...), _: Caller = Depends(admin)):
        name = body.get("name")
        if not isinstance(name, str) or not name.strip() or len(name) > 200:
            raise ApiError(422, "name", "expected a non-empty string of at most 200 characters")
        with db.tx() as s:
            if s.scalar(select(Annotator).where(Annotator.name == name.strip())) is not None:
                raise ApiError(409, "name", f"an annotator named {name.strip()!r} exists")
            ann, token = create_annotator(s, name.strip())
            return {"id": ann.id, "name": ann.name, "token": token}

    @app.put("/api/admin/projects/{name}")
    def put_project(name: str, body: dict = Body(...), _: Caller = Depends(admin)):
        for key, least in (("annotators_per_task", 1), ("max_held", 1), ("hold_minutes", 0)):
            if key in body and (not isinstance(body[key], int) or isinstance(body[key], bool) or body[key] < least):
                raise ApiError(422, key, f"expected an integer ≥ {least}")
        if "guidelines" in body and not isinstance(body["guidelines"], str):
            raise ApiError(422, "guidelines", "expected a string")
        with db.tx() as s:
            p = get_project(s, name)
            if p is None:
                p = Project(name=name, guidelines="", annotators_per_task=1, max_held=5, open_tasks=0, hold_minutes=60)
                s.add(p)
            p.guidelines = body.get("guidelines", p.guidelines)
            p.max_held = body.get("max_held", p.max_held)
            p.hold_minutes = body.get("hold_minutes", p.hold_minutes)
            p.annotators_per_task = body.get("annotators_per_task", p.annotators_per_task)
            s.flush()
            ops.refresh_open(s, p)
            return {"name": p.name, "guidelines": p.guidelines, "annotators_per_task": p.annotators_per_task,
                    "max_held": p.max_held, "hold_minutes": p.hold_minutes}

    @app.get("/api/admin/projects/{name}/stats")
    def project_stats(name: str, _: Caller = Depends(admin)):
        from rlhfkit.feedback.export import stats

        with db.tx() as s:
            project_or_404(s, name)
        return stats(db, name)

    @app.get("/api/admin/projects/{name}/export")
    def project_export(name: str, format: str = "all", _: Caller = Depends(admin)):
        import json

        from rlhfkit.feedback.export import FORMATS, export_records

        if format not in FORMATS:
            raise ApiError(422, "format", f"expected one of {', '.join(FORMATS)}, got {format!r}")
        with db.tx() as s:
            project_or_404(s, name)
        lines = (json.dumps(r, ensure_ascii=False) + "\n" for r in export_records(db, name, format))
        return PlainTextResponse("".join(lines), media_type="application/x-ndjson")

    # --- annotators ------------------------------------------------------------------------------

    @app.get("/api/me")
    def me(c: Caller = Depends(annotator)):
        return {"name": c.name}

    @app.get("/api/projects")
    def projects(c: Caller = Depends(annotator)):
        with db.tx() as s:
            rows = s.execute(select(Project, func.count(Task.id)).outerjoin(Task, Task.project_id == Project.id)
                             .group_by(Project.id).order_by(Project.name)).all()
            return [{"name": p.name, "guidelines": p.guidelines, "tasks": n} for p, n in rows]

    @app.get("/api/projects/{name}")
    def project(name: str, c: Caller = Depends(annotator)):
        with db.tx() as s:
            p = project_or_404(s, name)
            ann = s.get(Annotator, c.annotator_id)
            return {"name": p.name, "guidelines": p.guidelines, "progress": ops.progress(s, p, ann),
                    "rating_labels": ops.RATING_LABELS, "strengths": list(ops.STRENGTH_MARGIN)}

    @app.get("/api/projects/{name}/next")
    def next_task(name: str, c: Caller = Depends(annotator)):
        """The annotator's oldest held task (claiming one if none is held); task is null when none is left."""
        with db.tx() as s:
            p = project_or_404(s, name)
            ann = s.get(Annotator, c.annotator_id)
            mine = ops.claim(s, p, ann, 1)
            return {"task": ops.task_view(s, mine[0]) if mine else None, "progress": ops.progress(s, p, ann)}

    @app.post("/api/projects/{name}/claim")
    def claim(name: str, body: dict = Body(default={}), c: Caller = Depends(annotator)):
        """Hold up to ``n`` tasks at once (never more than the project's cap)."""
        n = body.get("n", 1)
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ApiError(422, "n", f"expected an integer ≥ 1, got {n!r}")
        with db.tx() as s:
            p = project_or_404(s, name)
            ann = s.get(Annotator, c.annotator_id)
            return {"tasks": [ops.task_view(s, a) for a in ops.claim(s, p, ann, n)], "max_held": p.max_held}

    @app.get("/api/projects/{name}/last")
    def last(name: str, c: Caller = Depends(annotator)):
        """The task this annotator answered last, with their answer: the page's "back" button."""
        with db.tx() as s:
            p = project_or_404(s, name)
            a = ops.last_done(s, p, s.get(Annotator, c.annotator_id))
            return {"task": ops.task_view(s, a) if a else None}

    @app.get("/api/assignments/{assignment_id}")
    def get_assignment(assignment_id: int, c: Caller = Depends(annotator)):
        with db.tx() as s:
            return ops.task_view(s, ops.own_assignment(s, assignment_id, s.get(Annotator, c.annotator_id)))

    @app.post("/api/assignments/{assignment_id}/skip")
    def skip(assignment_id: int, c: Caller = Depends(annotator)):
        with db.tx() as s:
            a = ops.own_assignment(s, assignment_id, s.get(Annotator, c.annotator_id))
            ops.skip(s, a, s.get(Project, a.project_id))
            return {"assignment_id": a.id, "status": a.status}

    @app.post("/api/assignments/{assignment_id}/answer")
    def answer(assignment_id: int, body: Any = Body(...), c: Caller = Depends(annotator)):
        def reply(sub: ops.Submitted) -> JSONResponse:
            out = {"answer_id": sub.answer.id, "assignment_id": assignment_id, "submission_id": sub.answer.submission_id,
                   "revision": sub.answer.revision, "duplicate": sub.duplicate}
            return JSONResponse(out, status_code=200 if sub.duplicate else 201)

        try:
            with db.tx() as s:
                return reply(ops.submit(s, assignment_id, s.get(Annotator, c.annotator_id), body))
        except IntegrityError:
            # Two copies of one submission raced (PostgreSQL): the other one committed; answer as a retry.
            with db.tx() as s:
                sub = ops.find_submission(s, ops.check_submission_id(body), s.get(Annotator, c.annotator_id),
                                          assignment_id)
                if sub is None:
                    raise
                return reply(sub)

    return app
