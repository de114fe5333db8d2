"""Simulated annotators through the HTTP API of a real server process: they answer every kind as a person's browser
would, and with no noise their answers follow the judge."""

from __future__ import annotations

import httpx

from rlhfkit.feedback.db import Database
from rlhfkit.feedback.export import export_records, stats
from rlhfkit.feedback.importer import import_candidates
from rlhfkit.feedback.team import TeamSettings, run_team
from tests.conftest import write_jsonl

from .conftest import ADMIN, CANDIDATES, auth


def words(text: str) -> int:
    return len(text.split())


def length_judge(records: list[dict], texts: list[str]) -> list[float]:
    """A judge for the test: longer is better (0.1 a word, up to 1)."""
    assert len(records) == len(texts) and all("prompt" in r or "messages" in r for r in records)
    return [min(words(t), 10) / 10 for t in texts]


def test_a_simulated_team_answers_every_kind_over_http_and_follows_its_judge(tmp_path, server_factory):
    db_path = str(tmp_path / "feedback.db")
    db = Database(db_path)
    import_candidates(db, "demo", write_jsonl(tmp_path / "c.jsonl", CANDIDATES), "rate,rank,compare,edit,thumbs",
                      annotators_per_task=2)
    db.dispose()
    server = server_factory(db_path)
    tokens = [httpx.post(f"{server.url}/api/admin/annotators", json={"name": f"sim-{i}"}, headers=auth(ADMIN)).json()["token"]
              for i in range(2)]
    given = run_team(server.url, tokens, length_judge, {}, TeamSettings(), say=lambda m: None)

    db = Database(db_path)
    st = stats(db, "demo")
    # Every task, each by both annotators: per prompt of 3 responses, rate 3 + rank 1 + compare 3 + edit 1 + thumbs 3.
    assert given == {"sim-0": 22, "sim-1": 22}
    assert all(row["answered"] == row["tasks"] and row["answers"] == 2 * row["tasks"] for row in st["kinds"].values())
    pairs = list(export_records(db, "demo", "pairs"))
    rankings = list(export_records(db, "demo", "rankings"))
    ratings = list(export_records(db, "demo", "ratings"))
    thumbs = list(export_records(db, "demo", "thumbs"))
    db.dispose()
    assert pairs and all(words(p["chosen"]) > words(p["rejected"]) for p in pairs)  # no tie among these lengths
    for r in rankings:  # best first, by length, whatever order each annotator was shown
        flat = [r["responses"][i] for g in r["ranking"] for i in (g if isinstance(g, list) else [g])]
        assert [words(t) for t in flat] == sorted((words(t) for t in flat), reverse=True)
    assert all(r["score"] == round(1 + 6 * min(words(r["response"]), 10) / 10) for r in ratings)
    assert all(t["label"] is (round(1 + 6 * min(words(t["completion"]), 10) / 10) >= 4) for t in thumbs)
