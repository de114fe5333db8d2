"""Who may do what: no token or an unknown one is 401; a known token on something not its own is 403."""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path

import pytest
from sqlalchemy import select

from rlhfkit.feedback.auth import ADMIN_TOKEN_ENV, load_admin_token
from rlhfkit.feedback.db import Annotator

from .conftest import ADMIN, auth, good_answer


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer"}, {"Authorization": "Basic abc"},
                                     {"Authorization": "Bearer not-a-token"}])
def test_no_token_or_an_unknown_one_is_401(fb, headers):
    for method, path in [("GET", "/api/me"), ("GET", "/api/projects/demo/next"), ("POST", "/api/admin/annotators"),
                         ("GET", "/api/admin/projects/demo/stats")]:
        r = fb.client.request(method, path, headers=headers, json={"name": "x"})
        assert r.status_code == 401, (method, path)
        assert r.headers["www-authenticate"] == "Bearer" and r.json()["field"] == "Authorization"


def test_an_annotator_cannot_use_admin_endpoints(fb):
    token = fb.annotator("ann")
    assert fb.client.post("/api/admin/annotators", json={"name": "eve"}, headers=auth(token)).status_code == 403
    assert fb.client.get("/api/admin/projects/demo/stats", headers=auth(token)).status_code == 403
    assert fb.client.get("/api/admin/projects/demo/export", headers=auth(token)).status_code == 403
    assert fb.client.put("/api/admin/projects/demo", json={}, headers=auth(token)).status_code == 403


def test_the_admin_token_does_not_annotate(fb):
    assert fb.client.get("/api/projects/demo/next", headers=auth(ADMIN)).status_code == 403


def test_an_annotator_cannot_read_answer_or_skip_anothers_task(fb):
    ann, bob = fb.annotator("ann"), fb.annotator("bob")
    task = fb.next(ann)
    aid = task["assignment_id"]
    assert fb.client.get(f"/api/assignments/{aid}", headers=auth(bob)).status_code == 403
    assert fb.answer(bob, task).status_code == 403
    assert fb.client.post(f"/api/assignments/{aid}/skip", headers=auth(bob)).status_code == 403
    body = good_answer(task)
    assert fb.answer(ann, task, body).status_code == 201
    # Replaying Ann's submission id does not let Bob read or answer her task.
    assert fb.answer(bob, task, body).status_code == 403
    assert fb.client.get(f"/api/assignments/{aid}", headers=auth(bob)).status_code == 403


def test_annotator_tokens_are_stored_only_as_hashes(fb, db_url):
    token = fb.annotator("ann")
    with fb.db.tx() as s:
        stored = s.scalar(select(Annotator.token_hash).where(Annotator.name == "ann"))
    assert stored == hashlib.sha256(token.encode()).hexdigest()
    if not db_url.startswith("postgres"):
        fb.db.dispose()
        blob = b"".join(p.read_bytes() for p in Path(db_url).parent.glob("feedback.db*"))
        assert token.encode() not in blob


def test_the_admin_token_file_is_made_once_beside_the_database_and_private(tmp_path, monkeypatch):
    monkeypatch.delenv(ADMIN_TOKEN_ENV, raising=False)
    db = str(tmp_path / "fb.db")
    token, where = load_admin_token(db)
    path = tmp_path / "fb.db.admin-token"
    assert where == str(path) and path.read_text().strip() == token and len(token) >= 40
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_admin_token(db) == (token, where)
    monkeypatch.setenv(ADMIN_TOKEN_ENV, "from-env-0123456789")
    assert load_admin_token(db)[0] == "from-env-0123456789"


def test_an_annotator_sees_only_their_own_answer_on_a_shared_task(fb):
    ann, bob = fb.annotator("ann"), fb.annotator("bob")
    task = fb.next(ann)
    fb.answer(ann, task, good_answer(task, comment="ann's secret note"))
    while (t := fb.next(bob)) is not None:
        assert "secret" not in str(t)
        fb.answer(bob, t)
