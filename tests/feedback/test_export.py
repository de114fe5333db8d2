"""Import → annotate (API) → export → the §3 records the reward-model trainer reads; stats; the CLI."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from rlhfkit.cli import app
from rlhfkit.data.formats import feedback_to_pairs, read_records
from rlhfkit.feedback.db import Answer, Assignment, Database, Task
from rlhfkit.feedback.export import export_records, stats

from .conftest import ADMIN, auth, good_answer


def prefer_longest(task: dict) -> dict:
    """A consistent annotator: longer responses are better."""
    by_len = sorted(task["responses"], key=lambda r: -len(r["text"]))
    if task["kind"] == "compare":
        a, b = task["responses"]
        return good_answer(task, choice="a" if len(a["text"]) > len(b["text"]) else "b", strength="clearly")
    if task["kind"] == "rank":
        return good_answer(task, ranking=[r["id"] for r in by_len])
    if task["kind"] == "rate":
        return good_answer(task, score=min(7, max(1, len(task["responses"][0]["text"]) // 2 - 1)))
    return good_answer(task)


def prefer_shortest(task: dict) -> dict:
    """The opposite annotator."""
    body = prefer_longest(task)
    if task["kind"] == "compare":
        body["choice"] = {"a": "b", "b": "a"}[body["choice"]]
    elif task["kind"] == "rank":
        body["ranking"] = body["ranking"][::-1]
    elif task["kind"] == "rate":
        body["score"] = 8 - body["score"]
    return body


def test_import_annotate_export_round_trip_gives_records_the_trainer_reads(fb, tmp_path):
    for name in ("ann", "bob"):
        fb.answer_all(fb.annotator(name), prefer_longest)
    path = tmp_path / "feedback.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in export_records(fb.db, "demo", "all")))
    records = read_records(path, "auto")
    kinds = {("chosen" in r, "ranking" in r, "score" in r, "edited" in r) for r in records}
    assert len(kinds) == 4  # pairs, rankings, ratings and edits
    assert all("annotator" in r for r in records)
    pairs = feedback_to_pairs(records)
    # Every preference pair prefers the longer response, except the edits (edited ≻ original).
    bad = [p for p in pairs if not p.chosen.endswith("(edited)") and len(p.chosen) <= len(p.rejected)]
    assert pairs and not bad, bad
    rankings = [r for r in records if "ranking" in r]
    assert len(rankings) == 2 and all(r["annotator"] == "merged" and r["agreement"] == 1.0 for r in rankings)
    assert any("messages" in r for r in records)  # chat prompts stay chat prompts
    # ... and `rlhf rm train` reads the export as it is.
    rm = tmp_path / "rm"
    r = CliRunner().invoke(app, ["rm", "train", "--model", "tiny-minilm", "--data", str(path), "--output", str(rm),
                                 "--max-steps", "2", "--batch-size", "2", "--set", "report_to=none",
                                 "--set", "eval_fraction=0"])
    assert r.exit_code == 0, r.output
    logged = [json.loads(line) for line in (rm / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in logged] == [1, 2] and all("accuracy" in m for m in logged)
    assert (rm / "reward_stats.json").exists() and (rm / "config.json").exists()


def test_each_format_holds_only_its_kind_and_leaves_out_gold_tasks(fb, tmp_path):
    for name in ("ann", "bob"):
        fb.answer_all(fb.annotator(name), prefer_longest)
    for fmt, kind, n in [("pairs", "preference", 12), ("rankings", "ranking", 2), ("ratings", "rating", 12),
                         ("edits", "edit", 4)]:
        path = tmp_path / f"{fmt}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in export_records(fb.db, "demo", fmt)))
        records = read_records(path, kind)
        assert len(records) == n and not any("sky" in json.dumps(r) for r in records), fmt


def test_rankings_can_be_exported_per_annotator(fb):
    for name in ("ann", "bob"):
        fb.answer_all(fb.annotator(name), prefer_longest)
    per = list(export_records(fb.db, "demo", "rankings", merge=False))
    assert sorted(r["annotator"] for r in per) == ["ann", "ann", "bob", "bob"]


def test_stats_report_progress_gold_accuracy_and_agreement(fb):
    fb.answer_all(fb.annotator("good"), prefer_longest)
    fb.answer_all(fb.annotator("contrarian"), prefer_shortest)
    st = stats(fb.db, "demo")
    people = {a["annotator"]: a for a in st["annotators"]}
    assert people["good"]["done"] == people["contrarian"]["done"] == 20
    assert people["good"]["gold_answered"] == 4 and people["good"]["gold_accuracy"] == 1.0
    assert people["contrarian"]["gold_accuracy"] < 0.5
    assert st["agreement"]["compare"]["pairwise"] == 0.0 and st["agreement"]["compare"]["alpha"] < 0
    assert st["agreement"]["edit"]["pairwise"] == 1.0  # both kept the same edit
    assert st["kinds"]["rank"] == {"tasks": 3, "gold": 1, "answered": 3, "answers": 6}


def test_cli_stats_prints_annotator_names_with_brackets_as_typed(fb, db_url):
    for name in ("[bold]mallory[red]", "Sam [intern]"):  # rich would colour the first and drop "[intern]"
        fb.answer_all(fb.annotator(name), prefer_longest)
    r = CliRunner().invoke(app, ["feedback", "stats", "--db", db_url, "--project", "demo"])
    assert r.exit_code == 0, r.output
    assert "[bold]mallory[red]" in r.output and "Sam [intern]" in r.output


def test_cli_import_stats_and_export(tmp_path, candidates, gold_file):
    db = str(tmp_path / "cli.db")
    runner = CliRunner()
    guide = tmp_path / "guidelines.md"
    guide.write_text("Prefer correct, kind answers.")
    r = runner.invoke(app, ["feedback", "import", "--db", db, "--project", "demo", "--candidates", str(candidates),
                            "--kinds", "rate,compare", "--gold", str(gold_file), "--guidelines", str(guide),
                            "--annotators-per-task", "2"])
    assert r.exit_code == 0, r.output
    assert "15 tasks" in r.output and "3 gold tasks" in r.output
    r = runner.invoke(app, ["feedback", "import", "--db", db, "--project", "demo", "--candidates", str(candidates),
                            "--kinds", "rate,vote"])
    assert r.exit_code == 2 and "--kinds" in r.output
    r = runner.invoke(app, ["feedback", "stats", "--db", db, "--project", "demo", "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["kinds"]["rate"]["tasks"] == 8
    r = runner.invoke(app, ["feedback", "stats", "--db", db, "--project", "demo"])
    assert r.exit_code == 0 and "Krippendorff" in r.output
    out = tmp_path / "pairs.jsonl"
    r = runner.invoke(app, ["feedback", "export", "--db", db, "--project", "demo", "--output", str(out),
                            "--format", "pairs"])
    assert r.exit_code == 0 and out.read_text() == ""  # nobody has answered yet: no pairs
    r = runner.invoke(app, ["feedback", "export", "--db", db, "--project", "nope", "--output", str(out)])
    assert r.exit_code == 2 and "no project named 'nope'" in r.output
    with Database(db).tx() as s:
        from rlhfkit.feedback.db import get_project
        assert get_project(s, "demo").guidelines == "Prefer correct, kind answers."


def test_a_failed_export_names_the_record_and_leaves_the_existing_file_as_it_was(fb, db_url, tmp_path):
    if not fb.db.is_sqlite:
        pytest.skip("PostgreSQL itself refuses to store a lone surrogate")
    fb.answer_all(fb.annotator("ann"))
    with fb.db.tx() as s:  # an answer stored before text was checked on the way in
        ans, task_id = s.execute(select(Answer, Task.id).join(Assignment, Assignment.id == Answer.assignment_id)
                                 .join(Task, Task.id == Assignment.task_id).where(Task.kind == "edit").limit(1)).one()
        ans.payload = {**ans.payload, "edited": "a \udc80 b"}
    out = tmp_path / "exports" / "feedback.jsonl"
    out.parent.mkdir()
    out.write_text('{"kept": true}\n')
    r = CliRunner().invoke(app, ["feedback", "export", "--db", db_url, "--project", "demo", "--output", str(out)])
    assert r.exit_code == 2
    assert f"task {task_id} (edit), annotator 'ann': edited: not valid Unicode: a lone surrogate U+DC80" in r.output
    assert out.read_text() == '{"kept": true}\n' and [p.name for p in out.parent.iterdir()] == ["feedback.jsonl"]
    r = fb.client.get("/api/admin/projects/demo/export", headers=auth(ADMIN))
    assert r.status_code == 409 and r.json()["field"] == "export" and f"task {task_id} (edit)" in r.json()["detail"]


def test_an_export_replaces_the_file_whole_and_keeps_its_permissions(fb, db_url, tmp_path):
    fb.answer_all(fb.annotator("ann"))
    out = tmp_path / "feedback.jsonl"
    out.write_text("old\n")
    out.chmod(0o640)
    r = CliRunner().invoke(app, ["feedback", "export", "--db", db_url, "--project", "demo", "--output", str(out)])
    assert r.exit_code == 0, r.output
    assert len(read_records(out, "auto")) == len(list(export_records(fb.db, "demo"))) > 0
    assert out.stat().st_mode & 0o777 == 0o640 and not list(tmp_path.glob(".feedback.jsonl.*"))  # no temp file left
