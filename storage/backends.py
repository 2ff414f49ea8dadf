"""Which ratings store a ``--store`` value names: the one place that knows both backends."""

from __future__ import annotations

from pathlib import Path

from storage.store import Store, StoreError


def open_store(url: str | None, model_dir: Path, connections: int | None = None) -> Store:
    """The store a ``--store`` value names: None or "" for SQLite in the model folder (``ratings.db``),
    ``postgresql://...`` for a PostgreSQL server (a pool of ``connections``, default POOL_SIZE: one per
    API thread).  Raises StoreError, with a one-line reason, when it cannot be opened (a bad URL, a wrong
    password, a server that does not answer)."""
    if not url:
        from storage.sqlite import SQLiteStore

        return SQLiteStore(Path(model_dir) / "ratings.db")
    if url.startswith(("postgresql://", "postgres://")):
        from storage.postgres import PostgresStore

        return PostgresStore(url) if connections is None else PostgresStore(url, max_connections=connections)
    raise StoreError(f"--store {url.split('://')[0]}://... is not a store this service knows: "
                     "leave it out for SQLite in the model folder, or give a postgresql:// URL")
