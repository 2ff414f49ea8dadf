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
import time

from storage.store import Store

PREFIX = "u1."  # marks a user token (the admin token is whatever the operator chose)


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class UserTokens:
    """Per-user tokens in the ratings store's ``user_tokens`` table (SQLite or PostgreSQL)."""

    def __init__(self, store: Store):
        self._store = store

    def issue(self, user: int) -> str:
        """A new token for ``user``, replacing any earlier one; the only time it is seen in clear."""
        token = PREFIX + secrets.token_urlsafe(32)
        with self._store.writing() as db:
            db.execute('INSERT INTO user_tokens ("user", hash, issued) VALUES (?, ?, ?) ON CONFLICT ("user") '
                       "DO UPDATE SET hash = excluded.hash, issued = excluded.issued",
                       (user, digest(token), time.time()))
        return token

    def revoke(self, user: int) -> bool:
        """Remove ``user``'s token; whether there was one."""
        with self._store.writing() as db:
            return db.execute('DELETE FROM user_tokens WHERE "user" = ?', (user,)).rowcount > 0

    def owner(self, token: str) -> int | None:
        """The user a token belongs to, or None."""
        if not token.startswith(PREFIX):
            return None
        with self._store.reading() as db:
            row = db.execute('SELECT "user" FROM user_tokens WHERE hash = ?', (digest(token),)).fetchone()
        return row[0] if row else None
