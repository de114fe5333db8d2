"""The thumbs task kind: one key answers a response up or down; exported in the unpaired (KTO) shape that the
reward model and DPO read as ratings 1 and 0; gold accuracy, agreement and the simulated annotator know it."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient

from rlhfkit.data.formats import read_records
from rlhfkit.data.groups import build_groups
from rlhfkit.feedback.app import create_app
from rlhfkit.feedback.db import Database
from rlhfkit.feedback.export import export_records, stats
from rlhfkit.feedback.importer import import_candidates
from tests.conftest import write_jsonl

from .conftest import ADMIN, CANDIDATES, GOLD, auth
from .test_simulate import candidates_file, run, words


DOWN = {"It is a process.", "Maybe 54", "Yes."}  # the gold task's "Yes." is rated 1: down; "No, it is blue." 7: up


def test_a_thumbs_answer_is_stored_exported_in_the_unpaired_shape_and_scored_on_gold(db_url, tmp_path):
    db = Database(db_url)
    import_candidates(db, "demo", write_jsonl(tmp_path / "c.jsonl", CANDIDATES), "thumbs",
                      gold=write_jsonl(tmp_path / "g.jsonl", GOLD))
    db.dispose()
    app = create_app(db_url, ADMIN)
    with TestClient(app) as client:
        token = client.post("/api/admin/annotators", json={"name": "ann"}, headers=auth(ADMIN)).json()["token"]
        answered = 0
        while (task := client.get("/api/projects/demo/next", headers=auth(token)).json()["task"]) is not None:
            assert task["kind"] == "thumbs" and len(task["responses"]) == 1
            bad = client.post(f"/api/assignments/{task['assignment_id']}/answer", headers=auth(token),
                              json={"thumb": "sideways", "submission_id": f"bad-answer-{answered:04d}"})
            assert bad.status_code == 422 and bad.json()["field"] == "thumb"
            text = task["responses"][0]["text"]
            thumb = "down" if text in DOWN else "up"
            r = client.post(f"/api/assignments/{task['assignment_id']}/answer", headers=auth(token),
                            json={"thumb": thumb, "submission_id": f"good-answer-{answered:04d}"})
            assert r.status_code == 201, r.text
            answered += 1
        assert answered == 6 + 2  # a task per response: 3 + 3 candidates, 2 gold
        st = stats(app.state.db, "demo")
        (ann,) = st["annotators"]
        assert ann["gold_answered"] == 2 and ann["gold_accuracy"] == 1.0 and st["kinds"]["thumbs"]["tasks"] == 8
        records = list(export_records(app.state.db, "demo", "thumbs"))
    app.state.db.dispose()
    assert len(records) == 6 and all(set(r) >= {"completion", "label", "annotator"} for r in records)
    assert {r["completion"]: r["label"] for r in records if "prompt" in r}["It is a process."] is False
    path = write_jsonl(tmp_path / "thumbs.jsonl", records)
    as_ratings = read_records(path, "auto")  # the reward model and DPO read them as ratings 1 and 0
    assert {r["score"] for r in as_ratings} == {0.0, 1.0}
    assert any(g.pairs for g in build_groups(as_ratings))  # up ≻ down within a prompt


def test_zero_noise_simulated_thumbs_are_up_for_an_acceptable_gold_rating(tmp_path):
    candidates_file(tmp_path)
    thumbs = run(tmp_path, "thumbs")
    assert len(thumbs) == 60 * 4
    assert all(r["label"] is (words(r["completion"]) >= 4) for r in thumbs)  # ratings 1, 3 down; 5, 7 up
    assert {r["score"] for r in read_records(tmp_path / "thumbs.jsonl", "rating")} == {0.0, 1.0}
    assert json.loads((tmp_path / "thumbs.jsonl").read_text().splitlines()[0])["annotator"] == "sim-0"
