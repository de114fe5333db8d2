"""Fixtures for the feedback app: a real database (a SQLite file, and PostgreSQL when RLHFKIT_TEST_PG_URL is
set), candidates files, an API client, and a real server process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import MetaData, create_engine

from rlhfkit.feedback.db import normalise_url

ADMIN = "test-admin-token-0123456789"
PG_URL = os.environ.get("RLHFKIT_TEST_PG_URL", "")

CANDIDATES = [
    {"prompt": "Explain photosynthesis to a child.", "responses": ["Plants eat sunlight to make food.",
                                                                   "It is a process.", "Leaves use light, water and air to make sugar."],
     "model": "tiny", "checkpoint": "runs/t/sft", "sampling": {"temperature": 0.7}, "gold_scores": [0.8, 0.1, 0.9]},
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 7 x 8?"}],
     "responses": ["56", "Maybe 54", "7 x 8 = 56"], "model": "tiny", "checkpoint": "runs/t/sft"},
]
GOLD = [{"prompt": "Is the sky green on a clear day?", "responses": ["No, it is blue.", "Yes."],
         "gold": {"ranking": [0, 1], "ratings": [7, 1]}}]


def _reset_postgres(url: str) -> None:
    engine = create_engine(normalise_url(url))
    meta = MetaData()
    meta.reflect(engine)
    meta.drop_all(engine)
    engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request, tmp_path) -> str:
    """A fresh database: a SQLite file, or (when RLHFKIT_TEST_PG_URL is set) an emptied PostgreSQL database."""
    if request.param == "sqlite":
        yield str(tmp_path / "feedback.db")
        return
    if not PG_URL:
        pytest.skip("RLHFKIT_TEST_PG_URL is not set (.ci/run starts PostgreSQL and sets it)")
    _reset_postgres(PG_URL)
    yield PG_URL
    _reset_postgres(PG_URL)


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture
def candidates(tmp_path) -> Path:
    return write_jsonl(tmp_path / "candidates.jsonl", CANDIDATES)


@pytest.fixture
def gold_file(tmp_path) -> Path:
    return write_jsonl(tmp_path / "gold.jsonl", GOLD)


def auth(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``rlhf feedback serve`` in a subprocess on a free loopback port."""

    def __init__(self, db_url: str, log: Path, args: tuple[str, ...] = ()):
        self.db_url, self.log, self.port, self.proc, self.args = db_url, log, free_port(), None, list(args)
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> "Server":
        env = {**os.environ, "RLHFKIT_ADMIN_TOKEN": ADMIN}
        self.proc = subprocess.Popen([sys.executable, "-m", "rlhfkit", "feedback", "serve", "--db", self.db_url,
                                      "--host", "127.0.0.1", "--port", str(self.port), *self.args],
                                     env=env, stdout=self.log.open("ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # wait until it answers (a readiness poll, not a timing assertion)
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("server did not start within 60 s")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()  # SIGKILL: no shutdown hooks run
            self.proc.wait()


@pytest.fixture
def server_factory(tmp_path):
    servers: list[Server] = []

    def make(db_url: str, *args: str) -> Server:
        s = Server(db_url, tmp_path / f"server{len(servers)}.log", args).start()
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.kill()


def good_answer(task: dict, **extra) -> dict:
    """A valid answer to any task (with a fresh submission id)."""
    import uuid

    ids = [r["id"] for r in task["responses"]]
    body = {"rate": {"score": 5}, "compare": {"choice": "a", "strength": "clearly"},
            "rank": {"ranking": ids}, "edit": {"edited": task["responses"][0]["text"] + " (edited)"}}[task["kind"]]
    return {**body, "submission_id": uuid.uuid4().hex, **extra}


class FB:
    """An API client on a real database with the demo project imported (N=2 annotators per task, cap 3)."""

    def __init__(self, client, db):
        self.client, self.db = client, db

    def annotator(self, name: str) -> str:
        r = self.client.post("/api/admin/annotators", json={"name": name}, headers=auth(ADMIN))
        assert r.status_code == 201, r.text
        return r.json()["token"]

    def next(self, token: str, project: str = "demo") -> dict | None:
        r = self.client.get(f"/api/projects/{project}/next", headers=auth(token))
        assert r.status_code == 200, r.text
        return r.json()["task"]

    def answer(self, token: str, task: dict, body: dict | None = None):
        return self.client.post(f"/api/assignments/{task['assignment_id']}/answer", json=body or good_answer(task),
                                headers=auth(token))

    def answer_all(self, token: str, choose=good_answer) -> list[dict]:
        done = []
        while (task := self.next(token)) is not None:
            r = self.answer(token, task, choose(task))
            assert r.status_code == 201, r.text
            done.append(task)
        return done


@pytest.fixture
def fb(db_url, candidates, gold_file):
    from fastapi.testclient import TestClient

    from rlhfkit.feedback.app import create_app
    from rlhfkit.feedback.db import Database
    from rlhfkit.feedback.importer import import_candidates

    db = Database(db_url)
    import_candidates(db, "demo", candidates, "rate,rank,compare,edit", gold=gold_file, guidelines="Be kind.",
                      annotators_per_task=2, max_held=3)
    db.dispose()
    app = create_app(db_url, ADMIN)
    with TestClient(app) as client:
        yield FB(client, app.state.db)
    app.state.db.dispose()
