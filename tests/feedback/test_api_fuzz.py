"""A sample of bench/review_api_fuzz.py's cases against the app in-process, so the fuzz list keeps up with the API
(the script itself runs every case against the real server)."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient

from bench import review_api_fuzz as fuzz
from rlhfkit.feedback.app import create_app


def _size(case: fuzz.Case) -> int:
    if case.body is not fuzz.NO_BODY:
        return len(json.dumps(case.body))
    return len(case.content) if isinstance(case.content, bytes) else 0


def test_a_sample_of_the_review_fuzz_cases_gets_clear_4xx_replies(db_url, tmp_path):
    fuzz.prepare(db_url, tmp_path)
    app = create_app(db_url, fuzz.ADMIN)
    with TestClient(app) as client:
        cases = fuzz.cases(fuzz.setup(client))
        assert len(cases) >= 133 and len({c.name for c in cases}) == len(cases)
        # Every 4th case, leaving out the 20 MB bodies (the script sends those), and the rate-limit case last.
        sample = [c for c in cases[:-1:4] if _size(c) < 4 * fuzz.MIB] + cases[-1:]
        results = fuzz.run_all(client, sample)
    app.state.db.dispose()
    assert [(c.name, verdict, got) for c, verdict, got in results if verdict != "clear"] == []
