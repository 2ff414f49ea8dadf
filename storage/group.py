"""Group commit: the ratings requests a process takes at once share one write transaction and one commit.

A store's commit is the expensive part of a POST (SQLite's fsync of its WAL, a
PostgreSQL server's WAL flush and the ``last_seq`` row lock held until it).  So
each request joins a queue, and the first thread to find the commit free (the
leader) writes everything queued by then in one transaction, each request in a
savepoint of its own, and commits once; the requests that arrive meanwhile
form the next group.  No thread waits for a timer: a lone request commits at
once, as before, and a busy process commits as often as its store can.

Every promise of :mod:`storage.store` holds per request:

* each request takes its own request number (consecutive within the group, as
  the ``last_seq`` row gives them out) and is acknowledged only after the
  group's commit returned;
* a request that fails on its own (an Idempotency-Key seen before, a refused
  row, an error in what it writes along) is rolled back to its savepoint: it
  stores nothing, takes no number, and the others of its group go on;
* when the commit itself fails, no request of the group is acknowledged and
  none is stored (each one gets the StoreError).

A group is at most the process's request threads (16 by default), each request
at most the POST cap.  As for a request alone, a connection lost during the
COMMIT itself leaves its outcome unknown: every request of the group is told
it failed, and a client that retries with its Idempotency-Key stores it once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from storage.errors import StoreError


@dataclass(eq=False)
class Pending:
    """One queued request: ``write(cursor)`` stores it and returns its result; after the commit, ``result``
    or ``error`` says how it went."""

    write: Callable[[Any], Any]
    result: Any = None
    error: BaseException | None = None
    done: bool = False


class GroupCommit:
    """One process's queue of write requests in front of a store's write transactions.

    ``begin()`` opens one write transaction (the store's ``writing``, which raises StoreError when it
    cannot commit); one of the ``database_errors`` (one request's, or the commit's) reaches the requests
    it ends as ``refusal(exc)``, a StoreError; any other error (Replayed, a bug) as it is.
    """

    def __init__(self, begin: Callable[[], AbstractContextManager[Any]],
                 refusal: Callable[[Exception], StoreError], database_errors: tuple[type[Exception], ...]):
        self._begin, self._refusal, self._database_errors = begin, refusal, database_errors
        self._queue: list[Pending] = []
        self._queued = threading.Condition()  # guards the queue; notified at each arrival
        self._leader = threading.Lock()  # held by the thread committing a group
        self.groups = self.requests = 0  # transactions committed (or tried) and the requests they carried

    def submit(self, write: Callable[[Any], Any]) -> Any:
        """Run ``write(cursor)`` in a write transaction shared with the requests queued meanwhile; return its
        result once that transaction committed (raise its error, or the commit's, otherwise)."""
        pending = Pending(write)
        with self._queued:
            self._queue.append(pending)
            self._queued.notify_all()
        with self._leader:
            if not pending.done:  # no earlier leader took it: it is in the queue, and the group takes it all
                self._commit()  # (and marks every request it took done, however it ends)
        if pending.error is not None:
            raise pending.error
        return pending.result

    def wait_queued(self, count: int, timeout: float) -> bool:
        """Block until at least ``count`` requests wait for the next group (tests line requests up with it);
        False after ``timeout`` seconds."""
        with self._queued:
            return self._queued.wait_for(lambda: len(self._queue) >= count, timeout)

    def _commit(self) -> None:
        group: list[Pending] = []
        try:
            with self._queued:
                group, self._queue = self._queue, []
            self.groups += 1
            self.requests += len(group)
            with self._begin() as db:
                for pending in group:
                    self._one(db, pending)
        except Exception as exc:  # noqa: BLE001 - the commit (or a rollback to a savepoint) failed: none stays
            self._fail(group, self._error(exc))
        except BaseException:  # the process is stopping (raised in the leader's thread, whichever request's
            self._fail(group, StoreError("could not store the ratings: the process is stopping"))  # write it was)
            raise
        finally:
            for pending in group:
                pending.done = True

    def _one(self, db, pending: Pending) -> None:
        """One request in its own savepoint: kept, or rolled back alone."""
        db.execute("SAVEPOINT request")
        try:
            pending.result = pending.write(db)
        except Exception as exc:  # noqa: BLE001 - this request's own failure: the rest of the group goes on
            try:
                db.execute("ROLLBACK TO SAVEPOINT request")
            except Exception as gone:  # noqa: BLE001 - the transaction is gone (SQLite rolls it all back on a
                # full disk or an I/O error; a lost connection): the group fails, for the database's first reason
                raise (exc if isinstance(exc, self._database_errors) else gone) from None
            pending.error = self._error(exc)
        db.execute("RELEASE SAVEPOINT request")

    def _error(self, exc: Exception) -> BaseException:
        return self._refusal(exc) if isinstance(exc, self._database_errors) else exc

    @staticmethod
    def _fail(group: list[Pending], error: BaseException) -> None:
        for pending in group:
            pending.result, pending.error = None, error
