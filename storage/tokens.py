"""Each user's own API credential, stored hashed in the ratings database that every API process shares.

An operator (holding the admin token) issues a user a token; the token then
reads and writes that user's ratings and nobody else's.  Only a SHA-256 of
each token is stored: tokens are 256 random bits, so a plain hash is as good
as a slow one, and a copy of the database gives nobody a usable token.
Issuing again replaces the user's token; revoking removes it.  Every check
reads the database (one indexed row), so a token issued or revoked on one API
process counts on every other at once.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from pathlib import Path

from storage.ratings import connect

SCHEMA = """
CREATE TABLE IF NOT EXISTS user_tokens (
    user INTEGER PRIMARY KEY, hash BLOB NOT NULL UNIQUE, issued REAL NOT NULL)
"""
PREFIX = "u1."  # marks a user token (the admin token is whatever the operator chose)


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class UserTokens:
    """Per-user tokens in the SQLite database at ``path`` (the ratings store's)."""

    def __init__(self, path: Path):
        self._db = connect(path)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute(SCHEMA)

    def issue(self, user: int) -> str:
        """A new token for ``user``, replacing any earlier one; the only time it is seen in clear."""
        token = PREFIX + secrets.token_urlsafe(32)
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("INSERT OR REPLACE INTO user_tokens VALUES (?, ?, ?)", (user, digest(token), time.time()))
        return token

    def revoke(self, user: int) -> bool:
        """Remove ``user``'s token; whether there was one."""
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            return self._db.execute("DELETE FROM user_tokens WHERE user = ?", (user,)).rowcount > 0

    def owner(self, token: str) -> int | None:
        """The user a token belongs to, or None."""
        if not token.startswith(PREFIX):
            return None
        with self._lock:
            row = self._db.execute("SELECT user FROM user_tokens WHERE hash = ?", (digest(token),)).fetchone()
        return row[0] if row else None

    def close(self) -> None:
        self._db.close()
