"""The annotation web app (FastAPI): the JSON API under /api and the page under /.

Auth: ``Authorization: Bearer <token>``, checked from the headers before any body is read (guard.py). The
admin token manages annotators (create, disable, new token) and projects (settings, members) and reads stats
and exports; an annotator token reads and writes only that annotator's own assignments, in the projects open
to them. No token, an unknown or a disabled one → 401; a known token on something it may not touch → 403;
too many bad tokens from one address → 429. A body is one JSON object of at most ``max_body`` bytes (else 413).
Every handler is one database transaction; an answer is acknowledged only after its commit.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Optional

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from rlhfkit.feedback import access
from rlhfkit.feedback import annotate as ops
from rlhfkit.feedback.annotate import ApiError
from rlhfkit.feedback.auth import (TOKEN_CACHE_SECONDS, TokenCache, annotator_named, create_annotator, find_annotator,
                                   is_admin, rotate_token)
from rlhfkit.feedback.checks import AUDIO_TYPES, MAX_ID, BadField, check_name, parse_json, printable, text_problem
from rlhfkit.feedback.db import Annotator, Assignment, Database, Project, Prompt, Task, get_project
from rlhfkit.feedback.guard import MAX_BODY, Guard, LoginFailure, error_response, with_security_headers

STATIC = Path(__file__).with_name("static")
# Project settings: the range each may take (a larger value is a typo, and would overflow the INTEGER column).
SETTINGS = {"annotators_per_task": (1, 1000), "max_held": (1, 10_000), "hold_minutes": (0, 525_600)}
MAX_GUIDELINES = 100_000  # characters
ANSWER_FIELDS = {"submission_id", "comment", "score", "choice", "strength", "ranking", "none_acceptable", "edited",
                 "thumb"}


class Caller:
    """Who is calling: the admin, or one annotator (by id), who may be a reviewer."""

    def __init__(self, admin: bool, annotator_id: Optional[int] = None, name: str = "admin", reviewer: bool = False):
        self.admin, self.annotator_id, self.name, self.reviewer = admin, annotator_id, name, reviewer


class FeedbackApp(FastAPI):
    """FastAPI with the security headers on every response, the server's own error pages included."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            send = with_security_headers(send, scope["path"])
        await super().__call__(scope, receive, send)


def _json_type(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "true/false", type(None): "nothing"}.get(
        type(value), "a number")


async def body_object(request: Request) -> dict:
    """The body: one JSON object. Parsed here rather than by FastAPI so that errors name "body" or the field."""
    value = parse_json(await request.body())
    if not isinstance(value, dict):
        raise BadField("body", f"expected a JSON object, got {_json_type(value)}")
    return value


async def optional_object(request: Request) -> dict:
    """Like :func:`body_object`, but an empty body is ``{}``."""
    return await body_object(request) if (await request.body()).strip() else {}


def only(body: dict, allowed: set[str]) -> None:
    """Refuse unknown fields: a misspelt setting must not be accepted and silently ignored."""
    for key in body:
        if key not in allowed:
            raise ApiError(422, printable(key), f"unknown field; expected {', '.join(sorted(allowed))}")


# --- who is calling: FastAPI dependencies of the routes -------------------------------------------


def caller(request: Request) -> Caller:
    return request.state.caller  # put there by Guard, which lets no /api request through without it

def admin(c: Caller = Depends(caller)) -> Caller:
    if not c.admin:
        raise ApiError(403, "Authorization", "needs the admin token")
    return c

def annotator(c: Caller = Depends(caller)) -> Caller:
    if c.admin:
        raise ApiError(403, "Authorization", "the admin token does not annotate; use an annotator's token")
    return c

def reviewer(c: Caller = Depends(caller)) -> Caller:
    if not c.reviewer:
        raise ApiError(403, "Authorization", "needs a reviewer's token (the admin makes an annotator a reviewer)")
    return c

def reviewer_or_admin(c: Caller = Depends(caller)) -> Caller:
    if not (c.admin or c.reviewer):
        raise ApiError(403, "Authorization", "needs a reviewer's token or the admin token")
    return c

def project_or_404(s, name: str) -> Project:
    p = get_project(s, name) if not text_problem(name) else None
    if p is None:
        raise ApiError(404, "project", f"no project named {name!r}")
    return p

def annotator_or_404(s, name: str) -> Annotator:
    ann = annotator_named(s, name) if not text_problem(name) else None
    if ann is None:
        raise ApiError(404, "annotator", f"no annotator named {name!r}")
    return ann

def open_project(s, name: str, c: Caller) -> tuple[Project, Annotator]:
    """The project and the calling annotator, who must be allowed to work on it."""
    p = project_or_404(s, name)
    ann = s.get(Annotator, c.annotator_id)
    ops.check_access(s, p, ann)
    return p, ann


def guidelines_html(text: str) -> str:
    """A project's guidelines, Markdown (CommonMark) as HTML with no raw HTML: a tag in the text shows as typed,
    and links to javascript:, vbscript:, file: and data: URLs are not made (markdown-it's own link check)."""
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": False}).render(text)


def create_app(db_url: str, admin_token: str, max_body: int = MAX_BODY,
               token_cache_seconds: float = TOKEN_CACHE_SECONDS, media: str | Path | None = None) -> FastAPI:
    """The feedback app on the database at ``db_url``: the page, the admin API and the annotators' API.
    ``media``: the folder of the clips that prompts name (a record's ``audio``), served to the tasks' annotators."""
    db = Database(db_url)
    # No Swagger page: it loads its scripts from a CDN, and the app must work offline. The schema is served.
    app = FeedbackApp(title="rlhfkit feedback", docs_url=None, redoc_url=None, openapi_url="/api/openapi.json")
    app.state.db = db
    tokens = TokenCache(token_cache_seconds)  # known tokens; the admin routes that change an annotator clear it
    app.add_middleware(Guard, authenticate=authenticator(db, admin_token, tokens), max_body=max_body)
    add_error_handlers(app)
    add_page(app, db)
    add_admin_routes(app, db, tokens)
    add_annotator_routes(app, db, Path(media).resolve() if media else None)
    add_review_routes(app, db)
    return app


def authenticator(db: Database, admin_token: str, tokens: TokenCache):
    """The Guard's token check: the admin token, or an enabled annotator's (looked up, then cached a while)."""
    admin_caller = Caller(admin=True)

    def lookup(token: str) -> Caller:
        with db.tx() as s:
            ann = find_annotator(s, token)
            if ann is None:
                raise LoginFailure("unknown token")
            if ann.disabled:
                raise LoginFailure(f"annotator {ann.name!r} is disabled; ask the admin")
            return Caller(admin=False, annotator_id=ann.id, name=ann.name, reviewer=ann.reviewer)

    async def authenticate(token: str) -> Caller:
        if is_admin(token, admin_token):
            return admin_caller
        known = tokens.get(token)
        if known is None:
            generation = tokens.generation
            known = await run_in_threadpool(lookup, token)  # the database is synchronous: not on the event loop
            tokens.put(token, known, generation)
        return known

    return authenticate


def add_error_handlers(app: FastAPI) -> None:
    """Every error as ``{"field", "problem"}`` JSON with its status."""

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, e: ApiError):
        return error_response(e.status, e.field, e.problem)

    @app.exception_handler(BadField)
    async def _bad_field(_: Request, e: BadField):
        return error_response(422, e.field, e.problem)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, e: RequestValidationError):
        first = e.errors()[0]
        field = ".".join(str(p) for p in first["loc"] if p not in ("body", "path", "query")) or "body"
        return error_response(422, field, first["msg"])

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException):
        path = printable(request.url.path[:200])
        if e.status_code == 404:
            return error_response(404, "path", f"no such page or API route: {path}")
        if e.status_code == 405:
            allowed = (e.headers or {}).get("Allow", "")
            return error_response(405, "method", f"{request.method} is not allowed on {path}; use {allowed}",
                                  e.headers)
        return error_response(e.status_code, "", str(e.detail), e.headers)


def add_page(app: FastAPI, db: Database) -> None:
    """The annotation page and the health check."""

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def index():
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    @app.get("/admin", include_in_schema=False)
    def admin_page():
        """The admin page: projects from a candidates file, annotators and their links, progress, exports."""
        return FileResponse(STATIC / "admin.html", headers={"Cache-Control": "no-store"})

    @app.get("/healthz", include_in_schema=False)
    def healthz():
        return {"ok": True, "schema_version": db.version}


def add_admin_routes(app: FastAPI, db: Database, tokens: TokenCache) -> None:
    """The admin API: annotators and their tokens, projects and their members, stats and export."""
    # --- admin: annotators -----------------------------------------------------------------------

    def annotator_row(ann: Annotator) -> dict:
        return {"id": ann.id, "name": ann.name, "disabled": ann.disabled, "reviewer": ann.reviewer}

    @app.get("/api/admin/annotators")
    def list_annotators(_: Caller = Depends(admin)):
        with db.tx() as s:
            return [annotator_row(a) for a in s.scalars(select(Annotator).order_by(Annotator.name))]

    @app.post("/api/admin/annotators", status_code=201)
    def add_annotator(body: dict = Depends(body_object), _: Caller = Depends(admin)):
        only(body, {"name"})
        name = check_name(body.get("name"), "name")
        with db.tx() as s:
            if annotator_named(s, name) is not None:
                raise ApiError(409, "name", f"an annotator named {name!r} exists")
            ann, token = create_annotator(s, name)
            return {"id": ann.id, "name": ann.name, "token": token}

    @app.patch("/api/admin/annotators/{name}")
    def change_annotator(name: str, body: dict = Depends(body_object), _: Caller = Depends(admin)):
        """``{"disabled": true}`` refuses the annotator's token from now on; ``false`` lets it in again.
        ``{"reviewer": true}`` lets them review disagreements and resolve them."""
        only(body, {"disabled", "reviewer"})
        if not body:
            raise ApiError(422, "body", "expected disabled and/or reviewer")
        for key in body:
            if not isinstance(body[key], bool):
                raise ApiError(422, key, f"expected true or false, got {_json_type(body[key])}")
        with db.tx() as s:
            ann = annotator_or_404(s, name)
            ann.disabled = body.get("disabled", ann.disabled)
            ann.reviewer = body.get("reviewer", ann.reviewer)
            row = annotator_row(ann)
        tokens.clear()  # after the commit: a request that races it looks the token up again
        return row

    @app.post("/api/admin/annotators/{name}/token")
    def new_annotator_token(name: str, _: Caller = Depends(admin)):
        """A new token for the annotator (shown once); the old one stops working at once."""
        with db.tx() as s:
            ann = annotator_or_404(s, name)
            token = rotate_token(ann)
            reply = {**annotator_row(ann), "token": token}
        tokens.clear()
        return reply

    # --- admin: projects -------------------------------------------------------------------------

    @app.put("/api/admin/projects/{name}")
    def put_project(name: str, body: dict = Depends(body_object), _: Caller = Depends(admin)):
        name = check_name(name, "project")
        only(body, {*SETTINGS, "guidelines", "open_to_all"})
        for key, (least, most) in SETTINGS.items():
            value = body.get(key, least)
            if not isinstance(value, int) or isinstance(value, bool) or not least <= value <= most:
                raise ApiError(422, key, f"expected an integer {least}..{most}, got {printable(repr(value))[:50]}")
        if not isinstance(body.get("guidelines", ""), str) or len(body.get("guidelines", "")) > MAX_GUIDELINES:
            raise ApiError(422, "guidelines", f"expected a string of at most {MAX_GUIDELINES} characters")
        if not isinstance(body.get("open_to_all", True), bool):
            raise ApiError(422, "open_to_all", "expected true (every annotator) or false (its members only)")
        with db.tx() as s:
            p = get_project(s, name)
            if p is None:
                p = Project(name=name, guidelines="", annotators_per_task=1, max_held=5, open_tasks=0, hold_minutes=60,
                            open_to_all=True)
                s.add(p)
            p.guidelines = body.get("guidelines", p.guidelines)
            p.max_held = body.get("max_held", p.max_held)
            p.hold_minutes = body.get("hold_minutes", p.hold_minutes)
            p.annotators_per_task = body.get("annotators_per_task", p.annotators_per_task)
            p.open_to_all = body.get("open_to_all", p.open_to_all)
            s.flush()
            ops.refresh_open(s, p)
            return {"name": p.name, "guidelines": p.guidelines, "annotators_per_task": p.annotators_per_task,
                    "max_held": p.max_held, "hold_minutes": p.hold_minutes, "open_to_all": p.open_to_all}

    @app.get("/api/admin/projects")
    def list_projects(_: Caller = Depends(admin)):
        """Every project with its settings and progress: tasks, gold tasks, tasks answered, answers."""
        with db.tx() as s:
            projects = list(s.scalars(select(Project).order_by(Project.name)))
            counts = {pid: (n, gold) for pid, n, gold in s.execute(
                select(Task.project_id, func.count(Task.id), func.count(Task.id).filter(Task.is_gold))
                .group_by(Task.project_id)).all()}
            answered = dict(s.execute(select(Task.project_id, func.count(func.distinct(Task.id)))
                                      .join(Assignment, Assignment.task_id == Task.id)
                                      .where(Assignment.status == "done").group_by(Task.project_id)).all())
            answers = dict(s.execute(select(Assignment.project_id, func.count(Assignment.id))
                                     .where(Assignment.status == "done").group_by(Assignment.project_id)).all())
            return [{"name": p.name, "annotators_per_task": p.annotators_per_task, "open_to_all": p.open_to_all,
                     "tasks": counts.get(p.id, (0, 0))[0], "gold_tasks": counts.get(p.id, (0, 0))[1],
                     "answered": answered.get(p.id, 0), "answers": answers.get(p.id, 0)} for p in projects]

    @app.post("/api/admin/projects/{name}/import", status_code=201)
    def import_project(name: str, body: dict = Depends(body_object), _: Caller = Depends(admin)):
        """A candidates file's text (``candidates``, named ``filename``) as tasks of ``kinds`` in the project, made
        if new; as ``rlhf feedback import`` does. A bad line is a 422 naming the file, the line and the field."""
        from rlhfkit.data.formats import RecordError
        from rlhfkit.feedback.importer import import_candidates

        only(body, {"candidates", "filename", "kinds", "annotators_per_task", "guidelines"})
        candidates, filename = body.get("candidates"), body.get("filename") or "candidates.jsonl"
        if not isinstance(candidates, str) or not candidates.strip():
            raise ApiError(422, "candidates", "expected the text of a candidates JSONL file")
        if not isinstance(filename, str) or "/" in filename or len(filename) > 200:
            raise ApiError(422, "filename", "expected a file name (no folders)")
        kinds = body.get("kinds", ["rate", "rank", "compare", "edit"])
        if not isinstance(kinds, list) or not all(isinstance(k, str) for k in kinds):
            raise ApiError(422, "kinds", "expected a list of task kinds")
        per_task = body.get("annotators_per_task")
        if per_task is not None and (not isinstance(per_task, int) or isinstance(per_task, bool)
                                     or not SETTINGS["annotators_per_task"][0] <= per_task <= SETTINGS["annotators_per_task"][1]):
            raise ApiError(422, "annotators_per_task", f"expected an integer 1..{SETTINGS['annotators_per_task'][1]}")
        guidelines = body.get("guidelines")
        if guidelines is not None and (not isinstance(guidelines, str) or len(guidelines) > MAX_GUIDELINES):
            raise ApiError(422, "guidelines", f"expected a string of at most {MAX_GUIDELINES} characters")
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / filename
            path.write_text(candidates, encoding="utf-8")
            try:
                counts = import_candidates(db, name, path, kinds, guidelines=guidelines, annotators_per_task=per_task)
            except RecordError as e:
                raise ApiError(422, "candidates", str(e).replace(str(path), filename)) from None
            except ValueError as e:
                field, _, problem = str(e).partition(": ")
                raise ApiError(422, field.lstrip("-").replace("-", "_") or "body", problem or str(e)) from None
        return {"project": name, **counts}

    @app.get("/api/admin/projects/{name}/members")
    def project_members(name: str, _: Caller = Depends(admin)):
        with db.tx() as s:
            return access.describe(s, project_or_404(s, name))

    @app.put("/api/admin/projects/{name}/members/{annotator_name}")
    def add_member(name: str, annotator_name: str, _: Caller = Depends(admin)):
        """Let the annotator work on the project, which is then open to its members only."""
        with db.tx() as s:
            p = project_or_404(s, name)
            access.add_member(s, p, annotator_or_404(s, annotator_name))
            s.flush()
            return access.describe(s, p)

    @app.delete("/api/admin/projects/{name}/members/{annotator_name}")
    def remove_member(name: str, annotator_name: str, _: Caller = Depends(admin)):
        with db.tx() as s:
            p = project_or_404(s, name)
            access.remove_member(s, p, annotator_or_404(s, annotator_name))
            return access.describe(s, p)

    @app.get("/api/admin/projects/{name}/stats")
    def project_stats(name: str, _: Caller = Depends(admin)):
        from rlhfkit.feedback.export import stats

        with db.tx() as s:
            project_or_404(s, name)
        return stats(db, name)

    @app.get("/api/admin/projects/{name}/export")
    def project_export(name: str, format: str = "all", labels: str = "all", min_gold_accuracy: Optional[float] = None,
                       low_gold: str = "drop", min_gold_answers: int = 3, _: Caller = Depends(admin)):
        """The records as JSONL (``labels``: all | majority | resolved); with ``min_gold_accuracy``, the quality
        decisions (one per annotator, with the reason) come in the ``X-Quality`` header as JSON."""
        from rlhfkit.feedback.export import FORMATS, LABELS, BadRecord, GoldRule, export_lines, judge_annotators

        if format not in FORMATS:
            raise ApiError(422, "format", f"expected one of {', '.join(FORMATS)}, got {printable(format)[:50]!r}")
        if labels not in LABELS:
            raise ApiError(422, "labels", f"expected one of {', '.join(LABELS)}, got {printable(labels)[:50]!r}")
        with db.tx() as s:
            project_or_404(s, name)
        weights, headers = None, {}
        if min_gold_accuracy is not None:
            try:
                rule = GoldRule(min_gold_accuracy, low_gold, min_gold_answers)
            except ValueError as e:
                field, problem = str(e).split(": ", 1)
                raise ApiError(422, field.lstrip("-").replace("-", "_"), problem) from None
            decisions = judge_annotators(db, name, rule)
            weights = {d.annotator: d.weight for d in decisions}
            headers["X-Quality"] = json.dumps([{"annotator": d.annotator, "weight": d.weight, "why": d.why}
                                               for d in decisions])  # ASCII: names escaped as \uXXXX
        try:
            text = "".join(export_lines(db, name, format, weights=weights, labels=labels))
        except BadRecord as e:  # stored before text was checked on the way in: say which answer it is
            raise ApiError(409, "export", str(e)) from None
        return PlainTextResponse(text, media_type="application/x-ndjson", headers=headers)


def add_annotator_routes(app: FastAPI, db: Database, media: Path | None = None) -> None:
    """The annotators' API: their projects, the next task, claims, skips and answers."""

    @app.get("/api/me")
    def me(c: Caller = Depends(annotator)):
        return {"name": c.name, "reviewer": c.reviewer}

    @app.get("/api/projects")
    def projects(c: Caller = Depends(annotator)):
        with db.tx() as s:
            rows = s.execute(select(Project, func.count(Task.id)).outerjoin(Task, Task.project_id == Project.id)
                             .where(access.visible_to(c.annotator_id))
                             .group_by(Project.id).order_by(Project.name)).all()
            return [{"name": p.name, "guidelines": p.guidelines, "tasks": n} for p, n in rows]

    @app.get("/api/projects/{name}")
    def project(name: str, c: Caller = Depends(annotator)):
        with db.tx() as s:
            p, ann = open_project(s, name, c)
            return {"name": p.name, "guidelines": p.guidelines, "guidelines_html": guidelines_html(p.guidelines),
                    "progress": ops.progress(s, p, ann),
                    "rating_labels": ops.RATING_LABELS, "strengths": list(ops.STRENGTH_MARGIN)}

    @app.get("/api/projects/{name}/next")
    def next_task(name: str, c: Caller = Depends(annotator)):
        """The annotator's oldest held task (claiming one if none is held); task is null when none is left."""
        with db.tx() as s:
            p, ann = open_project(s, name, c)
            mine = ops.claim(s, p, ann, 1)
            return {"task": ops.task_view(s, mine[0]) if mine else None, "progress": ops.progress(s, p, ann)}

    @app.post("/api/projects/{name}/claim")
    def claim(name: str, body: dict = Depends(optional_object), c: Caller = Depends(annotator)):
        """Hold up to ``n`` tasks at once (never more than the project's cap)."""
        only(body, {"n"})
        n = body.get("n", 1)
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= SETTINGS["max_held"][1]:
            raise ApiError(422, "n", f"expected an integer 1..{SETTINGS['max_held'][1]}, got {printable(repr(n))[:50]}")
        with db.tx() as s:
            p, ann = open_project(s, name, c)
            return {"tasks": [ops.task_view(s, a) for a in ops.claim(s, p, ann, n)], "max_held": p.max_held}

    @app.get("/api/projects/{name}/last")
    def last(name: str, c: Caller = Depends(annotator)):
        """The task this annotator answered last, with their answer: the page's "back" button."""
        with db.tx() as s:
            p, ann = open_project(s, name, c)
            a = ops.last_done(s, p, ann)
            return {"task": ops.task_view(s, a) if a else None}

    @app.get("/api/assignments/{assignment_id}")
    def get_assignment(assignment_id: int, c: Caller = Depends(annotator)):
        with db.tx() as s:
            return ops.task_view(s, ops.own_assignment(s, assignment_id, s.get(Annotator, c.annotator_id)))

    @app.get("/api/assignments/{assignment_id}/audio")
    def assignment_audio(assignment_id: int, c: Caller = Depends(annotator)):
        """The clip the task's prompt names (its record's ``audio``), from the app's media folder: the page fetches it
        with the annotator's token and plays it in an <audio> element."""
        with db.tx() as s:
            a = ops.own_assignment(s, assignment_id, s.get(Annotator, c.annotator_id))
            name = s.get(Prompt, s.get(Task, a.task_id).prompt_id).record.get("audio")
        if not name:
            raise ApiError(404, "audio", "this task's prompt has no clip")
        if media is None:
            raise ApiError(404, "audio", "the app was started without a media folder (rlhf feedback serve --media DIR)")
        path = media / name
        if path.parent != media or not path.is_file():
            raise ApiError(404, "audio", f"{printable(name)[:100]}: no such clip in the app's media folder")
        return FileResponse(path, media_type=AUDIO_TYPES[path.suffix.lower()])

    @app.post("/api/assignments/{assignment_id}/skip")
    def skip(assignment_id: int, c: Caller = Depends(annotator)):
        with db.tx() as s:
            a = ops.own_assignment(s, assignment_id, s.get(Annotator, c.annotator_id))
            ops.skip(s, a, s.get(Project, a.project_id))
            return {"assignment_id": a.id, "status": a.status}

    @app.post("/api/assignments/{assignment_id}/answer")
    def answer(assignment_id: int, body: dict = Depends(body_object), c: Caller = Depends(annotator)):
        only(body, ANSWER_FIELDS)

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


def add_review_routes(app: FastAPI, db: Database) -> None:
    """The reviewers' API: the tasks whose annotators disagree most, and their resolution (feedback/review.py)."""
    from rlhfkit.feedback import review

    @app.get("/api/review/projects/{name}")
    def review_queue(name: str, limit: int = 20, below: float = 1.0, c: Caller = Depends(reviewer_or_admin)):
        """Up to ``limit`` tasks whose answers agree less than ``below``: unresolved first, least agreed first."""
        if not 1 <= limit <= 1000:
            raise ApiError(422, "limit", f"expected an integer 1..1000, got {limit}")
        with db.tx() as s:
            p = project_or_404(s, name) if c.admin else open_project(s, name, c)[0]
            return {"project": p.name, "tasks": review.queue(s, p, limit, below)}

    @app.post("/api/review/tasks/{task_id}", status_code=201)
    def resolve(task_id: int, body: dict = Depends(body_object), c: Caller = Depends(reviewer)):
        """The reviewer's answer to the task, stored beside the annotators' (theirs stay as they were)."""
        only(body, ANSWER_FIELDS)
        with db.tx() as s:
            task = s.get(Task, task_id) if 1 <= task_id <= MAX_ID else None
            if task is None:
                raise ApiError(404, "task", f"no task {task_id}")
            ops.check_access(s, s.get(Project, task.project_id), s.get(Annotator, c.annotator_id))
            res = review.resolve(s, task_id, s.get(Annotator, c.annotator_id), body)
            return {"resolution_id": res.id, "task_id": task_id, "says": review.describe(task.kind, res.payload)}
