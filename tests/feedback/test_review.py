"""Review: a reviewer sees the tasks whose annotators disagree most, resolves them beside their answers (nothing
overwritten), and export takes every answer, the majority or the resolutions."""

from __future__ import annotations

from sqlalchemy import func, select, text
from typer.testing import CliRunner

from rlhfkit.cli import app
from rlhfkit.config import ConfigError
from rlhfkit.feedback.db import Answer, Database, Resolution
from rlhfkit.feedback.export import export_records

from .conftest import ADMIN, auth
from .test_export import prefer_longest, prefer_shortest


def make_reviewer(fb, name: str = "rev") -> str:
    token = fb.annotator(name)
    r = fb.client.patch(f"/api/admin/annotators/{name}", json={"reviewer": True}, headers=auth(ADMIN))
    assert r.status_code == 200 and r.json()["reviewer"] is True, r.text
    return token


def disagreeing(fb) -> str:
    fb.answer_all(fb.annotator("good"), prefer_longest)
    fb.answer_all(fb.annotator("contrarian"), prefer_shortest)
    return make_reviewer(fb)


def test_the_queue_holds_the_tasks_whose_annotators_disagree_least_agreed_first_with_every_answer_in_words(fb):
    token = disagreeing(fb)
    assert fb.client.get("/api/me", headers=auth(token)).json() == {"name": "rev", "reviewer": True}
    r = fb.client.get("/api/review/projects/demo", headers=auth(token))
    assert r.status_code == 200, r.text
    tasks = r.json()["tasks"]
    kinds = {t["kind"] for t in tasks}
    assert kinds == {"rate", "rank", "compare"}  # both annotators kept the same edit: nothing to review there
    assert [t["agreement"] for t in tasks] == sorted(t["agreement"] for t in tasks) and tasks[0]["agreement"] == 0.0
    assert all(sorted(a["annotator"] for a in t["answers"]) == ["contrarian", "good"] for t in tasks)
    assert all("sky" not in t["prompt"] for t in tasks)  # gold tasks have a known answer: not reviewed
    compare = next(t for t in tasks if t["kind"] == "compare")
    says = {a["annotator"]: a["says"] for a in compare["answers"]}
    longer = max(range(2), key=lambda i: len(compare["responses"][i]["text"]))
    assert says["good"] == f"{'AB'[longer]} clearly better" and says["contrarian"] == f"{'AB'[1 - longer]} clearly better"


def test_only_a_reviewer_resolves_and_the_resolution_sits_beside_the_answers_which_stay_as_they_were(fb):
    token = disagreeing(fb)
    plain = fb.annotator("plain")
    assert fb.client.get("/api/review/projects/demo", headers=auth(plain)).status_code == 403
    tasks = fb.client.get("/api/review/projects/demo", headers=auth(ADMIN)).json()["tasks"]  # the admin may look
    compare = next(t for t in tasks if t["kind"] == "compare")
    assert fb.client.post(f"/api/review/tasks/{compare['task_id']}", json={"choice": "a", "strength": "much"},
                          headers=auth(ADMIN)).status_code == 403  # a resolution is a person's answer
    with fb.db.tx() as s:
        before = sorted((a.id, a.payload.get("better")) for a in s.scalars(select(Answer)))
    r = fb.client.post(f"/api/review/tasks/{compare['task_id']}", json={"choice": "b", "strength": "much"},
                       headers=auth(token))
    assert r.status_code == 201 and r.json()["says"] == "B much better", r.text
    bad = fb.client.post(f"/api/review/tasks/{compare['task_id']}", json={"choice": "c"}, headers=auth(token))
    assert bad.status_code == 422 and bad.json()["field"] == "choice"
    assert fb.client.post("/api/review/tasks/999999", json={"choice": "a"}, headers=auth(token)).status_code == 404
    with fb.db.tx() as s:
        assert sorted((a.id, a.payload.get("better")) for a in s.scalars(select(Answer))) == before
        (res,) = s.scalars(select(Resolution))
        assert res.task_id == compare["task_id"] and res.payload["better"] == 1 and res.payload["margin"] == 3.0
    queue = fb.client.get("/api/review/projects/demo", headers=auth(token)).json()["tasks"]
    assert queue[-1]["task_id"] == compare["task_id"]  # resolved: after the unresolved ones
    assert queue[-1]["resolution"] == {"reviewer": "rev", "answer": res.payload, "says": "B much better"}


def test_export_takes_the_resolution_where_there_is_one_and_every_answer_elsewhere(fb):
    token = disagreeing(fb)
    tasks = fb.client.get("/api/review/projects/demo", headers=auth(token)).json()["tasks"]
    compare = next(t for t in tasks if t["kind"] == "compare")
    fb.client.post(f"/api/review/tasks/{compare['task_id']}", json={"choice": "a", "strength": "clearly"}, headers=auth(token))
    fb.client.post(f"/api/review/tasks/{compare['task_id']}", json={"choice": "b", "strength": "slightly"}, headers=auth(token))
    a, b = (resp["text"] for resp in compare["responses"])
    pairs = list(export_records(fb.db, "demo", "pairs", labels="resolved"))
    mine = [p for p in pairs if {p["chosen"], p["rejected"]} == {a, b} and p["prompt"] == compare["prompt"]]
    assert mine == [{"prompt": compare["prompt"], "chosen": b, "rejected": a, "margin": 1.0, "annotator": "review:rev",
                     "strength": "slightly", "resolved_from": ["contrarian", "good"]}]  # the latest resolution
    assert len(pairs) == len(list(export_records(fb.db, "demo", "pairs"))) - 1  # two answers became one label


def test_export_by_majority_gives_one_record_per_task_from_three_annotators(fb):
    r = fb.client.put("/api/admin/projects/demo", json={"annotators_per_task": 3}, headers=auth(ADMIN))
    assert r.status_code == 200, r.text
    for name, choose in (("good", prefer_longest), ("good2", prefer_longest), ("contrarian", prefer_shortest)):
        fb.answer_all(fb.annotator(name), choose)
    pairs = list(export_records(fb.db, "demo", "pairs", labels="majority"))
    assert pairs and all(p["annotator"] == "majority" and len(p["chosen"]) > len(p["rejected"]) for p in pairs)
    assert all(sorted(p["annotators"]) == ["contrarian", "good", "good2"] for p in pairs)
    ratings = list(export_records(fb.db, "demo", "ratings", labels="majority"))
    everyone = list(export_records(fb.db, "demo", "ratings"))
    assert len(everyone) == 3 * len(ratings)
    good = {(r["prompt"] if "prompt" in r else r["messages"][-1]["content"], r["response"]): r["score"]
            for r in everyone if r["annotator"] == "good"}
    assert all(r["score"] == good[(r.get("prompt") or r["messages"][-1]["content"], r["response"])] for r in ratings)


def test_cli_makes_and_unmakes_a_reviewer_and_exports_by_labels(fb, tmp_path):
    fb.annotator("rev")
    runner = CliRunner()
    r = runner.invoke(app, ["feedback", "reviewer", "--db", fb.db.url, "--name", "rev"])
    assert r.exit_code == 0 and "rev: reviewer" in r.output
    rows = fb.client.get("/api/admin/annotators", headers=auth(ADMIN)).json()
    assert next(a for a in rows if a["name"] == "rev")["reviewer"] is True
    r = runner.invoke(app, ["feedback", "reviewer", "--db", fb.db.url, "--name", "rev", "--off"])
    assert r.exit_code == 0 and "no longer a reviewer" in r.output
    r = runner.invoke(app, ["feedback", "export", "--db", fb.db.url, "--project", "demo", "--output",
                            str(tmp_path / "x.jsonl"), "--labels", "loudest"])
    assert isinstance(r.exception, ConfigError) and "labels: expected one of 'all', 'majority', 'resolved'" in str(r.exception)


def test_a_database_made_before_review_existed_is_migrated_with_its_answers_kept(fb, db_url):
    fb.answer_all(fb.annotator("good"), prefer_longest)
    with fb.db.engine.begin() as conn:  # back to schema version 2: no reviewer column, no resolutions table
        conn.execute(text("DROP TABLE resolutions"))
        conn.execute(text("ALTER TABLE annotators DROP COLUMN reviewer"))
        conn.execute(text("UPDATE schema_version SET version = 2"))
        n_answers = conn.execute(select(func.count()).select_from(Answer)).scalar()
    db = Database(db_url)
    try:
        assert db.version == 3
        with db.tx() as s:
            assert s.scalar(select(func.count()).select_from(Answer)) == n_answers > 0
            assert s.scalar(select(func.count()).select_from(Resolution)) == 0
            assert s.execute(text("SELECT reviewer FROM annotators WHERE name = 'good'")).scalar() in (False, 0)
    finally:
        db.dispose()
