"""Model versions published through the PostgreSQL store, so API processes on other hosts need no shared disk.

The trainer publishes a version into its own folder (storage/versions.py), then
uploads that folder's files into ``model_files`` (in parts of PART_BYTES) and
names the version in ``meta.current_version``, all in one transaction: a host
sees the whole version or none of it.  Each API process checks that pointer
when it polls for versions; when it names a version its folder lacks, it
streams the files into a temporary folder, checks each against the SHA-256 in
``version.json``, and installs it with the same atomic rename and pointer
switch as a local publish, after which the usual hot swap picks it up.  Hosts
that share one folder install a version once (the folder's lock).  A version
that fails its checks is not downloaded again until the pointer names another.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator

from model import ModelError, TransientModelError
from storage.store import PUT_META, Store
from storage.versions import ModelVersions

log = logging.getLogger(__name__)

PART_BYTES = 8 << 20  # bytea values of 8 MiB: far below PostgreSQL's 1 GB limit, and a bounded buffer
CURRENT = "current_version"  # the meta key naming the version in service


class SharedVersions:
    """The versions table of a database store: :meth:`upload` on the trainer, :meth:`sync` on API hosts."""

    def __init__(self, store: Store):
        self.store = store
        self.refused: int | None = None  # the version that failed its checks, until the pointer moves on

    def current(self) -> int | None:
        value = self.store.get_meta(CURRENT)
        return int(value) if value else None

    def newest(self) -> int:
        """The highest version number uploaded (0 for none; the current one is always among the kept ones):
        a trainer on a new host numbers above it."""
        with self.store.reading() as db:
            return int(db.execute("SELECT max(number) FROM model_versions").fetchone()[0] or 0)

    def upload(self, versions: ModelVersions, number: int, keep: int) -> None:
        """Copy version ``number`` of ``versions`` into the database and make it current, in one
        transaction; drop uploaded versions beyond the newest ``keep``."""
        folder = versions.path(number)
        meta = (folder / "version.json").read_text()
        started = time.perf_counter()
        size = 0
        with self.store.writing() as db:
            db.execute("INSERT INTO model_versions (number, meta, created) VALUES (?, ?, ?)",
                       (number, meta, time.time()))
            for name in ["version.json", *json.loads(meta)["files"]]:
                with open(folder / name, "rb") as fh:
                    part = 0
                    while chunk := fh.read(PART_BYTES):
                        db.execute("INSERT INTO model_files (number, name, part, data) VALUES (?, ?, ?, ?)",
                                   (number, name, part, chunk))
                        part, size = part + 1, size + len(chunk)
                    if part == 0:  # an empty file is one empty part
                        db.execute("INSERT INTO model_files VALUES (?, ?, 0, ?)", (number, name, b""))
            db.execute(PUT_META, (CURRENT, str(number)))
            db.execute("DELETE FROM model_versions WHERE number NOT IN "
                       "(SELECT number FROM model_versions ORDER BY number DESC LIMIT ?)", (max(1, keep),))
        log.info("model version %d uploaded to the store (%.1f MB in %.1f s)", number, size / 1e6,
                 time.perf_counter() - started)

    def sync(self, versions: ModelVersions) -> bool:
        """Install the store's current version into ``versions`` if the folder lacks it; whether it did.

        Raises ModelError when the version fails its checks; that version is then skipped (not
        downloaded again, at every poll) until the pointer names another.  One this host could not write
        (TransientModelError: a full disk) is tried again at the next call."""
        number = self.current()
        if number is None or number == self.refused or (versions.current() or 0) >= number:
            return False
        self.refused = None
        started = time.perf_counter()
        with self.store.dedicated() as db:  # one snapshot, on a connection of its own: not a request's
            row = db.execute("SELECT meta FROM model_versions WHERE number = ?", (number,)).fetchone()
            if row is None:
                return False  # replaced and dropped since the pointer was read: the next poll gets the new one
            try:
                names = ["version.json", *json.loads(row[0])["files"]]
            except (ValueError, KeyError, TypeError) as exc:
                self.refused = number
                raise ModelError(f"model version {number} in the store has a damaged version.json: {exc}") from exc

            def parts(name: str) -> Iterator[bytes]:
                part = 0
                while (got := db.execute("SELECT data FROM model_files WHERE number = ? AND name = ? AND part = ?",
                                         (number, name, part)).fetchone()) is not None:
                    yield bytes(got[0])
                    part += 1

            try:
                versions.install(number, {name: parts(name) for name in names})
            except TransientModelError:
                raise
            except ModelError:
                self.refused = number
                raise
        log.info("model version %d copied from the store in %.1f s", number, time.perf_counter() - started)
        return True


def shared_versions(store: Store) -> SharedVersions | None:
    """The store's versions table when it has one (PostgreSQL); None for SQLite, whose hosts share the folder."""
    return SharedVersions(store) if store.kind == "postgresql" else None
