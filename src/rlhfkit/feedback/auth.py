"""Tokens: the admin token (environment variable or a file made at first start) and annotator tokens.

Annotator tokens are random 256-bit strings; only their SHA-256 is stored, so a copy of the database
does not let anyone log in. Token values are never logged or printed except once, to whoever made them.
An annotator can be disabled (their token is refused) and their token rotated (the old one stops working).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from pathlib import Path
from typing import Any, Optional

from sqlalchemy import select
from sqlalchemy.orm import Session

from rlhfkit.feedback.db import Annotator, sqlite_path

ADMIN_TOKEN_ENV = "RLHFKIT_ADMIN_TOKEN"
TOKEN_CACHE_SECONDS = 5.0  # how long a running server trusts a token it looked up (changes from the CLI wait this long)


def new_token() -> str:
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def admin_token_file(db_url: str) -> Path:
    """Where the admin token lives when the environment does not give one: beside a SQLite file, else here."""
    path = sqlite_path(db_url)
    return path.with_name(path.name + ".admin-token") if path is not None else Path("rlhfkit-admin-token")


def load_admin_token(db_url: str, token_file: Optional[Path] = None) -> tuple[str, str]:
    """(token, where it came from). Reads ``RLHFKIT_ADMIN_TOKEN``, else the token file, creating it (mode 600)."""
    env = os.environ.get(ADMIN_TOKEN_ENV, "").strip()
    if env:
        return env, f"the {ADMIN_TOKEN_ENV} environment variable"
    path = token_file or admin_token_file(db_url)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(new_token() + "\n")
    token = path.read_text().strip()
    if not token:
        raise ValueError(f"{path}: the admin token file is empty")
    return token, str(path)


def is_admin(token: str, admin_token: str) -> bool:
    return hmac.compare_digest(token.encode("utf-8"), admin_token.encode("utf-8"))


def find_annotator(s: Session, token: str) -> Optional[Annotator]:
    return s.scalar(select(Annotator).where(Annotator.token_hash == hash_token(token)))


def create_annotator(s: Session, name: str) -> tuple[Annotator, str]:
    """A new annotator and their token (shown once; only its hash is stored)."""
    token = new_token()
    ann = Annotator(name=name, token_hash=hash_token(token))
    s.add(ann)
    s.flush()
    return ann, token


def annotator_named(s: Session, name: str) -> Optional[Annotator]:
    return s.scalar(select(Annotator).where(Annotator.name == name))


def rotate_token(ann: Annotator) -> str:
    """Give the annotator a new token (returned once); the old one stops working."""
    token = new_token()
    ann.token_hash = hash_token(token)
    return token


class TokenCache:
    """Who a token belongs to, remembered for ``seconds`` so that most requests skip the database.

    The entries expire, so a change made elsewhere (the CLI disabling an annotator or rotating a token)
    reaches a running server within ``seconds``; the server clears the cache itself on changes it makes.
    """

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.generation = 0  # bumped by clear(): a lookup that began before a change is not remembered
        self._entries: dict[str, tuple[float, Any]] = {}  # token hash → (expiry, caller)

    def get(self, token: str) -> Any:
        hit = self._entries.get(hash_token(token))
        if hit is None or hit[0] <= time.monotonic():
            return None
        return hit[1]

    def put(self, token: str, value: Any, generation: int) -> None:
        if self.seconds <= 0 or generation != self.generation:
            return
        now = time.monotonic()
        if len(self._entries) > 10_000:  # only valid tokens are kept, but drop the expired ones now and then
            self._entries = {k: v for k, v in self._entries.items() if v[0] > now}
        self._entries[hash_token(token)] = (now + self.seconds, value)

    def clear(self) -> None:
        # Called from handlers in worker threads: a new dict, not clear(), so that no iteration sees it change.
        self.generation += 1
        self._entries = {}
