"""Revocation and per-project access: disabled annotators, rotated tokens, members-only projects."""

from __future__ import annotations

import json
import time

from fastapi.testclient import TestClient
from typer.testing import CliRunner

from rlhfkit.cli import app as cli
from rlhfkit.feedback.app import create_app

from .conftest import ADMIN, auth, good_answer


def test_a_disabled_annotator_is_refused_at_once_and_an_enabled_one_let_in_again(fb):
    token = fb.annotator("ann")
    assert fb.client.get("/api/me", headers=auth(token)).status_code == 200  # the server now knows the token
    r = fb.client.patch("/api/admin/annotators/ann", json={"disabled": True}, headers=auth(ADMIN))
    assert r.status_code == 200 and r.json()["disabled"] is True
    r = fb.client.get("/api/me", headers=auth(token))
    assert r.status_code == 401 and r.json()["detail"] == "Authorization: annotator 'ann' is disabled; ask the admin"
    fb.client.patch("/api/admin/annotators/ann", json={"disabled": False}, headers=auth(ADMIN))
    assert fb.client.get("/api/me", headers=auth(token)).status_code == 200
    listed = fb.client.get("/api/admin/annotators", headers=auth(ADMIN)).json()
    assert [(a["name"], a["disabled"]) for a in listed] == [("ann", False)]


def test_a_rotated_token_replaces_the_old_one_at_once(fb):
    old = fb.annotator("ann")
    task = fb.next(old)
    r = fb.client.post("/api/admin/annotators/ann/token", headers=auth(ADMIN))
    assert r.status_code == 200 and r.json()["name"] == "ann"
    new = r.json()["token"]
    assert new != old and fb.client.get("/api/me", headers=auth(old)).status_code == 401
    assert fb.next(new)["assignment_id"] == task["assignment_id"]  # the same annotator, holding the same task


def test_a_token_revoked_from_the_command_line_stops_working_within_the_cache_time(db_url, fb):
    server = create_app(db_url, ADMIN, token_cache_seconds=0.5)  # a second server on the same database
    token = fb.annotator("ann")
    with TestClient(server) as client:
        assert client.get("/api/me", headers=auth(token)).status_code == 200
        r = CliRunner().invoke(cli, ["feedback", "rotate-token", "--db", db_url, "--name", "ann"])
        assert r.exit_code == 0, r.output
        new = r.stdout.strip().splitlines()[-1]
        deadline = time.monotonic() + 10  # a poll, not a timing assertion: the cache keeps a token for 0.5 s
        while client.get("/api/me", headers=auth(token)).status_code == 200:
            assert time.monotonic() < deadline, "the old token still works after its cache time"
            time.sleep(0.1)
        assert client.get("/api/me", headers=auth(token)).status_code == 401
        assert client.get("/api/me", headers=auth(new)).json() == {"name": "ann", "reviewer": False}
        r = CliRunner().invoke(cli, ["feedback", "disable-annotator", "--db", db_url, "--name", "ann"])
        assert r.exit_code == 0 and "disabled" in r.output
        while client.get("/api/me", headers=auth(new)).status_code == 200:
            assert time.monotonic() < deadline, "a disabled annotator still gets in after the cache time"
            time.sleep(0.1)
        r = CliRunner().invoke(cli, ["feedback", "enable-annotator", "--db", db_url, "--name", "ann"])
        assert r.exit_code == 0
        r = CliRunner().invoke(cli, ["feedback", "disable-annotator", "--db", db_url, "--name", "nobody"])
        assert r.exit_code == 2 and "--name: no annotator named 'nobody'" in r.output
    server.state.db.dispose()


def test_an_annotator_outside_a_members_only_project_gets_403_on_all_of_it(fb):
    ann, bob = fb.annotator("ann"), fb.annotator("bob")
    held = fb.next(ann)  # ann holds a task before the project closes
    r = fb.client.put("/api/admin/projects/demo/members/bob", headers=auth(ADMIN))
    assert r.status_code == 200 and r.json() == {"project": "demo", "open_to_all": False, "members": ["bob"]}
    assert fb.client.get("/api/projects", headers=auth(ann)).json() == []
    aid = held["assignment_id"]
    for method, path in [("GET", "/api/projects/demo"), ("GET", "/api/projects/demo/next"),
                         ("POST", "/api/projects/demo/claim"), ("GET", "/api/projects/demo/last"),
                         ("GET", f"/api/assignments/{aid}"), ("POST", f"/api/assignments/{aid}/skip"),
                         ("POST", f"/api/assignments/{aid}/answer")]:
        r = fb.client.request(method, path, headers=auth(ann), json=good_answer(held) if "answer" in path else {"n": 1})
        assert r.status_code == 403 and r.json()["field"] == "project", (method, path, r.text)
    assert [p["name"] for p in fb.client.get("/api/projects", headers=auth(bob)).json()] == ["demo"]
    assert fb.answer(bob, fb.next(bob)).status_code == 201
    r = fb.client.delete("/api/admin/projects/demo/members/bob", headers=auth(ADMIN))
    assert r.json() == {"project": "demo", "open_to_all": False, "members": []}  # removing never opens it
    assert fb.client.get("/api/projects/demo/next", headers=auth(bob)).status_code == 403
    r = fb.client.put("/api/admin/projects/demo", json={"open_to_all": True}, headers=auth(ADMIN))
    assert r.status_code == 200 and r.json()["open_to_all"] is True
    assert fb.answer(ann, held).status_code == 201


def test_a_project_is_open_to_all_until_it_gets_a_member(fb):
    r = fb.client.put("/api/admin/projects/fresh", json={"guidelines": "Short answers win."}, headers=auth(ADMIN))
    assert r.status_code == 200 and r.json()["open_to_all"] is True
    members = fb.client.get("/api/admin/projects/demo/members", headers=auth(ADMIN)).json()
    assert members == {"project": "demo", "open_to_all": True, "members": []}
    assert fb.next(fb.annotator("ann")) is not None


def test_cli_members_adds_removes_and_opens_a_project(fb, db_url):
    for name in ("ann", "bob"):
        fb.annotator(name)
    run = CliRunner().invoke
    r = run(cli, ["feedback", "members", "--db", db_url, "--project", "demo", "--add", "ann", "--add", "bob"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout) == {"project": "demo", "open_to_all": False, "members": ["ann", "bob"]}
    r = run(cli, ["feedback", "members", "--db", db_url, "--project", "demo", "--remove", "bob"])
    assert json.loads(r.stdout)["members"] == ["ann"]
    r = run(cli, ["feedback", "members", "--db", db_url, "--project", "demo", "--open-to-all"])
    assert json.loads(r.stdout) == {"project": "demo", "open_to_all": True, "members": ["ann"]}
    r = run(cli, ["feedback", "members", "--db", db_url, "--project", "demo", "--add", "nobody"])
    assert r.exit_code == 2 and "--add: no annotator named 'nobody'" in r.output
    assert json.loads(run(cli, ["feedback", "members", "--db", db_url, "--project", "demo"]).stdout)["open_to_all"]


def test_cli_refuses_an_annotator_name_that_cannot_be_stored(tmp_path):
    db = str(tmp_path / "f.db")
    r = CliRunner().invoke(cli, ["feedback", "add-annotator", "--db", db, "--name", "ann \udc80"])
    assert r.exit_code == 2 and "--name: not valid Unicode: a lone surrogate U+DC80" in r.output
    r = CliRunner().invoke(cli, ["feedback", "add-annotator", "--db", db, "--name", "\u200b"])
    assert r.exit_code == 2 and "--name: empty" in r.output
