"""Review fuzz of the feedback API (not a test, not a load test): a fixed set of bad requests against the real server.

    .venv/bin/python bench/review_api_fuzz.py

Starts ``rlhf feedback serve`` on a free loopback port with a temporary SQLite file, sets up two projects and a
few annotators through the admin API, then sends each case once: missing, malformed, unknown, disabled and
rotated-away tokens; malformed JSON; wrong types; out-of-range ids and settings; bodies over the limit; lone
surrogates and NULs; edits of invisible characters only; another annotator's task; a project the caller is not
a member of; unknown routes and wrong methods. The last case sends bad tokens until the address is rate-limited.

A case is clear when the reply has the expected 4xx status and a JSON error naming the expected field
(``{"detail": "field: problem", "field": "field"}``). Prints how many were clear, 5xx or wrongly accepted, and
every case that was not clear; exits 1 if there is one. tests/feedback/test_api_fuzz.py runs a sample of the
cases in-process, so the list keeps up with the API.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Union

import httpx

from rlhfkit.feedback.db import Database
from rlhfkit.feedback.guard import LOGIN_FAILURES
from rlhfkit.feedback.importer import import_candidates

ADMIN = "fuzz-admin-" + uuid.uuid4().hex
MIB = 1024 * 1024
NO_BODY = object()
CANDIDATES = [
    {"prompt": "Explain photosynthesis to a child.",
     "responses": ["Plants eat sunlight to make food.", "It is a process.", "Leaves use light, water and air."]},
    {"prompt": "What is 7 x 8?", "responses": ["56", "Maybe 54", "7 x 8 = 56"]},
]


@dataclass
class Case:
    """One request and the reply it must get: ``status`` with a JSON error naming ``field``."""

    name: str
    method: str
    path: str
    status: int
    field: str
    token: Optional[str] = None  # sent as "Authorization: Bearer <token>"; None: no Authorization header
    authorization: Optional[Union[str, bytes]] = None  # a raw Authorization header instead of a token
    body: Any = NO_BODY  # JSON, serialised with ASCII escapes (so lone surrogates travel as "\udc80")
    content: Optional[Union[bytes, Iterable[bytes]]] = None  # a raw body instead (an iterable is sent chunked)
    header: str = ""  # a header the reply must carry
    repeat: int = 1  # send up to this many times until the expected status comes (to reach a rate limit)
    bad_login: bool = False  # counts towards the failed-login limit


@dataclass
class Context:
    """What setup() made: tokens and the ids the cases aim at."""

    ann: str
    bob: str
    eve: str  # disabled
    stale: str  # carol's token before it was rotated
    held: dict  # kind → an assignment ann holds in demo
    skipped: int  # an assignment ann skipped
    answered_sid: str  # the submission id of an answer ann gave
    bob_held: int  # an assignment bob holds in demo
    private_held: int  # an assignment ann holds in "private", which is now bob's only


def prepare(db_url: str, folder: Path) -> None:
    """Two projects from the same candidates: demo (open to all) and private (made bob's only in setup)."""
    path = folder / "candidates.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in CANDIDATES), encoding="utf-8")
    db = Database(db_url)
    import_candidates(db, "demo", path, "rate,rank,compare,edit", annotators_per_task=2, max_held=50)
    import_candidates(db, "private", path, "rate")
    db.dispose()


def _ok(r: httpx.Response) -> dict:
    if r.status_code >= 300:
        raise RuntimeError(f"setup: {r.request.method} {r.request.url.path} answered {r.status_code}: {r.text[:300]}")
    return r.json()


def setup(client: httpx.Client) -> Context:
    admin = {"Authorization": f"Bearer {ADMIN}"}
    tokens = {n: _ok(client.post("/api/admin/annotators", json={"name": n}, headers=admin))["token"]
              for n in ("ann", "bob", "eve", "carol")}
    _ok(client.patch("/api/admin/annotators/eve", json={"disabled": True}, headers=admin))
    _ok(client.post("/api/admin/annotators/carol/token", headers=admin))
    ann = {"Authorization": f"Bearer {tokens['ann']}"}
    tasks = _ok(client.post("/api/projects/demo/claim", json={"n": 50}, headers=ann))["tasks"]
    rates = [t for t in tasks if t["kind"] == "rate"]
    held = {t["kind"]: t["assignment_id"] for t in reversed(tasks)}  # the first task of each kind
    skipped = rates[1]["assignment_id"]
    _ok(client.post(f"/api/assignments/{skipped}/skip", headers=ann))
    sid = uuid.uuid4().hex
    _ok(client.post(f"/api/assignments/{rates[2]['assignment_id']}/answer", json={"score": 4, "submission_id": sid},
                    headers=ann))
    bob_held = _ok(client.get("/api/projects/demo/next", headers={"Authorization": f"Bearer {tokens['bob']}"}))
    private = _ok(client.get("/api/projects/private/next", headers=ann))["task"]["assignment_id"]
    _ok(client.put("/api/admin/projects/private/members/bob", headers=admin))  # ann is now outside it
    return Context(ann=tokens["ann"], bob=tokens["bob"], eve=tokens["eve"], stale=tokens["carol"], held=held,
                   skipped=skipped, answered_sid=sid, bob_held=bob_held["task"]["assignment_id"], private_held=private)


def cases(ctx: Context) -> list[Case]:
    """The fixed list; ids and tokens come from setup(). Bad logins stay under the limit until the last case."""
    ann, bob = ctx.ann, ctx.bob
    rate, compare, rank, edit = (f"/api/assignments/{ctx.held[k]}" for k in ("rate", "compare", "rank", "edit"))
    sid = "fuzz-" + uuid.uuid4().hex  # unused: a valid submission id

    def answer(path: str, name: str, body: Any, field: str, status: int = 422) -> Case:
        return Case(name, "POST", path + "/answer", status, field, token=ann, body=body)

    def raw(name: str, content: bytes, path: str = rate + "/answer", method: str = "POST", token: str = ann) -> Case:
        return Case(name, method, path, 422, "body", token=token, content=content)

    out = [
        # --- no usable token: 401 before anything else, whatever the route or the body ------------------
        Case("no token", "GET", "/api/me", 401, "Authorization"),
        Case("Basic scheme", "GET", "/api/me", 401, "Authorization", authorization="Basic YWRtaW46YWRtaW4="),
        Case("Bearer and nothing", "GET", "/api/me", 401, "Authorization", authorization="Bearer"),
        Case("Token scheme", "GET", "/api/me", 401, "Authorization", authorization=f"Token {ann}"),
        Case("token in the query string", "GET", f"/api/me?token={ann}", 401, "Authorization"),
        Case("no token, project list", "GET", "/api/projects", 401, "Authorization"),
        Case("no token, answer", "POST", rate + "/answer", 401, "Authorization",
             body={"score": 5, "submission_id": sid}),
        Case("no token, admin create", "POST", "/api/admin/annotators", 401, "Authorization", body={"name": "x"}),
        Case("no token, admin export", "GET", "/api/admin/projects/demo/export", 401, "Authorization"),
        Case("no token, project settings", "PUT", "/api/admin/projects/demo", 401, "Authorization", body={}),
        Case("no token, unknown API route", "GET", "/api/nope", 401, "Authorization"),
        Case("no token, wrong method", "DELETE", "/api/me", 401, "Authorization"),
        Case("no token, 20 MB body", "POST", rate + "/answer", 401, "Authorization", content=b"x" * (20 * MIB)),
        Case("unknown token", "GET", "/api/me", 401, "Authorization", token="not-a-token", bad_login=True),
        Case("admin token plus a letter", "GET", "/api/me", 401, "Authorization", token=ADMIN + "x", bad_login=True),
        Case("annotator token less a letter", "GET", "/api/me", 401, "Authorization", token=ann[:-1], bad_login=True),
        Case("10 kB token", "GET", "/api/me", 401, "Authorization", token="t" * 10_000, bad_login=True),
        Case("latin-1 token", "GET", "/api/me", 401, "Authorization", authorization=b"Bearer caf\xe9-t\xf6ken",
             bad_login=True),
        Case("disabled annotator", "GET", "/api/me", 401, "Authorization", token=ctx.eve, bad_login=True),
        Case("rotated-away token", "GET", "/api/projects", 401, "Authorization", token=ctx.stale, bad_login=True),
        # --- a known token on what it may not touch: 403 -------------------------------------------------
        *[Case(f"annotator on admin {m} {p}", m, p, 403, "Authorization", token=ann, body=b)
          for m, p, b in [("POST", "/api/admin/annotators", {"name": "mallory"}),
                          ("GET", "/api/admin/annotators", NO_BODY),
                          ("GET", "/api/admin/projects/demo/stats", NO_BODY),
                          ("GET", "/api/admin/projects/demo/export", NO_BODY),
                          ("PUT", "/api/admin/projects/demo", {"max_held": 1}),
                          ("PATCH", "/api/admin/annotators/bob", {"disabled": True}),
                          ("POST", "/api/admin/annotators/bob/token", NO_BODY),
                          ("GET", "/api/admin/projects/private/members", NO_BODY),
                          ("PUT", "/api/admin/projects/private/members/ann", NO_BODY),
                          ("DELETE", "/api/admin/projects/private/members/bob", NO_BODY)]],
        *[Case(f"admin token on annotator {m} {p}", m, p, 403, "Authorization", token=ADMIN, body=b)
          for m, p, b in [("GET", "/api/me", NO_BODY), ("GET", "/api/projects", NO_BODY),
                          ("GET", "/api/projects/demo/next", NO_BODY), ("POST", "/api/projects/demo/claim", {"n": 1}),
                          ("GET", "/api/projects/demo/last", NO_BODY), ("GET", rate, NO_BODY),
                          ("POST", rate + "/answer", {"score": 5, "submission_id": sid}),
                          ("POST", rate + "/skip", NO_BODY)]],
        Case("another annotator's task: read", "GET", rate, 403, "assignment", token=bob),
        Case("another annotator's task: answer", "POST", rate + "/answer", 403, "assignment", token=bob,
             body={"score": 5, "submission_id": sid}),
        Case("another annotator's task: skip", "POST", rate + "/skip", 403, "assignment", token=bob),
        Case("another annotator's submission id", "POST", f"/api/assignments/{ctx.bob_held}/answer", 409,
             "submission_id", token=bob, body={"score": 5, "choice": "a", "strength": "much", "ranking": [0, 1],
                                               "edited": "x", "submission_id": ctx.answered_sid}),
        *[Case(f"outside a members-only project: {m} {p}", m, f"/api/projects/private{p}", 403, "project", token=ann,
               body=b) for m, p, b in [("GET", "", NO_BODY), ("GET", "/next", NO_BODY), ("POST", "/claim", {"n": 1}),
                                       ("GET", "/last", NO_BODY)]],
        Case("held task of a project one was taken off: read", "GET", f"/api/assignments/{ctx.private_held}", 403,
             "project", token=ann),
        Case("held task of a project one was taken off: answer", "POST", f"/api/assignments/{ctx.private_held}/answer",
             403, "project", token=ann, body={"score": 5, "submission_id": sid}),
        Case("held task of a project one was taken off: skip", "POST", f"/api/assignments/{ctx.private_held}/skip",
             403, "project", token=ann),
        # --- what is not there: 404, 405, and ids of any size -------------------------------------------
        *[Case(f"unknown project {p or '(view)'}", "GET", f"/api/projects/nope{p}", 404, "project", token=ann)
          for p in ("", "/next", "/last")],
        Case("unknown project claim", "POST", "/api/projects/nope/claim", 404, "project", token=ann, body={"n": 1}),
        Case("project name with NUL", "GET", "/api/projects/a%00b", 404, "project", token=ann),
        *[Case(f"assignment id {i}", "GET", f"/api/assignments/{i}", 404, "assignment", token=ann)
          for i in (0, -1, 99_999, 2**31, 2**63, 2**64, 10**30)],
        Case("answer to id 2**63", "POST", f"/api/assignments/{2**63}/answer", 404, "assignment", token=ann,
             body={"score": 5, "submission_id": sid}),
        Case("skip id 2**63", "POST", f"/api/assignments/{2**63}/skip", 404, "assignment", token=ann),
        Case("assignment id not a number", "GET", "/api/assignments/abc", 422, "assignment_id", token=ann),
        Case("assignment id a fraction", "GET", "/api/assignments/1.5", 422, "assignment_id", token=ann),
        Case("assignment id of 5000 digits", "GET", "/api/assignments/" + "9" * 5000, 422, "assignment_id", token=ann),
        *[Case(f"admin: unknown project {m} {p}", m, f"/api/admin/projects/nope{p}", 404, "project", token=ADMIN)
          for m, p in [("GET", "/stats"), ("GET", "/export"), ("GET", "/members"), ("PUT", "/members/ann"),
                       ("DELETE", "/members/ann")]],
        Case("admin: unknown annotator disabled", "PATCH", "/api/admin/annotators/nobody", 404, "annotator",
             token=ADMIN, body={"disabled": True}),
        Case("admin: unknown annotator token", "POST", "/api/admin/annotators/nobody/token", 404, "annotator",
             token=ADMIN),
        Case("admin: add an unknown member", "PUT", "/api/admin/projects/demo/members/nobody", 404, "annotator",
             token=ADMIN),
        Case("admin: remove an unknown member", "DELETE", "/api/admin/projects/demo/members/nobody", 404, "annotator",
             token=ADMIN),
        Case("unknown API route", "GET", "/api/nope", 404, "path", token=ann),
        Case("unknown admin route", "GET", "/api/admin", 404, "path", token=ADMIN),
        Case("assignment list (no such route)", "GET", "/api/assignments", 404, "path", token=ann),
        Case("unknown page", "GET", "/nope", 404, "path"),
        Case("unknown static file", "GET", "/static/nope.js", 404, "path"),
        Case("static path escape", "GET", "/static/..%2f..%2fapp.py", 404, "path"),
        *[Case(f"wrong method {m} {p}", m, p, 405, "method", token=t)
          for m, p, t in [("DELETE", "/api/me", ann), ("POST", "/api/me", ann), ("PUT", "/api/projects/demo/next", ann),
                          ("GET", rate + "/answer", ann), ("GET", "/api/admin/annotators/bob/token", ADMIN),
                          ("POST", "/", None), ("DELETE", "/healthz", None), ("POST", "/static/app.js", None)]],
        # --- bodies that are not one JSON object ------------------------------------------------------
        raw("malformed JSON", b"{not json"),
        raw("empty body", b""),
        raw("JSON null", b"null"),
        raw("JSON list", b"[1, 2]"),
        raw("JSON string", b'"score"'),
        raw("JSON number", b"5"),
        raw("NaN", b'{"score": NaN, "submission_id": "fuzz-0123456789"}'),
        raw("Infinity", b'{"score": Infinity, "submission_id": "fuzz-0123456789"}'),
        raw("two objects", b'{"score": 5}{"score": 6}'),
        raw("trailing comma", b'{"score": 5,}'),
        raw("single quotes", b"{'score': 5}"),
        raw("not UTF-8", b'{"comment": "\xff\xfe"}'),
        raw("UTF-8 byte-order mark", b'\xef\xbb\xbf{"score": 5}'),
        raw("nested 100 000 deep", b"[" * 100_000),
        raw("a number of 5000 digits", b'{"score": 1' + b"0" * 5000 + b"}"),
        raw("malformed JSON to admin settings", b"{", "/api/admin/projects/demo", "PUT", ADMIN),
        raw("list to admin create", b"[]", "/api/admin/annotators", token=ADMIN),
        raw("malformed JSON to claim", b"{", "/api/projects/demo/claim"),
        # --- answers: wrong types and values, named by field ------------------------------------------
        *[answer(rate, f"score {v!r}", {"score": v, "submission_id": sid}, "score")
          for v in ("5", 9, 0, -1, 2**63, 5.5, True, None, [5])],
        *[answer(rate, f"comment {str(v)[:20]!r}", {"score": 5, "comment": v, "submission_id": sid}, "comment")
          for v in (3, ["x"], {"a": 1}, "x" * 100_001)],
        *[answer(rate, f"submission_id {str(v)[:20]!r}", {"score": 5, "submission_id": v}, "submission_id")
          for v in (None, 5, "short", "x" * 101, ["fuzz-0123456789"])],
        answer(rate, "unknown field", {"sore": 5, "submission_id": sid}, "sore"),
        answer(f"/api/assignments/{ctx.skipped}", "answer a skipped task", {"score": 5, "submission_id": sid},
               "assignment", 409),
        Case("skip a skipped task", "POST", f"/api/assignments/{ctx.skipped}/skip", 409, "assignment", token=ann),
        *[answer(compare, f"compare {b}", {**b, "submission_id": sid}, f)
          for b, f in [({"choice": "c", "strength": "much"}, "choice"), ({"choice": 1}, "choice"),
                       ({"choice": "a"}, "strength"), ({"choice": "a", "strength": "very"}, "strength")]],
        *[answer(rank, f"rank {b}", {**b, "submission_id": sid}, f)
          for b, f in [({"ranking": "0,1"}, "ranking"), ({"ranking": [0, 0]}, "ranking[1]"),
                       ({"ranking": [0, 7]}, "ranking[1]"), ({"ranking": [0]}, "ranking"),
                       ({"ranking": [[], 0]}, "ranking[0]"), ({"ranking": [2**63, 0]}, "ranking[0]"),
                       ({"ranking": [True, 0]}, "ranking[0]"), ({"ranking": [0, 1], "none_acceptable": "yes"},
                                                                "none_acceptable")]],
        *[answer(edit, f"edit {str(v)[:24]!r}", {"edited": v, "submission_id": sid}, "edited")
          for v in (None, 123, "", "   \n\t", "\u200b", "\u200b\u200c\u200d\u2060\ufeff", "\u00ad \u3164", "\u2800",
                    "x" * 100_001)],
        # --- text that is not Unicode, or holds NUL, wherever text comes in -----------------------------
        answer(edit, "edited with a lone low surrogate", {"edited": "a \udc80 b", "submission_id": sid}, "edited"),
        answer(edit, "edited with a lone high surrogate", {"edited": "\ud800", "submission_id": sid}, "edited"),
        answer(edit, "edited with NUL", {"edited": "a\x00b", "submission_id": sid}, "edited"),
        answer(rate, "comment with a lone surrogate", {"score": 5, "comment": "\udfff", "submission_id": sid},
               "comment"),
        answer(rate, "submission_id with a lone surrogate", {"score": 5, "submission_id": "fuzz-\udc80-0123"},
               "submission_id"),
        answer(rate, "a key with a lone surrogate", {"score": 5, "submission_id": sid, "\udc80": 1}, "\\udc80"),
        answer(rank, "ranking with a lone surrogate", {"ranking": ["\udc80", 0], "submission_id": sid}, "ranking[0]"),
        *[Case(f"annotator name {v[:12] if isinstance(v, str) else v!r}", "POST", "/api/admin/annotators", 422,
               "name", token=ADMIN, body={"name": v})
          for v in ("\udc80", "a\x00b", None, 5, "", "   ", "\u200b", "x" * 201, "a/b", "a\nb")],
        Case("annotator name taken", "POST", "/api/admin/annotators", 409, "name", token=ADMIN, body={"name": "ann"}),
        Case("annotator create: unknown field", "POST", "/api/admin/annotators", 422, "admin", token=ADMIN,
             body={"name": "zed", "admin": True}),
        *[Case(f"guidelines {v[:12]!r}", "PUT", "/api/admin/projects/demo", 422, "guidelines", token=ADMIN,
               body={"guidelines": v}) for v in ("\udc80", "rules\x00", "x" * 100_001)],
        # --- admin settings: types and ranges ---------------------------------------------------------
        *[Case(f"{k} {v!r}", "PUT", "/api/admin/projects/demo", 422, k, token=ADMIN, body={k: v})
          for k, v in [("max_held", 0), ("max_held", -1), ("max_held", 2**63), ("max_held", 2**31), ("max_held", "5"),
                       ("max_held", True), ("max_held", 1.5), ("max_held", None), ("annotators_per_task", 0),
                       ("annotators_per_task", 10**6), ("hold_minutes", -1), ("hold_minutes", 2**63),
                       ("guidelines", 5), ("open_to_all", "yes"), ("max_hold", 3)]],
        Case("project name of 201 characters", "PUT", "/api/admin/projects/" + "p" * 201, 422, "project", token=ADMIN,
             body={}),
        Case("project name of spaces", "PUT", "/api/admin/projects/%20%20", 422, "project", token=ADMIN, body={}),
        Case("project name of zero-width spaces", "PUT", "/api/admin/projects/%E2%80%8B", 422, "project", token=ADMIN,
             body={}),
        *[Case(f"disabled {b}", "PATCH", "/api/admin/annotators/bob", 422, f, token=ADMIN, body=b)
          for b, f in [({"disabled": "yes"}, "disabled"), ({}, "disabled"), ({"disabled": True, "role": 1}, "role")]],
        *[Case(f"claim {b}", "POST", "/api/projects/demo/claim", 422, f, token=ann, body=b)
          for b, f in [({"n": 0}, "n"), ({"n": -1}, "n"), ({"n": 2**63}, "n"), ({"n": "3"}, "n"), ({"n": True}, "n"),
                       ({"m": 1}, "m")]],
        Case("export format", "GET", "/api/admin/projects/demo/export?format=xml", 422, "format", token=ADMIN),
        # --- bodies over the limit (1 MiB) ------------------------------------------------------------
        Case("20 MB answer", "POST", edit + "/answer", 413, "body", token=ann,
             body={"edited": "x" * (20 * MIB), "submission_id": sid}),
        Case("2 MiB guidelines", "PUT", "/api/admin/projects/demo", 413, "body", token=ADMIN,
             body={"guidelines": "x" * (2 * MIB)}),
        Case("2 MiB sent chunked (no Content-Length)", "POST", edit + "/answer", 413, "body", token=ann,
             content=(b"x" * 65536 for _ in range(32))),
        # --- last: bad tokens until the address is refused for a while ----------------------------------
        Case("failed logins until rate-limited", "GET", "/api/me", 429, "Authorization", token="guess-" + "0" * 40,
             header="Retry-After", repeat=30, bad_login=True),
    ]
    # Until the last case the failed logins must stay under the server's limit, or later cases would meet a 429.
    assert sum(c.bad_login for c in out[:-1]) < LOGIN_FAILURES
    return out


def send(client: httpx.Client, case: Case) -> httpx.Response:
    headers: dict[str, Union[str, bytes]] = {}
    if case.authorization is not None:
        headers["Authorization"] = case.authorization
    elif case.token is not None:
        headers["Authorization"] = f"Bearer {case.token}"
    content = case.content
    if case.body is not NO_BODY:
        content = json.dumps(case.body).encode("ascii")
        headers["Content-Type"] = "application/json"
    return client.request(case.method, case.path, content=content, headers=headers)


def verdict(case: Case, client: httpx.Client) -> tuple[str, str]:
    """("clear" | "unclear" | "5xx" | "accepted" | "error", what came back)."""
    try:
        for _ in range(case.repeat):
            r = send(client, case)
            if r.status_code == case.status:
                break
    except httpx.HTTPError as e:
        return "error", f"{type(e).__name__}: {e}"
    got = f"{r.status_code} {r.text[:160]}"
    if r.status_code >= 500:
        return "5xx", got
    if r.status_code < 400:
        return "accepted", got
    try:
        data = r.json()
    except ValueError:
        data = None
    clear = (r.status_code == case.status and isinstance(data, dict) and data.get("field") == case.field
             and str(data.get("detail", "")).startswith(f"{case.field}: ")
             and (not case.header or case.header in r.headers))
    return ("clear" if clear else "unclear"), got


def report(results: list[tuple[Case, str, str]]) -> bool:
    """Print the table and the cases that were not clear; True when every case was clear."""
    counts = {k: sum(v == k for _, v, _ in results) for k in ("clear", "unclear", "5xx", "accepted", "error")}
    print(f"{'cases tried':>11} {'clear 4xx':>10} {'unclear 4xx':>12} {'5xx':>5} {'wrongly accepted':>17} "
          f"{'errors':>7}")
    print(f"{len(results):>11} {counts['clear']:>10} {counts['unclear']:>12} {counts['5xx']:>5} "
          f"{counts['accepted']:>17} {counts['error']:>7}")
    for case, v, got in results:
        if v != "clear":
            print(f"  {v}: {case.name}: {case.method} {case.path[:80]} wanted {case.status} {case.field!r}, got {got}")
    return counts["clear"] == len(results)


def run_all(client: httpx.Client, the_cases: list[Case]) -> list[tuple[Case, str, str]]:
    return [(c, *verdict(c, client)) for c in the_cases]


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="feedback-fuzz-"))
    server = None
    try:
        db_url = str(work / "fuzz.db")
        prepare(db_url, work)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "RLHFKIT_ADMIN_TOKEN": ADMIN}
        with (work / "server.log").open("wb") as log:
            server = subprocess.Popen([sys.executable, "-m", "rlhfkit", "feedback", "serve", "--db", db_url,
                                       "--host", "127.0.0.1", "--port", str(port)], env=env, stdout=log, stderr=log)
        deadline = time.monotonic() + 60
        while True:  # wait until it answers (bounded)
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start: {(work / 'server.log').read_text()[-2000:]}")
            time.sleep(0.1)
        with httpx.Client(base_url=url, timeout=30) as client:
            results = run_all(client, cases(setup(client)))
        log_text = (work / "server.log").read_text(errors="replace")
    finally:
        if server is not None:
            server.kill()
            server.wait()
        shutil.rmtree(work, ignore_errors=True)
    ok = report(results)
    if ADMIN in log_text or "guess-" + "0" * 40 in log_text:
        print("  the server log holds a token")
        ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
