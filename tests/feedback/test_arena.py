"""The arena: people judge two models' answers blind; their win rate with its interval, beside the gold judge's and
the reward model's, and how often each agrees with people. A real database; answers go through the HTTP API."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from rlhfkit.feedback.app import create_app
from rlhfkit.feedback.arena import arena_results, human_summary, make_arena
from rlhfkit.feedback.db import Database
from rlhfkit.feedback.export import export_records, stats
from tests.conftest import write_jsonl

from .conftest import ADMIN, auth

# Three prompts × 2 samples; the model's answer to prompt 2, sample 1 is the reference's (not asked: a tie).
ANSWERS = {  # (prompt, sample) → (model's answer, reference's answer, model gold, reference gold)
    (0, 0): ("Leaves catch light and make sugar.", "Plants are green.", 0.9, 0.2),
    (0, 1): ("Light, water and air become food.", "It is a thing plants do.", 0.8, 0.3),
    (1, 0): ("Seven eights are fifty-six.", "Fifty-four, I think.", 0.7, 0.1),
    (1, 1): ("56.", "The answer is 56, well done.", 0.4, 0.6),
    (2, 0): ("Rain falls from clouds.", "Water comes down.", 0.5, 0.5),
    (2, 1): ("Clouds hold drops.", "Clouds hold drops.", 0.6, 0.6),
}
PROMPTS = ["Explain photosynthesis.", "What is 7 x 8?", "Why does it rain?"]


def eval_folder(tmp_path):
    ev = tmp_path / "run" / "eval"
    ev.mkdir(parents=True)
    (ev / "eval.json").write_text(json.dumps({"models": [{"name": "sft", "is_reference": True}, {"name": "ppo"},
                                                         {"name": "best-of-4", "best_of": 4}]}))
    rows = []
    for (i, j), (m, r, gm, gr) in ANSWERS.items():
        rows.append({"index": i, "sample": j, "prompt": PROMPTS[i], "model": "ppo", "response": m, "gold_score": gm,
                     "rm_score": 1 - gm})
        rows.append({"index": i, "sample": j, "prompt": PROMPTS[i], "model": "sft", "response": r, "gold_score": gr,
                     "rm_score": 1 - gr - 0.01})  # the reward model reverses the gold judge's order everywhere
    write_jsonl(ev / "samples.jsonl", rows)
    return ev


def test_the_arena_is_blind_and_the_peoples_win_rate_and_agreement_are_counted_as_by_hand(db_url, tmp_path):
    ev = eval_folder(tmp_path)
    db = Database(db_url)
    info = make_arena(db, "arena-demo", ev, annotators_per_task=2)
    assert (info["model"], info["reference"]) == ("ppo", "sft")  # the last policy, not the best-of-N baseline
    assert (info["pairs"], info["tasks"], info["identical"]) == (6, 5, 1)
    assert make_arena(db, "arena-demo", ev, annotators_per_task=2)["tasks"] == 5  # made once: a rerun adds nothing
    db.dispose()
    model_text = {m: (i, j) for (i, j), (m, *_rest) in ANSWERS.items()}

    # ann1 prefers the model's answer everywhere; ann2 the reference's on prompt 1, a tie on (0, 1), both bad on (2, 0).
    plan = {"ann1": {k: "model" for k in ANSWERS}, "ann2": {(0, 0): "model", (0, 1): "tie", (1, 0): "reference",
                                                           (1, 1): "reference", (2, 0): "both_bad"}}
    app = create_app(db_url, ADMIN)
    orders, model_ids = set(), set()
    with TestClient(app) as client:
        for name, wants in plan.items():
            token = client.post("/api/admin/annotators", json={"name": name}, headers=auth(ADMIN)).json()["token"]
            n = 0
            while (task := client.get("/api/projects/arena-demo/next", headers=auth(token)).json()["task"]) is not None:
                assert task["kind"] == "arena" and len(task["responses"]) == 2
                assert "ppo" not in json.dumps(task) and "sft" not in json.dumps(task)  # blind: no model names
                shown = [r["text"] for r in task["responses"]]
                key = next(model_text[t] for t in shown if t in model_text)
                model_at = "ab"[shown.index(ANSWERS[key][0])]
                orders.add(model_at)
                model_ids.add(task["responses"]["ab".index(model_at)]["id"])
                want = wants[key]
                choice = {"model": model_at, "reference": "b" if model_at == "a" else "a"}.get(want, want)
                bad = client.post(f"/api/assignments/{task['assignment_id']}/answer", headers=auth(token),
                                  json={"choice": "neither", "submission_id": f"{name}-bad-{n:04d}"})
                assert bad.status_code == 422 and bad.json()["field"] == "choice"
                r = client.post(f"/api/assignments/{task['assignment_id']}/answer", headers=auth(token),
                                json={"choice": choice, "submission_id": f"{name}-answer-{n:04d}"})
                assert r.status_code == 201, r.text
                n += 1
            assert n == 5
        h = arena_results(app.state.db, ev, n_boot=200)
        pairs = list(export_records(app.state.db, "arena-demo", "pairs"))
        st = stats(app.state.db, "arena-demo")
    app.state.db.dispose()
    assert len(orders) == 2  # each annotator's order is drawn: the model's answer was shown as A and as B
    assert model_ids == {0, 1}  # and the task's own order is random: a response's id does not name its model

    # Per pair, the model's outcome averaged over the two annotators; the identical pair is a tie nobody was asked.
    expected = {(0, 0): 1.0, (0, 1): 0.75, (1, 0): 0.5, (1, 1): 0.5, (2, 0): 0.75, (2, 1): 0.5}
    assert h["people"]["win_rate"] == pytest.approx(sum(expected.values()) / 6)
    assert (h["people"]["wins"], h["people"]["ties"], h["people"]["losses"]) == (3, 3, 0)
    assert h["people"]["n_prompts"] == 3 and h["answers"] == 10 and h["answered_pairs"] == 5
    assert h["choices"]["tie"] == 1 and h["choices"]["both_bad"] == 1
    # Where the annotators' mean chose a side ((0,0), (0,1), (2,0)): the gold judge prefers the model on (0,0) and
    # (0,1) and ties (2,0); the reward model (1 − gold, the reference's 0.01 lower) prefers the reference on the first
    # two and the model on (2,0).
    gold, rm = h["judges"]["gold_score"], h["judges"]["rm_score"]
    assert (gold["agreement"], gold["pairs"], gold["judge_ties"]) == (1.0, 2, 1)
    assert (rm["agreement"], rm["pairs"]) == (pytest.approx(1 / 3), 3)
    assert gold["win_rate"] == pytest.approx((1 + 1 + 1 + 0 + 0.5 + 0.5) / 6)
    # Between annotators: they agree on (0, 0) only, of the 5 pairs both answered.
    assert h["annotator_agreement"] == pytest.approx(1 / 5)
    assert st["agreement"]["arena"]["tasks_with_2plus"] == 5
    assert json.loads((ev / "human.json").read_text())["people"]["win_rate"] == pytest.approx(h["people"]["win_rate"])
    line = human_summary(h)
    assert line.startswith("win rate of ppo over sft by people: 0.67 [") and "from 2 annotator(s)" in line

    # A side chosen is a preference pair (chosen = the answer people took); ties and "both bad" are left out.
    assert len(pairs) == 5 + 3 and all(set(p) >= {"prompt", "chosen", "rejected", "annotator"} for p in pairs)
    by_model = {ANSWERS[k][0] for k in ANSWERS}
    assert sum(p["chosen"] in by_model for p in pairs) == 5 + 1  # ann1's five, ann2's (0, 0)


def test_the_report_shows_the_peoples_win_rate_beside_the_judges(db_url, tmp_path):
    from rlhfkit.eval.report import build_report

    ev = eval_folder(tmp_path)
    db = Database(db_url)
    make_arena(db, "arena-report", ev)
    empty = arena_results(db, ev, n_boot=50)
    assert empty["answers"] == 0 and empty["answered_pairs"] == 0  # nobody has answered: no verdict yet
    assert human_summary(empty) == "win rate of ppo over sft by people: no answers yet (project arena-report)"
    db.dispose()
    html = build_report(ev.parent).read_text()
    assert "People&#x27;s verdict" in html or "People's verdict" in html
    assert "win rate of ppo over sft by people" in html and "gold judge" in html


def test_an_arena_needs_two_models_and_arena_is_not_an_import_kind(db_url, tmp_path, candidates):
    from rlhfkit.feedback.importer import import_candidates

    ev = eval_folder(tmp_path)
    db = Database(db_url)
    with pytest.raises(ValueError, match="the same as the reference"):
        make_arena(db, "x", ev, model="sft", reference="sft")
    with pytest.raises(ValueError, match="no answers of model 'dpo'"):
        make_arena(db, "x", ev, model="dpo")
    with pytest.raises(ValueError, match="--kinds: arena tasks compare two models"):
        import_candidates(db, "y", candidates, "rank,arena")
    # a project made for other answers (an earlier run's evaluation) is refused, not reused
    make_arena(db, "z", ev)
    rows = [json.loads(line) for line in (ev / "samples.jsonl").read_text().splitlines()]
    rows[0]["response"] = "A new answer from a new run."
    write_jsonl(ev / "samples.jsonl", rows)
    with pytest.raises(ValueError, match="'z' holds other answers than"):
        make_arena(db, "z", ev)
    db.dispose()


def test_rlhf_feedback_arena_makes_the_project_once_and_prints_the_verdict_so_far(tmp_path):
    from typer.testing import CliRunner

    from rlhfkit.cli import app

    ev = eval_folder(tmp_path)
    db = str(tmp_path / "feedback.db")
    runner = CliRunner()
    first = runner.invoke(app, ["feedback", "arena", str(ev), "--db", db, "--project", "demo-arena"])
    assert first.exit_code == 0, first.output
    assert "win rate of ppo over sft by people: no answers yet (project demo-arena)" in first.output
    assert json.loads((ev / "arena.json").read_text())["tasks"] == 5
    again = runner.invoke(app, ["feedback", "arena", str(ev), "--db", db])  # the name arena.json keeps
    assert again.exit_code == 0 and "arena project demo-arena: 5 pairs to judge" in again.output
    missing = runner.invoke(app, ["feedback", "arena", str(tmp_path), "--db", db])
    assert missing.exit_code == 2 and "no samples.jsonl" in missing.output
    (ev / "eval.json").unlink()
    assert "no eval.json" in runner.invoke(app, ["feedback", "arena", str(ev), "--db", db]).output
