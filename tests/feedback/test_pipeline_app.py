"""`rlhf pipeline --feedback app` with simulated annotators that answer through a real server's HTTP API, as a team
would: their rankings and comparisons train the policy (DPO here), and their blind A/B verdict on the tuned policy against SFT ends in
the report as the people's win rate with its interval."""

from __future__ import annotations

import json
import threading

import httpx
import pytest

from rlhfkit.config import PipelineConfig
from rlhfkit.data.formats import read_records
from rlhfkit.feedback.team import TeamSettings, records_by_prompt, run_team
from rlhfkit.judges import get_judge
from rlhfkit.stages.pipeline import load_recipe, run_pipeline
from tests.stages.test_pipeline import TINY

from .conftest import ADMIN, auth


@pytest.mark.slow
def test_a_pipeline_fed_by_people_over_http_ends_with_their_win_rate_in_the_report(tmp_path, server_factory):
    db = str(tmp_path / "feedback.db")
    server = server_factory(db)
    tokens = [httpx.post(f"{server.url}/api/admin/annotators", json={"name": f"person-{i}"}, headers=auth(ADMIN)).json()["token"]
              for i in range(2)]
    recipe = load_recipe("tutor")
    records = records_by_prompt(read_records(recipe.folder / "prompts.jsonl", "prompt")
                                + read_records(recipe.folder / "eval.jsonl", "prompt"))
    finished, given, failed = threading.Event(), {}, []

    def team():  # keeps looking for tasks until the pipeline is done: feedback first, the arena after the eval
        try:
            given.update(run_team(server.url, tokens, get_judge("tutor"), records,
                                  TeamSettings(temperature=0.02, idle_seconds=3600, poll_seconds=0.5), say=lambda m: None,
                                  stop=finished.is_set))
        except Exception as e:  # noqa: BLE001 - reported by the test below
            failed.append(e)

    worker = threading.Thread(target=team, daemon=True)
    worker.start()
    out = tmp_path / "run"
    # DPO on the people's rankings, at a learning rate that moves the tiny policy in 2 steps: answers that differ
    # from SFT's to be judged (the tiny reward model's scores are flat, so 2 PPO updates leave the policy as it was)
    tiny = {**TINY, "dpo": {"max_steps": 2, "batch_size": 4, "max_len": 128, "eval_every": 0, "save_every": 1, "lr": 0.05}}
    try:
        result = run_pipeline(PipelineConfig(recipe="tutor", output=str(out), model="tiny", overrides=tiny, threads=1, algo="dpo",
                                             feedback="app", db=db, poll_seconds=0.5))
    finally:
        finished.set()
        worker.join(timeout=60)
    assert not failed, failed
    feedback = read_records(out / "feedback.jsonl", "auto")
    assert feedback and {r["annotator"] for r in feedback} <= {"person-0", "person-1"}
    h = json.loads((out / "eval" / "human.json").read_text())
    asked = h["tasks"]
    assert asked >= 4  # of the 8 pairs (4 prompts × 2 answers), most differ
    assert h["answered_pairs"] == asked and h["answers"] == asked and h["people"]["n"] == h["pairs"] == 8
    assert set(h["annotators"]) <= {"person-0", "person-1"} and sum(given.values()) == 6 * 4 + asked
    lo, hi = h["people"]["ci"]
    assert 0.0 <= lo <= h["people"]["win_rate"] <= hi <= 1.0
    html = (out / "report.html").read_text()
    w = h["people"]
    assert f"by people: {w['win_rate']:.2f} [{lo:.2f}, {hi:.2f}]" in html and "blind A/B" in html
    assert any("by people" in line for line in result["summary"])
