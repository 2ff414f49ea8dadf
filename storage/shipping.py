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
from storage.steering import Steering, named_versions
from storage.store import PUT_META, Store
from storage.versions import ModelVersions

log = logging.getLogger(__name__)

PART_BYTES = 8 << 20  # bytea values of 8 MiB: far below PostgreSQL's 1 GB limit, and a bounded buffer
CURRENT = "current_version"  # the meta key naming the version in service


class SharedVersions:
    """The versions table of a database store: :meth:`upload` on the trainer, :meth:`sync` on API hosts."""

    def __init__(self, store: Store):
        self.store = store
        self.refused: set[int] = set()  # versions that failed their checks, until the pointer moves on
        self._pointer: int | None = None

    def current(self) -> int | None:
        value = self.store.get_meta(CURRENT)
        return int(value) if value else None

    def newest(self) -> int:
        """The highest version number uploaded (0 for none; the current one is always among the kept ones):
        a trainer on a new host numbers above it."""
        with self.store.reading() as db:
            return int(db.execute("SELECT max(number) FROM model_versions").fetchone()[0] or 0)

    def numbers(self) -> list[int]:
        """Every version the store holds, oldest first."""
        with self.store.reading() as db:
            return [int(r[0]) for r in db.execute("SELECT number FROM model_versions ORDER BY number").fetchall()]

    def describe(self, number: int) -> dict | None:
        """A version's version.json as uploaded, without its checksums (None when the store lacks it)."""
        with self.store.reading() as db:
            row = db.execute("SELECT meta FROM model_versions WHERE number = ?", (number,)).fetchone()
        if row is None:
            return None
        meta = json.loads(row[0])
        meta.pop("files", None)
        return meta

    def upload(self, versions: ModelVersions, number: int, keep: int, serve: bool = True) -> None:
        """Copy version ``number`` of ``versions`` into the database and (``serve``) make it current, in one
        transaction; drop uploaded versions beyond the newest ``keep`` but the current one and those the
        serving plan names (its row is locked once the files are in, before the drop: a plan change made
        meanwhile waits for the commit, and then sees what is kept)."""
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
            if serve:
                db.execute(PUT_META, (CURRENT, str(number)))
            # Only now, with the files in: a plan change waits for this commit, not for the whole stream.
            protected = named_versions(Steering(self.store).locked_plan(db))
            row = db.execute("SELECT value FROM meta WHERE key = ?", (CURRENT,)).fetchone()
            protected.add(int(row[0]) if row else number)
            newest = [int(r[0]) for r in db.execute("SELECT number FROM model_versions ORDER BY number DESC "
                                                    "LIMIT ?", (max(1, keep),)).fetchall()]
            kept = sorted(protected | set(newest))
            db.execute(f"DELETE FROM model_versions WHERE number NOT IN ({', '.join('?' * len(kept))})", kept)
        log.info("model version %d uploaded to the store%s (%.1f MB in %.1f s)", number,
                 "" if serve else " as a candidate", size / 1e6, time.perf_counter() - started)

    def sync(self, versions: ModelVersions, wanted: set[int] | frozenset[int] = frozenset()) -> bool:
        """Install the store's current version into ``versions`` if the folder lacks it, and each ``wanted``
        one it lacks (a pinned or experiment version; not named in CURRENT); whether it installed any.

        Raises ModelError when a version fails its checks; that version is then skipped (not downloaded
        again, at every poll) until the pointer names another.  One this host could not write
        (TransientModelError: a full disk) is tried again at the next call."""
        number = self.current()
        if number != self._pointer:
            self.refused, self._pointer = set(), number
        installed = False
        if number is not None and number not in self.refused and (versions.current() or 0) < number:
            installed = self._install(versions, number, point=True)
        have = set(versions.numbers())
        for extra in sorted(set(wanted) - have - {number} - self.refused):
            installed = self._install(versions, extra, point=False) or installed
        return installed

    def _install(self, versions: ModelVersions, number: int, point: bool) -> bool:
        started = time.perf_counter()
        with self.store.dedicated() as db:  # one snapshot, on a connection of its own: not a request's
            row = db.execute("SELECT meta FROM model_versions WHERE number = ?", (number,)).fetchone()
            if row is None:
                return False  # replaced and dropped since the pointer was read: the next poll gets the new one
            try:
                names = ["version.json", *json.loads(row[0])["files"]]
            except (ValueError, KeyError, TypeError) as exc:
                self.refused.add(number)
                raise ModelError(f"model version {number} in the store has a damaged version.json: {exc}") from exc

            def parts(name: str) -> Iterator[bytes]:
                part = 0
                while (got := db.execute("SELECT data FROM model_files WHERE number = ? AND name = ? AND part = ?",
                                         (number, name, part)).fetchone()) is not None:
                    yield bytes(got[0])
                    part += 1

            try:
                versions.install(number, {name: parts(name) for name in names}, point)
            except TransientModelError:
                raise
            except ModelError:
                self.refused.add(number)
                raise
        log.info("model version %d copied from the store in %.1f s", number, time.perf_counter() - started)
        return True


def shared_versions(store: Store) -> SharedVersions | None:
    """The store's versions table when it has one (PostgreSQL); None for SQLite, whose hosts share the folder."""
    return SharedVersions(store) if store.kind == "postgresql" else None
