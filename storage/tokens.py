"""Each user's own API credential, stored hashed in the ratings database that every API process shares.

An operator (holding the admin token) issues a user a token; the token then
reads and writes that user's ratings and nobody else's.  Only a SHA-256 of
each token is stored: tokens are 256 random bits, so a plain hash is as good
as a slow one, and a copy of the database gives nobody a usable token.
Issuing again replaces the user's token; revoking removes it.  Each API process
keeps every token's hash in memory and reloads them when the store's tokens
generation (changed in the same transaction as every issue and revoke) is not
the one it loaded: one indexed read per check, so a token issued or revoked on
one API process counts on every other at once, and while the database is down
tokens are checked from memory (nothing can be issued or revoked meanwhile).
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
import uuid

from storage.store import PUT_META, TOKENS_GENERATION, Store, StoreError

PREFIX = "u1."  # marks a user token (the admin token is whatever the operator chose)


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class UserTokens:
    """Per-user tokens in the ratings store's ``user_tokens`` table (SQLite or PostgreSQL), cached."""

    def __init__(self, store: Store):
        self._store = store
        self._lock = threading.Lock()
        self._owners: dict[bytes, int] | None = None  # token hash -> user, as of ``_generation``
        self._generation: str | None = None
        try:  # loaded at start, so a store that is down from the first request still checks tokens
            self._reload()
        except StoreError:
            pass

    def issue(self, user: int) -> str:
        """A new token for ``user``, replacing any earlier one; the only time it is seen in clear."""
        token = PREFIX + secrets.token_urlsafe(32)
        with self._store.writing() as db:
            db.execute('INSERT INTO user_tokens ("user", hash, issued) VALUES (?, ?, ?) ON CONFLICT ("user") '
                       "DO UPDATE SET hash = excluded.hash, issued = excluded.issued",
                       (user, digest(token), time.time()))
            db.execute(PUT_META, (TOKENS_GENERATION, uuid.uuid4().hex))
        self._know_at_once(user, digest(token))
        return token

    def revoke(self, user: int) -> bool:
        """Remove ``user``'s token; whether there was one."""
        with self._store.writing() as db:
            removed = db.execute('DELETE FROM user_tokens WHERE "user" = ?', (user,)).rowcount > 0
            db.execute(PUT_META, (TOKENS_GENERATION, uuid.uuid4().hex))
        self._know_at_once(user)
        return removed

    def _know_at_once(self, user: int, new: bytes | None = None) -> None:
        """This process knows its own issue or revoke at once, even if the store stops answering next; the
        next check reloads every token (the generation changed)."""
        with self._lock:
            if self._owners is not None:
                owners = {h: u for h, u in self._owners.items() if u != user}
                if new is not None:
                    owners[new] = user
                self._owners = owners

    def owner(self, token: str) -> int | None:
        """The user a token belongs to, or None; from memory when the store does not answer (StoreError
        only when nothing was ever loaded)."""
        if not token.startswith(PREFIX):
            return None
        try:
            generation = self._store.tokens_generation()
            if self._owners is None or generation != self._generation:
                self._reload()
        except StoreError:
            if self._owners is None:
                raise
        return self._owners.get(digest(token))

    def _reload(self) -> None:
        with self._lock:  # the generation first: a change committed meanwhile makes the next check reload
            generation = self._store.tokens_generation()
            if self._owners is not None and generation == self._generation:
                return  # another thread reloaded while this one waited
            with self._store.reading() as db:
                rows = db.execute('SELECT hash, "user" FROM user_tokens').fetchall()
            self._owners, self._generation = {bytes(h): int(u) for h, u in rows}, generation
