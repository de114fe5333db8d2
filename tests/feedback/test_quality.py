"""Quality control that acts: per-annotator stats (gold accuracy, agreement with the others, working seconds,
too-fast answers) and an export that leaves out or down-weights annotators below a gold-accuracy threshold."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from rlhfkit.cli import app
from rlhfkit.data.formats import read_records
from rlhfkit.data.groups import build_groups
from rlhfkit.feedback.db import Annotator, Answer, Assignment
from rlhfkit.feedback.export import GoldRule, export_records, judge_annotators, stats, working_seconds

from .conftest import ADMIN, auth
from .test_export import prefer_longest, prefer_shortest

T0 = datetime(2026, 1, 1, 9, 0, 0)


def test_working_time_starts_at_hand_out_or_at_the_annotators_previous_answer_or_skip_whichever_is_later():
    def at(seconds: float) -> datetime:
        return T0 + timedelta(seconds=seconds)

    # three tasks handed out together at 0; answered at 20 and 50; one skipped at 60; the last answered at 65,
    # then the first one revised at 100 (a revision is not a first answer, but the next clock starts after it)
    events = [(1, "first", at(20), at(0)), (2, "first", at(50), at(0)), (3, "skip", at(60), at(0)),
              (4, "first", at(65), at(0)), (1, "revision", at(100), at(0)), (5, "first", at(103), at(90))]
    assert working_seconds(events) == {1: 20.0, 2: 30.0, 4: 5.0, 5: 3.0}


def test_stats_show_each_annotators_agreement_with_the_others_working_seconds_and_too_fast_answers(fb):
    fb.answer_all(fb.annotator("good"), prefer_longest)
    fb.answer_all(fb.annotator("good2"), prefer_longest)  # takes every task's second place
    fb.answer_all(fb.annotator("contrarian"), prefer_shortest)  # gets only the gold tasks (every annotator does)
    with fb.db.tx() as s:  # the clock as stated, not as the test ran: "good2" took 30 s over each answer, "good" 1 s
        for name, pace in (("good2", 30), ("good", 1)):
            who = s.scalar(select(Annotator.id).where(Annotator.name == name))
            rows = s.execute(select(Answer, Assignment).join(Assignment, Assignment.id == Answer.assignment_id)
                             .where(Assignment.annotator_id == who).order_by(Answer.id)).all()
            for i, (ans, a) in enumerate(rows):
                a.assigned_at, ans.created_at = T0, T0 + timedelta(seconds=pace * (i + 1))
    st = stats(fb.db, "demo", fast_seconds=2.0)
    people = {a["annotator"]: a for a in st["annotators"]}
    assert people["contrarian"]["done"] == people["contrarian"]["gold_answered"] == 4
    assert people["contrarian"]["agreement"] < 0.5 < people["good"]["agreement"] <= 1.0
    assert people["good"]["agreement_units"] > people["contrarian"]["agreement_units"] > 0
    assert people["good2"]["median_seconds"] == pytest.approx(30.0) and people["good2"]["fast_answers"] == 0
    assert people["good"]["fast_answers"] == people["good"]["done"] == 20 and people["good"]["median_seconds"] < 2.0
    r = CliRunner().invoke(app, ["feedback", "stats", "--db", fb.db.url, "--project", "demo", "--fast-seconds", "5"])
    assert r.exit_code == 0, r.output
    table = r.output.split("annotators", 1)[1]
    assert "contrarian" in table and "30.000" in table and "answers under 5 s" in " ".join(table.split())


def answered_by_good_and_contrarian(fb):
    fb.answer_all(fb.annotator("good"), prefer_longest)
    fb.answer_all(fb.annotator("contrarian"), prefer_shortest)


def test_an_export_leaves_out_annotators_below_the_gold_threshold_and_says_whom_and_why(fb):
    answered_by_good_and_contrarian(fb)
    decisions = {d.annotator: d for d in judge_annotators(fb.db, "demo", GoldRule(0.7, "drop"))}
    assert decisions["good"].weight == 1.0 and "gold accuracy 1.00 on 4 gold tasks" in decisions["good"].why
    bad = decisions["contrarian"]
    assert bad.weight == 0.0 and bad.gold_accuracy < 0.7 and bad.why.endswith("below 0.70: left out")
    records = list(export_records(fb.db, "demo", "all", weights={d.annotator: d.weight for d in decisions.values()}))
    assert records and all(r["annotator"] == "good" for r in records)  # merged rankings too: good's alone
    everyone = list(export_records(fb.db, "demo", "all"))
    assert {r["annotator"] for r in everyone} == {"good", "contrarian", "merged"}
    # too few gold answers to judge: kept, and said so
    (kept,) = [d for d in judge_annotators(fb.db, "demo", GoldRule(0.7, "drop", min_answers=5)) if d.annotator == "contrarian"]
    assert kept.weight == 1.0 and "fewer than 5: too few to judge, kept" in kept.why


def mixed(task: dict) -> dict:
    """Rates as the good annotator does and ranks and compares the other way: half the gold tasks right."""
    return prefer_shortest(task) if task["kind"] in ("rank", "compare") else prefer_longest(task)


def test_a_down_weighting_export_gives_their_records_their_gold_accuracy_as_weight_which_training_reads(fb, tmp_path):
    fb.answer_all(fb.annotator("good"), prefer_longest)
    fb.answer_all(fb.annotator("mixed"), mixed)
    decisions = judge_annotators(fb.db, "demo", GoldRule(0.7, "weight"))
    acc = {d.annotator: d.gold_accuracy for d in decisions}
    weights = {d.annotator: d.weight for d in decisions}
    assert weights["mixed"] == acc["mixed"] == 0.5 and weights["good"] == 1.0
    records = list(export_records(fb.db, "demo", "all", weights=weights))
    theirs = [r for r in records if r["annotator"] == "mixed"]
    assert theirs and all(r["weight"] == 0.5 for r in theirs)
    assert all("weight" not in r for r in records if r["annotator"] == "good")
    # a merged ranking follows the heavier annotator and weighs its annotators' mean weight
    merged = [r for r in records if r["annotator"] == "merged"]
    assert merged and all(r["weight"] == 0.75 for r in merged)
    for r in merged:
        by_len = sorted(range(len(r["responses"])), key=lambda i: -len(r["responses"][i]))
        assert r["ranking"] == by_len
    path = tmp_path / "fb.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    pair_weights = {w for g in build_groups(read_records(path, "auto")) for *_, w in g.pairs}
    assert {0.5, 0.75, 1.0} <= pair_weights


def test_cli_export_with_a_gold_threshold_names_each_annotator_and_what_it_did(fb, tmp_path):
    answered_by_good_and_contrarian(fb)
    out = tmp_path / "fb.jsonl"
    r = CliRunner().invoke(app, ["feedback", "export", "--db", fb.db.url, "--project", "demo", "--output", str(out),
                                 "--min-gold-accuracy", "0.7"])
    assert r.exit_code == 0, r.output
    assert "annotator 'contrarian': gold accuracy" in r.output and "left out" in r.output
    assert {rec["annotator"] for rec in read_records(out, "auto")} == {"good"}
    r = CliRunner().invoke(app, ["feedback", "export", "--db", fb.db.url, "--project", "demo", "--output", str(out),
                                 "--min-gold-accuracy", "1.5"])
    assert r.exit_code == 2 and "--min-gold-accuracy: expected a number from 0 to 1" in r.output


def test_the_admin_export_takes_the_gold_threshold_and_names_its_decisions_in_a_header(fb):
    answered_by_good_and_contrarian(fb)
    r = fb.client.get("/api/admin/projects/demo/export", params={"min_gold_accuracy": 0.7}, headers=auth(ADMIN))
    assert r.status_code == 200, r.text
    assert {json.loads(line)["annotator"] for line in r.text.splitlines()} == {"good"}
    decisions = {d["annotator"]: d for d in json.loads(r.headers["X-Quality"])}
    assert decisions["contrarian"]["weight"] == 0.0 and "left out" in decisions["contrarian"]["why"]
    r = fb.client.get("/api/admin/projects/demo/export", params={"min_gold_accuracy": 0.7, "low_gold": "shout"},
                      headers=auth(ADMIN))
    assert r.status_code == 422 and r.json()["field"] == "low_gold" and "drop, weight" in r.json()["detail"]


def test_an_annotators_comment_is_exported_with_the_answer(fb):
    token = fb.annotator("ann")
    fb.answer_all(token, lambda task: {**prefer_longest(task), "comment": f"note on {task['kind']}"})
    records = list(export_records(fb.db, "demo", "all"))
    plain = [r for r in records if "ranking" not in r]
    assert plain and all(r["comment"] == f"note on {kind}" for r in plain
                         for kind in [("compare" if "chosen" in r else "rate" if "score" in r else "edit")])
    ranked = [r for r in records if "ranking" in r]
    assert ranked and all(r["comments"] == [{"annotator": "ann", "comment": "note on rank"}] for r in ranked)
