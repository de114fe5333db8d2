"""Tokens: the admin token (environment variable or a file made at first start) and annotator tokens.

Annotator tokens are random 256-bit strings; only their SHA-256 is stored, so a copy of the database
does not let anyone log in. Token values are never logged or printed except once, to whoever made them.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path
from typing import Optional

from sqlalchemy import select
from sqlalchemy.orm import Session

from rlhfkit.feedback.db import Annotator, sqlite_path

ADMIN_TOKEN_ENV = "RLHFKIT_ADMIN_TOKEN"


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
