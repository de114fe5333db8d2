"""Before a handler runs: security headers, the token checked before the body is read, the body limit,
and failed logins logged and rate-limited. The body tests talk raw HTTP to the real server."""

from __future__ import annotations

import re
import socket

import httpx
from fastapi.testclient import TestClient

from rlhfkit.feedback.app import STATIC, create_app

from .conftest import ADMIN, auth

HEADERS = {"x-frame-options": "DENY", "x-content-type-options": "nosniff", "referrer-policy": "no-referrer"}


def test_every_response_carries_the_security_headers(fb):
    token = fb.annotator("ann")
    for path, headers, status in [("/", {}, 200), ("/static/app.js", {}, 200), ("/api/projects", auth(token), 200),
                                  ("/api/me", {}, 401), ("/nope", {}, 404)]:
        r = fb.client.get(path, headers=headers)
        assert r.status_code == status, path
        assert {k: r.headers.get(k) for k in HEADERS} == HEADERS, path
        csp = r.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp and "default-src 'none'" in csp
    assert fb.client.get("/api/projects", headers=auth(token)).headers["cache-control"] == "no-store"


def test_the_page_has_nothing_inline_that_the_content_security_policy_would_block():
    html = (STATIC / "index.html").read_text()
    assert not re.search(r"<script(?![^>]*\bsrc=)", html) and "<style" not in html and "style=" not in html
    assert not re.search(r"\beval\(|new Function|setAttribute\(\s*['\"]style|\.style\b|on\w+=\"",
                         (STATIC / "app.js").read_text())


def _raw(server, request: bytes, then: bytes = b"") -> str:
    """Send a raw request (and ``then``), return the status line and headers of the reply."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as s:
        s.sendall(request + then)
        reply = b""
        while b"\r\n\r\n" not in reply:
            chunk = s.recv(65536)
            if not chunk:
                break
            reply += chunk
    return reply.decode("latin-1")


def test_a_body_is_not_read_before_the_token_is_checked_nor_past_the_limit(db_url, server_factory):
    server = server_factory(db_url)
    token = httpx.post(server.url + "/api/admin/annotators", json={"name": "ann"}, headers=auth(ADMIN)).json()["token"]
    # 20 MB announced and none of it sent: a server that read the body first would wait for it (and time out).
    head = b"POST /api/assignments/1/answer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    assert _raw(server, head + b"Content-Length: 20000000\r\n\r\n").startswith("HTTP/1.1 401")
    authorized = head + f"Authorization: Bearer {token}\r\n".encode()
    assert _raw(server, authorized + b"Content-Length: 2000000\r\n\r\n").startswith("HTTP/1.1 413")
    # No Content-Length (chunked): counted as it streams in, refused once past 1 MiB.
    chunk = b"10000\r\n" + b"x" * 0x10000 + b"\r\n"
    reply = _raw(server, authorized + b"Transfer-Encoding: chunked\r\n\r\n", chunk * 17)
    assert reply.startswith("HTTP/1.1 413")
    assert httpx.get(server.url + "/api/me", headers=auth(token)).json() == {"name": "ann", "reviewer": False}  # still serving


def test_the_body_limit_is_a_setting(fb, db_url):
    small = create_app(db_url, ADMIN, max_body=4096)
    with TestClient(small) as client:
        r = client.put("/api/admin/projects/demo", json={"guidelines": "x" * 5000}, headers=auth(ADMIN))
        assert r.status_code == 413 and r.json() == {"detail": "body: larger than the server's limit of 4096 bytes",
                                                     "field": "body"}
        r = client.put("/api/admin/projects/demo", json={"guidelines": "x" * 4000}, headers=auth(ADMIN))
        assert r.status_code == 200
    small.state.db.dispose()


def test_failed_logins_are_logged_without_the_token_and_then_refused_with_429(db_url, server_factory):
    server = server_factory(db_url)
    guesses = [f"guess-{i:02d}-0123456789abcdef" for i in range(10)]
    for g in guesses:
        assert httpx.get(server.url + "/api/me", headers=auth(g)).status_code == 401
    r = httpx.get(server.url + "/api/me", headers=auth("guess-last-0123456789"))
    assert r.status_code == 429 and r.json()["field"] == "Authorization" and 0 < int(r.headers["retry-after"]) <= 60
    # The address is blocked whatever token it sends next, so guessing cannot go on; other routes still answer.
    assert httpx.get(server.url + "/api/projects", headers=auth(ADMIN)).status_code == 429
    assert httpx.get(server.url + "/healthz").status_code == 200
    log = server.log.read_text()
    lines = [line for line in log.splitlines() if "failed login from 127.0.0.1: GET '/api/me': unknown token" in line]
    assert len(lines) == 10 and all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", line) for line in lines)
    assert "login blocked for 127.0.0.1" in log
    assert not any(g in log for g in guesses) and ADMIN not in log
