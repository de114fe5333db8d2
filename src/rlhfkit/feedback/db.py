"""The feedback database: SQLAlchemy models, engine set-up and schema migrations (docs/design.md §6).

One code path serves SQLite (the default, a file) and PostgreSQL (by URL). Every write runs in one
transaction; SQLite runs in WAL mode with ``synchronous=FULL`` and ``BEGIN IMMEDIATE`` so that an
acknowledged answer is on disk before the reply leaves, and two writers never race on a stale read.

Tables: projects → prompts → responses (the candidates), tasks (a kind over some of one prompt's
responses), annotators, assignments (a task given to one annotator, with the order it was shown in),
answers (every submission kept: a later one is a revision, the latest is the answer), project_members
(who may work on a project that is not open to all), resolutions (a reviewer's answer to a task its annotators
disagree on, kept beside theirs: nothing is overwritten; the latest resolution of a task is its label).
"""

from __future__ import annotations

import threading
from contextlib import contextmanager, nullcontext
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator, Optional

from sqlalchemy import (JSON, Boolean, DateTime, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint,
                        create_engine, event, inspect, select, text)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

KINDS = ("rate", "rank", "compare", "edit", "thumbs", "arena")
IMPORT_KINDS = KINDS[:-1]  # arena tasks are made from an evaluation's answers (feedback/arena.py), not imported
SCHEMA_VERSION_TABLE = "schema_version"


def now() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    pass


class Project(Base):
    __tablename__ = "projects"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    guidelines: Mapped[str] = mapped_column(Text, default="")
    annotators_per_task: Mapped[int] = mapped_column(Integer, default=1)  # N: each task goes to N annotators
    max_held: Mapped[int] = mapped_column(Integer, default=5)  # cap on unanswered tasks one annotator holds
    open_tasks: Mapped[int] = mapped_column(Integer, default=0)  # tasks still wanting annotators (kept in step)
    hold_minutes: Mapped[int] = mapped_column(Integer, default=60)  # a task held unanswered longer goes back (0: never)
    # True: every annotator may work on it (projects made before membership existed); False: its members only.
    open_to_all: Mapped[bool] = mapped_column(Boolean, default=True, server_default=text("TRUE"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)


class Prompt(Base):
    __tablename__ = "prompts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    record: Mapped[dict] = mapped_column(JSON)  # {"prompt": ...} or {"messages": [...]}, as imported
    text: Mapped[str] = mapped_column(Text)  # readable key: the prompt or its last user message


class Response(Base):
    __tablename__ = "responses"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id"), index=True)
    text: Mapped[str] = mapped_column(Text)
    model: Mapped[str] = mapped_column(String(500), default="")
    checkpoint: Mapped[str] = mapped_column(String(500), default="")
    meta: Mapped[dict] = mapped_column(JSON, default=dict)  # sampling settings and any extra fields


class Task(Base):
    __tablename__ = "tasks"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"))
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id"))
    kind: Mapped[str] = mapped_column(String(16))
    response_ids: Mapped[list] = mapped_column(JSON)  # the task's responses; answers index into this list
    is_gold: Mapped[bool] = mapped_column(Boolean, default=False)  # every annotator gets it; scored in stats
    gold: Mapped[Optional[dict]] = mapped_column(JSON, nullable=True)  # known answer; never sent to annotators
    order_key: Mapped[float] = mapped_column(Float)  # random: gold tasks are mixed in unseen
    n_active: Mapped[int] = mapped_column(Integer, default=0)  # assignments not skipped
    is_open: Mapped[bool] = mapped_column(Boolean, default=True)  # still wants annotators
    __table_args__ = (Index("ix_tasks_next", "project_id", "is_open", "order_key"),)


class Annotator(Base):
    __tablename__ = "annotators"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 of the token; the token is not kept
    disabled: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("FALSE"))  # token refused
    reviewer: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("FALSE"))  # resolves disagreements
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)


class Member(Base):
    """An annotator who may work on a project that is not open to all."""

    __tablename__ = "project_members"
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), primary_key=True)
    annotator_id: Mapped[int] = mapped_column(ForeignKey("annotators.id"), primary_key=True)


class Assignment(Base):
    __tablename__ = "assignments"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"))
    annotator_id: Mapped[int] = mapped_column(ForeignKey("annotators.id"))
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"))
    status: Mapped[str] = mapped_column(String(16), default="held")  # held | done | skipped | expired
    display_order: Mapped[list] = mapped_column(JSON)  # positions into task.response_ids, as shown
    assigned_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    done_at: Mapped[Optional[datetime]] = mapped_column(DateTime(timezone=True), nullable=True)
    __table_args__ = (UniqueConstraint("task_id", "annotator_id", name="uq_assignment_task_annotator"),
                      Index("ix_assignments_annotator", "annotator_id", "project_id", "status"),
                      Index("ix_assignments_hold", "project_id", "status", "assigned_at"))


class Answer(Base):
    __tablename__ = "answers"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    assignment_id: Mapped[int] = mapped_column(ForeignKey("assignments.id"), index=True)
    submission_id: Mapped[str] = mapped_column(String(100), unique=True)  # made by the client: retries are no-ops
    revision: Mapped[int] = mapped_column(Integer)  # 1 for the first answer, then 2, 3, ... for changes
    payload: Mapped[dict] = mapped_column(JSON)  # normalised answer, in terms of task positions
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)


class Resolution(Base):
    """A reviewer's answer to a task whose annotators disagree, in task positions like an answer's payload."""

    __tablename__ = "resolutions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"), index=True)
    reviewer_id: Mapped[int] = mapped_column(ForeignKey("annotators.id"))
    payload: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)


# Ordered migrations: migration i brings the schema from version i to i + 1. Never edit a released one;
# append a new function (ALTER TABLE ...) instead.
def _m1_initial(conn) -> None:
    Base.metadata.create_all(conn)


def _m2_access(conn) -> None:
    """Revocable annotators and per-project membership. Migration 1 creates the tables of the current models,
    so on a database made by it the columns are there already; only older databases get them added here."""
    columns = {table: {c["name"] for c in inspect(conn).get_columns(table)} for table in ("annotators", "projects")}
    if "disabled" not in columns["annotators"]:
        conn.execute(text("ALTER TABLE annotators ADD COLUMN disabled BOOLEAN NOT NULL DEFAULT FALSE"))
    if "open_to_all" not in columns["projects"]:
        conn.execute(text("ALTER TABLE projects ADD COLUMN open_to_all BOOLEAN NOT NULL DEFAULT TRUE"))
    Member.__table__.create(conn, checkfirst=True)


def _m3_review(conn) -> None:
    """Reviewers and their resolutions (on a database made by migration 1 they are there already)."""
    if "reviewer" not in {c["name"] for c in inspect(conn).get_columns("annotators")}:
        conn.execute(text("ALTER TABLE annotators ADD COLUMN reviewer BOOLEAN NOT NULL DEFAULT FALSE"))
    Resolution.__table__.create(conn, checkfirst=True)


MIGRATIONS: list[Callable] = [_m1_initial, _m2_access, _m3_review]


def normalise_url(url: str) -> str:
    """``feedback.db`` → ``sqlite:///feedback.db``; ``postgresql://`` uses the psycopg (v3) driver."""
    if "://" not in url:
        return f"sqlite:///{url}"
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def sqlite_path(url: str) -> Optional[Path]:
    """The file behind a SQLite URL (None for other databases or in-memory SQLite)."""
    u = make_url(normalise_url(url))
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:":
        return None
    return Path(u.database)


def make_engine(url: str) -> Engine:
    url = normalise_url(url)
    if make_url(url).get_backend_name() != "sqlite":
        return create_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True)
    path = sqlite_path(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": 60, "check_same_thread": False}, pool_size=8, max_overflow=32)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _):
        # Let SQLAlchemy's "begin" event issue BEGIN itself (the driver's implicit BEGIN is DEFERRED).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")  # commit = fsync of the WAL: acknowledged means on disk
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        # IMMEDIATE takes the write lock up front: a read-then-write transaction cannot fail half-way
        # with SQLITE_BUSY_SNAPSHOT, and concurrent assigners see each other's rows.
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def schema_version(engine: Engine) -> int:
    if not inspect(engine).has_table(SCHEMA_VERSION_TABLE):
        return 0
    with engine.connect() as conn:
        return int(conn.execute(text(f"SELECT version FROM {SCHEMA_VERSION_TABLE}")).scalar() or 0)


def migrate(engine: Engine) -> int:
    """Create or upgrade the schema to the latest version; returns the version. Safe to call every start."""
    with engine.begin() as conn:
        conn.execute(text(f"CREATE TABLE IF NOT EXISTS {SCHEMA_VERSION_TABLE} (version INTEGER NOT NULL)"))
        version = conn.execute(text(f"SELECT version FROM {SCHEMA_VERSION_TABLE}")).scalar()
        if version is None:
            conn.execute(text(f"INSERT INTO {SCHEMA_VERSION_TABLE} (version) VALUES (0)"))
            version = 0
    for i in range(version, len(MIGRATIONS)):
        with engine.begin() as conn:  # each step and its version bump commit together
            MIGRATIONS[i](conn)
            conn.execute(text(f"UPDATE {SCHEMA_VERSION_TABLE} SET version = :v"), {"v": i + 1})
    return len(MIGRATIONS)


class Database:
    """An engine with its schema migrated, and a transaction helper."""

    def __init__(self, url: str):
        self.url = normalise_url(url)
        self.engine = make_engine(self.url)
        self.version = migrate(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        # SQLite has one writer at a time. Queue this process's transactions on a lock rather than letting
        # them poll SQLite's busy handler, whose growing sleeps give some requests second-long waits.
        self._lock = threading.Lock() if self.is_sqlite else nullcontext()

    @contextmanager
    def tx(self) -> Iterator[Session]:
        """One transaction: committed when the block ends, rolled back if it raises."""
        with self._lock, self._sessions() as s, s.begin():
            yield s

    def dispose(self) -> None:
        self.engine.dispose()

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"


def get_project(s: Session, name: str) -> Optional[Project]:
    return s.scalar(select(Project).where(Project.name == name))

