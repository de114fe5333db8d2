"""Load benchmark of the feedback app (not a test): many annotator clients against one server on SQLite.

    .venv/bin/python bench/feedback_load.py --clients 200 --seconds 60

Starts ``rlhf feedback serve`` on a free loopback port with a fresh SQLite file, imports synthetic candidates
(all four task kinds, 3 annotators per task), then runs ``--clients`` annotators concurrently (asyncio +
httpx, one connection each). Each loops: GET next task → POST an answer with a new submission id; a share of
the answers is sent twice (a client retry), which must come back as a duplicate. At the end it counts the
answers in the database and checks acknowledged == stored and 0 duplicates. Prints a JSON summary.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from sqlalchemy import func, select

from rlhfkit.feedback.db import Answer, Database
from rlhfkit.feedback.importer import import_candidates

ADMIN = "bench-admin-" + uuid.uuid4().hex


def answer_for(task: dict, rng: random.Random) -> dict:
    ids = [r["id"] for r in task["responses"]]
    rng.shuffle(ids)
    body = {"rate": lambda: {"score": rng.randint(1, 7)},
            "compare": lambda: {"choice": rng.choice("ab"), "strength": rng.choice(["slightly", "clearly", "much"])},
            "rank": lambda: {"ranking": ids},
            "edit": lambda: {"edited": task["responses"][0]["text"] + " (edited)"}}[task["kind"]]()
    return {**body, "submission_id": uuid.uuid4().hex}


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


async def client(url: str, token: str, deadline: float, stats: dict, seed: int, retry_share: float) -> None:
    rng = random.Random(seed)
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120) as c:
        while time.monotonic() < deadline:
            t0 = time.monotonic()
            r = await c.get("/api/projects/bench/next")
            stats["get_ms"].append((time.monotonic() - t0) * 1000)
            r.raise_for_status()
            task = r.json()["task"]
            if task is None:
                return
            body = answer_for(task, rng)
            t0 = time.monotonic()
            r = await c.post(f"/api/assignments/{task['assignment_id']}/answer", json=body)
            stats["post_ms"].append((time.monotonic() - t0) * 1000)
            if r.status_code != 201:
                stats["errors"].append(f"{r.status_code} {r.text[:200]}")
                continue
            stats["acked"].add(body["submission_id"])
            if rng.random() < retry_share:  # the client did not see the reply and sends it again
                r = await c.post(f"/api/assignments/{task['assignment_id']}/answer", json=body)
                stats["retries"] += 1
                if r.status_code != 200 or not r.json()["duplicate"]:
                    stats["errors"].append(f"retry: {r.status_code} {r.text[:200]}")


async def run(url: str, tokens: list[str], seconds: float, retry_share: float) -> dict:
    stats = {"get_ms": [], "post_ms": [], "acked": set(), "retries": 0, "errors": []}
    deadline = time.monotonic() + seconds
    t0 = time.monotonic()
    await asyncio.gather(*(client(url, t, deadline, stats, i, retry_share) for i, t in enumerate(tokens)))
    stats["elapsed"] = time.monotonic() - t0
    return stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--prompts", type=int, default=3000, help="synthetic prompts (4 responses, 12 tasks each)")
    ap.add_argument("--retry-share", type=float, default=0.05, help="share of answers sent twice")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="feedback-load-"))
    db_url = str(work / "bench.db")
    rng = random.Random(0)
    words = "the a light blue sky water plant sun energy because scatter makes food leaf air".split()
    with (work / "candidates.jsonl").open("w") as f:
        for i in range(args.prompts):
            responses = [" ".join(rng.choices(words, k=rng.randint(8, 40))) for _ in range(4)]
            f.write(json.dumps({"prompt": f"Question {i}: why?", "responses": responses, "model": "bench"}) + "\n")
    db = Database(db_url)
    t0 = time.monotonic()
    counts = import_candidates(db, "bench", work / "candidates.jsonl", "rate,rank,compare,edit", annotators_per_task=3)
    import_s = time.monotonic() - t0

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "RLHFKIT_ADMIN_TOKEN": ADMIN}
    server = subprocess.Popen([sys.executable, "-m", "rlhfkit", "feedback", "serve", "--db", db_url, "--port", str(port)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        admin = {"Authorization": f"Bearer {ADMIN}"}
        tokens = [httpx.post(url + "/api/admin/annotators", json={"name": f"c{i}"}, headers=admin).json()["token"]
                  for i in range(args.clients)]
        stats = asyncio.run(run(url, tokens, args.seconds, args.retry_share))
    finally:
        server.kill()
        server.wait()
    with db.tx() as s:
        stored = set(s.scalars(select(Answer.submission_id)))
        n_rows = s.scalar(select(func.count()).select_from(Answer))
        n_assignments = s.scalar(select(func.count(func.distinct(Answer.assignment_id))))
    db.dispose()
    acked = stats["acked"]
    summary = {
        "clients": args.clients, "seconds": round(stats["elapsed"], 1), "tasks": counts["tasks"],
        "import_s": round(import_s, 1),
        "answers_acknowledged": len(acked), "answers_stored": n_rows,
        "acknowledged_missing": len(acked - stored), "duplicates": n_rows - n_assignments,
        "retries_sent": stats["retries"], "errors": len(stats["errors"]), "first_errors": stats["errors"][:3],
        "answers_per_s": round(len(acked) / stats["elapsed"], 1),
        "requests_per_s": round((len(stats["get_ms"]) + len(stats["post_ms"]) + stats["retries"]) / stats["elapsed"], 1),
        "answer_p50_ms": round(percentile(stats["post_ms"], 0.5), 1),
        "answer_p99_ms": round(percentile(stats["post_ms"], 0.99), 1),
        "next_p50_ms": round(percentile(stats["get_ms"], 0.5), 1),
        "next_p99_ms": round(percentile(stats["get_ms"], 0.99), 1),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, load average before {os.getloadavg()[0]:.1f}",
    }
    print(json.dumps(summary, indent=2))
    ok = summary["acknowledged_missing"] == 0 and summary["duplicates"] == 0 and len(acked) == n_rows
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
