"""The real server in a subprocess: acknowledged answers survive kill -9, concurrent retries store one answer."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
from sqlalchemy import func, select

from rlhfkit.feedback.db import Answer, Assignment, Database
from rlhfkit.feedback.importer import import_candidates

from .conftest import ADMIN, auth, good_answer


def _setup(db_url: str, candidates, n_annotators: int, client: httpx.Client, per_task: int = 1) -> list[str]:
    db = Database(db_url)
    import_candidates(db, "demo", candidates, "rate,rank,compare,edit", annotators_per_task=per_task)
    db.dispose()
    return [client.post("/api/admin/annotators", json={"name": f"a{i}"}, headers=auth(ADMIN)).json()["token"]
            for i in range(n_annotators)]


def test_acknowledged_answers_survive_kill_9_and_restart_and_retries_land_once(db_url, candidates, server_factory):
    server = server_factory(db_url)
    client = httpx.Client(base_url=server.url, timeout=10)
    tokens = _setup(db_url, candidates, 6, client, per_task=2)
    acked: list[str] = []
    sent: dict[str, tuple[str, int, dict]] = {}  # submission id → (token, assignment, body), acked or not
    lock, enough = threading.Lock(), threading.Event()

    def annotate(token: str) -> None:
        with httpx.Client(base_url=server.url, timeout=10) as c:
            try:
                while (task := c.get("/api/projects/demo/next", headers=auth(token)).json()["task"]) is not None:
                    body = good_answer(task)
                    with lock:
                        sent[body["submission_id"]] = (token, task["assignment_id"], body)
                    r = c.post(f"/api/assignments/{task['assignment_id']}/answer", json=body, headers=auth(token))
                    assert r.status_code == 201, r.text
                    with lock:
                        acked.append(body["submission_id"])
                        if len(acked) >= 20:
                            enough.set()
            except httpx.HTTPError:
                return  # the server was killed under us

    threads = [threading.Thread(target=annotate, args=(t,)) for t in tokens]
    for t in threads:
        t.start()
    assert enough.wait(120), "the clients never got 20 answers acknowledged"
    server.kill()  # SIGKILL while the clients are still writing
    for t in threads:
        t.join()

    server = server_factory(db_url)
    db = Database(db_url)
    with db.tx() as s:
        stored = set(s.scalars(select(Answer.submission_id)))
    assert set(acked) <= stored
    # Answers sent but not acknowledged are retried with their submission id: each lands exactly once.
    with httpx.Client(base_url=server.url, timeout=10) as c:
        for sid, (token, assignment, body) in sent.items():
            r = c.post(f"/api/assignments/{assignment}/answer", json=body, headers=auth(token))
            assert r.status_code == (200 if sid in stored else 201), r.text
    with db.tx() as s:
        assert s.scalar(select(func.count()).select_from(Answer)) == len(sent)
        per_task = s.execute(select(Assignment.task_id, func.count()).group_by(Assignment.task_id)).all()
    db.dispose()
    assert max(n for _, n in per_task) == 2  # six concurrent annotators, never more than N = 2 on a task
    assert ADMIN not in server.log.read_text()  # the admin token is never printed or logged


def test_concurrent_copies_of_one_submission_store_one_answer(db_url, candidates, server_factory):
    server = server_factory(db_url)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        token = _setup(db_url, candidates, 1, client)[0]
        task = client.get("/api/projects/demo/next", headers=auth(token)).json()["task"]
    body = good_answer(task, submission_id=uuid.uuid4().hex)

    def post(_):
        with httpx.Client(base_url=server.url, timeout=30) as c:
            return c.post(f"/api/assignments/{task['assignment_id']}/answer", json=body, headers=auth(token))

    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(post, range(8)))
    assert sorted(r.status_code for r in replies) == [200] * 7 + [201]
    assert len({r.json()["answer_id"] for r in replies}) == 1
    db = Database(db_url)
    with db.tx() as s:
        assert s.scalar(select(func.count()).select_from(Answer)) == 1
    db.dispose()

