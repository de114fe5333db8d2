"""The annotation API on a real database (SQLite file; PostgreSQL too when RLHFKIT_TEST_PG_URL is set)."""

from __future__ import annotations

import json
from collections import Counter
from datetime import timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy import text as sql

from rlhfkit.feedback.db import MIGRATIONS, Answer, Assignment, Database, Project, Task, schema_version
from rlhfkit.feedback.export import export_records
from rlhfkit.feedback.importer import import_candidates

from .conftest import ADMIN, CANDIDATES, auth, good_answer, write_jsonl


def test_import_makes_tasks_of_each_kind_with_gold_mixed_in(fb):
    with fb.db.tx() as s:
        kinds = Counter((t.kind, t.is_gold) for t in s.scalars(select(Task)))
    # Two prompts with 3 responses: 3 rate, 1 rank, 3 compare, 1 edit each. The gold prompt (2 responses,
    # known ranking and ratings): 2 rate, 1 rank, 1 compare, and no edit (an edit has no known answer).
    assert kinds == {("rate", False): 6, ("rank", False): 2, ("compare", False): 6, ("edit", False): 2,
                     ("rate", True): 2, ("rank", True): 1, ("compare", True): 1}


def test_each_task_goes_to_n_annotators_and_gold_to_everyone(fb):
    tokens = [fb.annotator(n) for n in ("ann", "bob", "cid")]
    for t in tokens:
        fb.answer_all(t)
    with fb.db.tx() as s:
        per_task = dict(s.execute(select(Assignment.task_id, func.count()).group_by(Assignment.task_id)).all())
        gold = {t.id: t.is_gold for t in s.scalars(select(Task))}
        open_now = s.scalar(select(func.count()).select_from(Task).where(Task.is_open))
        counted = s.scalar(select(Project.open_tasks))
    assert all(per_task[t] == (3 if g else 2) for t, g in gold.items())
    assert open_now == counted == 4  # only the gold tasks stay open: every annotator gets them


def test_an_annotator_holds_at_most_the_cap(fb):
    token = fb.annotator("ann")
    r = fb.client.post("/api/projects/demo/claim", json={"n": 10}, headers=auth(token))
    assert r.status_code == 200 and len(r.json()["tasks"]) == 3 == r.json()["max_held"]
    again = fb.client.post("/api/projects/demo/claim", json={"n": 10}, headers=auth(token)).json()["tasks"]
    assert [t["assignment_id"] for t in again] == [t["assignment_id"] for t in r.json()["tasks"]]
    assert fb.next(token)["assignment_id"] == again[0]["assignment_id"]  # "next" serves the held one first


def test_a_task_shows_no_gold_no_model_and_no_one_elses_answer(fb):
    ann, bob = fb.annotator("ann"), fb.annotator("bob")
    seen = {}
    for task in fb.answer_all(ann):
        seen[task["assignment_id"]] = task
    for task in fb.answer_all(bob):
        assert task["answer"] is None and task["revision"] == 0
        text = str(task)
        assert "gold" not in text and "tiny" not in text and "checkpoint" not in text
    r = fb.client.get("/api/projects/demo/last", headers=auth(bob)).json()["task"]
    assert r["answer"] is not None  # bob sees his own answer, and only his


def test_compare_is_shown_in_random_order_per_annotator(fb, tmp_path):
    import_candidates(fb.db, "order", write_jsonl(tmp_path / "one.jsonl", [CANDIDATES[0]]), "compare",
                      annotators_per_task=30)
    orders = {tuple(r["id"] for r in fb.next(fb.annotator(f"a{i}"), "order")["responses"]) for i in range(30)}
    assert orders == {(0, 1), (1, 0)}  # the same order 30 times would have probability 2 / 2**30


def test_the_compare_choice_maps_to_the_shown_response_and_the_order_is_recorded(fb):
    token = fb.annotator("ann")
    while (task := fb.next(token)) is not None:
        if task["kind"] == "compare":
            fb.answer(token, task, good_answer(task, choice="b", strength="much"))
            with fb.db.tx() as s:
                a = s.get(Assignment, task["assignment_id"])
                payload = s.scalar(select(Answer.payload).where(Answer.assignment_id == a.id))
            assert payload["shown"] == a.display_order == [r["id"] for r in task["responses"]]
            assert payload["better"] == task["responses"][1]["id"] and payload["margin"] == 3.0
        else:
            fb.answer(token, task)
    pairs = list(export_records(fb.db, "demo", "pairs"))
    assert len(pairs) == 6 and all(p["margin"] == 3.0 and p["annotator"] == "ann" for p in pairs)


def _first(fb, token, kind):
    while (task := fb.next(token)) is not None:
        if task["kind"] == kind:
            return task
        fb.answer(token, task)
    raise AssertionError(f"no {kind} task")


def test_rank_accepts_ties_a_partial_ranking_and_none_acceptable(fb):
    token = fb.annotator("ann")
    task = _first(fb, token, "rank")
    ids = [r["id"] for r in task["responses"]]
    assert fb.answer(token, task, good_answer(task, ranking=[[ids[0], ids[1]], ids[2]])).status_code == 201
    task = _first(fb, token, "rank")
    body = good_answer(task, ranking=[task["responses"][2]["id"], task["responses"][0]["id"]], none_acceptable=True)
    assert fb.answer(token, task, body).status_code == 201
    with fb.db.tx() as s:
        payloads = [p for p in s.scalars(select(Answer.payload)) if "ranking" in p]
    assert payloads[0]["ranking"] == [sorted([ids[0], ids[1]]), [ids[2]]] and not payloads[0]["partial"]
    assert payloads[1]["partial"] and payloads[1]["none_acceptable"]
    task = _first(fb, token, "rank")
    assert fb.answer(token, task, good_answer(task, ranking=[], none_acceptable=True)).status_code == 201


def test_edit_keeps_every_revision_and_exports_the_latest(fb):
    token = fb.annotator("ann")
    task = _first(fb, token, "edit")
    for text in ("first try", "second try"):
        r = fb.answer(token, task, good_answer(task, edited=text))
        assert r.status_code == 201
    assert r.json()["revision"] == 2
    with fb.db.tx() as s:
        kept = list(s.scalars(select(Answer.payload).where(Answer.assignment_id == task["assignment_id"])
                              .order_by(Answer.revision)))
    assert [p["edited"] for p in kept] == ["first try", "second try"]
    edits = list(export_records(fb.db, "demo", "edits"))
    assert [(e["edited"], e["revisions"]) for e in edits] == [("second try", 2)]


def test_going_back_changes_the_last_answer(fb):
    token = fb.annotator("ann")
    task = _first(fb, token, "rate")
    fb.answer(token, task, good_answer(task, score=2))
    last = fb.client.get("/api/projects/demo/last", headers=auth(token)).json()["task"]
    assert last["assignment_id"] == task["assignment_id"] and last["answer"]["score"] == 2
    assert fb.answer(token, last, good_answer(last, score=6)).json()["revision"] == 2
    ratings = [r for r in export_records(fb.db, "demo", "ratings")]
    assert [r["score"] for r in ratings] == [6]


def test_a_skipped_task_goes_to_someone_else_and_not_back(fb):
    ann, bob, cid = fb.annotator("ann"), fb.annotator("bob"), fb.annotator("cid")
    task = fb.next(ann)
    r = fb.client.post(f"/api/assignments/{task['assignment_id']}/skip", headers=auth(ann))
    assert r.status_code == 200 and r.json()["status"] == "skipped"
    assert fb.answer(ann, task).status_code == 409
    others = fb.answer_all(bob) + fb.answer_all(cid)
    mine = fb.answer_all(ann)
    with fb.db.tx() as s:
        task_of = {a.id: a.task_id for a in s.scalars(select(Assignment))}
    skipped_task = task_of[task["assignment_id"]]
    assert skipped_task in {task_of[x["assignment_id"]] for x in others}
    assert skipped_task not in {task_of[x["assignment_id"]] for x in mine}
    progress = fb.client.get("/api/projects/demo", headers=auth(ann)).json()["progress"]
    assert progress["skipped"] == 1 and progress["available"] == 0


def test_a_task_held_too_long_goes_to_someone_else_and_its_owner_may_still_answer(fb):
    r = fb.client.put("/api/admin/projects/demo", json={"annotators_per_task": 1, "hold_minutes": 30},
                      headers=auth(ADMIN))
    assert r.status_code == 200
    ann, bob = fb.annotator("ann"), fb.annotator("bob")
    left = fb.next(ann)
    with fb.db.tx() as s:  # ann walked away two hours ago
        a = s.get(Assignment, left["assignment_id"])
        a.assigned_at = a.assigned_at - timedelta(hours=2)
        task_id = a.task_id
    taken = fb.next(bob)
    with fb.db.tx() as s:
        assert s.get(Assignment, taken["assignment_id"]).task_id == task_id
        assert s.get(Assignment, left["assignment_id"]).status == "expired"
    assert fb.next(ann)["assignment_id"] != left["assignment_id"]
    assert fb.answer(ann, left).status_code == 201  # a late answer is still kept
    with fb.db.tx() as s:
        assert s.get(Assignment, left["assignment_id"]).status == "done"


@pytest.mark.parametrize("kind, body, status, field", [
    ("rate", {"score": 9}, 422, "score"),
    ("rate", {"score": "5"}, 422, "score"),
    ("rate", {}, 422, "score"),
    ("rate", {"score": 5, "comment": 3}, 422, "comment"),
    ("compare", {"choice": "c"}, 422, "choice"),
    ("compare", {"choice": "a"}, 422, "strength"),
    ("rank", {"ranking": [0, 0]}, 422, "ranking[1]"),
    ("rank", {"ranking": [0, 7]}, 422, "ranking[1]"),
    ("rank", {"ranking": [0]}, 422, "ranking"),
    ("edit", {"edited": "   "}, 422, "edited"),
    ("edit", {"edited": None}, 422, "edited"),
    ("edit", {"edited": "\u200b"}, 422, "edited"),  # zero-width characters only: no edit at all
    ("edit", {"edited": "\u200b\u200c\u200d\u2060\ufeff \u00ad"}, 422, "edited"),
    ("rate", {"score": 5, "sore": 6}, 422, "sore"),  # a misspelt field is refused, not ignored
])
def test_a_bad_answer_is_a_4xx_naming_the_field(fb, kind, body, status, field):
    token = fb.annotator("ann")
    task = _first(fb, token, kind)
    r = fb.answer(token, task, {**body, "submission_id": "sub-0123456789"})
    assert r.status_code == status and r.json()["field"] == field and r.json()["detail"].startswith(field + ":")


def test_malformed_requests_name_what_is_wrong(fb):
    token = fb.annotator("ann")
    task = fb.next(token)
    r = fb.client.post(f"/api/assignments/{task['assignment_id']}/answer", json=good_answer(task, submission_id="x"),
                       headers=auth(token))
    assert r.status_code == 422 and r.json()["field"] == "submission_id"
    r = fb.client.post(f"/api/assignments/{task['assignment_id']}/answer", content=b'{"score": 5,\n not json',
                       headers={**auth(token), "Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["field"] == "body"
    assert r.json()["detail"].startswith("body: invalid JSON: ") and "(line 2, column 2)" in r.json()["detail"]
    r = fb.client.post(f"/api/assignments/{task['assignment_id']}/answer", json=[1, 2], headers=auth(token))
    assert r.status_code == 422 and r.json()["field"] == "body"
    assert fb.client.get("/api/projects/nope/next", headers=auth(token)).json()["field"] == "project"
    assert fb.client.get("/api/assignments/99999", headers=auth(token)).status_code == 404
    r = fb.client.post("/api/projects/demo/claim", json={"n": 0}, headers=auth(token))
    assert r.status_code == 422 and r.json()["field"] == "n"


def test_a_retried_submission_is_stored_once(fb):
    token = fb.annotator("ann")
    task = fb.next(token)
    body = good_answer(task)
    first, retry = fb.answer(token, task, body), fb.answer(token, task, body)
    assert first.status_code == 201 and retry.status_code == 200
    assert retry.json() == {**first.json(), "duplicate": True}
    with fb.db.tx() as s:
        assert s.scalar(select(func.count()).select_from(Answer)) == 1
    other = fb.next(token)
    r = fb.answer(token, other, good_answer(other, submission_id=body["submission_id"]))
    assert r.status_code == 409 and r.json()["field"] == "submission_id"


def test_the_schema_is_created_once_and_reopening_keeps_the_data(fb, db_url):
    token = fb.annotator("ann")
    fb.answer(token, fb.next(token))
    again = Database(db_url)
    assert schema_version(again.engine) == len(MIGRATIONS) == again.version
    with again.tx() as s:
        assert s.scalar(select(func.count()).select_from(Answer)) == 1
    again.dispose()


def test_admin_sets_up_a_project_over_the_api(fb):
    r = fb.client.put("/api/admin/projects/fresh", json={"guidelines": "Short answers win.", "max_held": 2},
                      headers=auth(ADMIN))
    assert r.status_code == 200 and r.json()["max_held"] == 2
    r = fb.client.put("/api/admin/projects/fresh", json={"max_held": 0}, headers=auth(ADMIN))
    assert r.status_code == 422 and r.json()["field"] == "max_held"
    token = fb.annotator("ann")
    names = [p["name"] for p in fb.client.get("/api/projects", headers=auth(token)).json()]
    assert names == ["demo", "fresh"]
    assert fb.client.post("/api/admin/annotators", json={"name": "ann"}, headers=auth(ADMIN)).status_code == 409


def post_raw(fb, path: str, token: str, body: dict, method: str = "POST"):
    """``body`` as JSON with ASCII escapes: a lone surrogate travels as the six characters \\udc80, as a client
    that builds JSON by hand would send it (httpx itself refuses to encode one)."""
    return fb.client.request(method, path, content=json.dumps(body).encode("ascii"),
                             headers={**auth(token), "Content-Type": "application/json"})


@pytest.mark.parametrize("field, body", [
    ("edited", {"edited": "a \udc80 b"}),
    ("edited", {"edited": "a \x00 b"}),
    ("comment", {"edited": "fine", "comment": "\ud800"}),
    ("submission_id", {"edited": "fine", "submission_id": "sub-\udc80-0123456789"}),
    ("\\udc80", {"edited": "fine", "\udc80": 1}),
])
def test_text_that_is_not_unicode_is_refused_and_the_annotators_views_and_export_keep_working(fb, field, body):
    token = fb.annotator("ann")
    task = _first(fb, token, "edit")
    r = post_raw(fb, f"/api/assignments/{task['assignment_id']}/answer", token,
                 {"submission_id": "sub-0123456789", **body})
    assert r.status_code == 422 and r.json()["field"] == field and r.json()["detail"].startswith(field + ": ")
    assert fb.answer(token, task, good_answer(task)).status_code == 201
    assert fb.client.get(f"/api/assignments/{task['assignment_id']}", headers=auth(token)).status_code == 200
    assert fb.client.get("/api/projects/demo/last", headers=auth(token)).status_code == 200
    assert fb.client.get("/api/admin/projects/demo/export", headers=auth(ADMIN)).status_code == 200


def test_names_and_guidelines_that_are_not_unicode_are_refused(fb):
    r = post_raw(fb, "/api/admin/annotators", ADMIN, {"name": "ann \udc80"})
    assert r.status_code == 422 and r.json()["field"] == "name" and "lone surrogate U+DC80" in r.json()["detail"]
    r = post_raw(fb, "/api/admin/projects/demo", ADMIN, {"guidelines": "Be \udc80 kind."}, method="PUT")
    assert r.status_code == 422 and r.json()["field"] == "guidelines"
    token = fb.annotator("ann")
    assert fb.client.get("/api/projects", headers=auth(token)).json()[0]["guidelines"] == "Be kind."


@pytest.mark.parametrize("assignment_id", [0, -1, 2**31, 2**63, 2**64, 10**30])
def test_an_assignment_id_out_of_range_is_404(fb, assignment_id):
    token = fb.annotator("ann")
    for method, path in [("GET", ""), ("POST", "/skip"), ("POST", "/answer")]:
        r = fb.client.request(method, f"/api/assignments/{assignment_id}{path}", headers=auth(token),
                              json={"score": 5, "submission_id": "sub-0123456789"})
        assert r.status_code == 404 and r.json()["field"] == "assignment", (method, path, r.text)


@pytest.mark.parametrize("key, value", [("max_held", 2**63), ("max_held", 2**31), ("annotators_per_task", 10**6),
                                        ("hold_minutes", 2**63), ("hold_minutes", -1)])
def test_project_settings_out_of_range_are_422_naming_the_setting(fb, key, value):
    r = fb.client.put("/api/admin/projects/demo", json={key: value}, headers=auth(ADMIN))
    assert r.status_code == 422 and r.json()["field"] == key
    r = fb.client.post("/api/projects/demo/claim", json={"n": 2**63}, headers=auth(fb.annotator("ann")))
    assert r.status_code == 422 and r.json()["field"] == "n"


def test_an_old_database_is_upgraded_and_its_projects_stay_open_to_all(fb, db_url):
    token = fb.annotator("ann")
    fb.answer(token, fb.next(token))
    fb.db.dispose()
    old = Database(db_url)  # take it back to schema version 1, as a database made before membership existed
    with old.engine.begin() as conn:
        conn.execute(sql("DROP TABLE project_members"))
        conn.execute(sql("ALTER TABLE annotators DROP COLUMN disabled"))
        conn.execute(sql("ALTER TABLE projects DROP COLUMN open_to_all"))
        conn.execute(sql("UPDATE schema_version SET version = 1"))
    old.dispose()
    again = Database(db_url)
    assert schema_version(again.engine) == 3  # membership (2), then review (3)
    with again.tx() as s:
        assert s.scalar(select(Project.open_to_all)) is True
        assert s.scalar(select(func.count()).select_from(Answer)) == 1
    again.dispose()
    assert fb.next(token) is not None  # the running app sees the upgraded schema
