"""The versions an API process serves, loaded and kept up to date: what the serving plan names, nothing more.

At every poll the :class:`Loader` reads the plan from the store (the pin and
the running experiment: serving/plan.py) and the versions folder's CURRENT
(the newest), copies any version it lacks from a database store, loads
each version the plan serves that is not loaded yet, and swaps in a new
:class:`View` whole; versions no longer served are let go (their leases
released, so pruning may take them).  Before each answer :meth:`sync` folds
in every rating posted since, by any process, into every served version.
Arrays are mapped files, so the processes of one host share one copy of a
version's pages however many of them serve it.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from model import ModelError, TransientModelError
from serving.backoff import Backoff
from serving.plan import Plan, Route
from serving.shelf import Shelf
from serving.state import Served
from storage.shipping import SharedVersions
from storage.steering import Steering
from storage.store import SHOWN, Store, StoreError
from storage.versions import Lease, ModelVersions, Version

log = logging.getLogger(__name__)

PLAN_COPY = "plan.json"  # in the versions folder: the last serving plan read, for a start during an outage


@dataclass(frozen=True)
class View:
    """The plan, the newest version's number, and every loaded version it serves; replaced whole."""

    plan: Plan
    newest: int | None
    served: dict[int, Served]
    fallback: int  # serves a route whose version could not be loaded (the last default that loaded)
    errors: dict[int, str] = field(default_factory=dict)

    def route(self, user: int | None) -> tuple[Served, Route]:
        """The version for ``user`` and why; a version that could not be loaded is stood in for by the
        fallback (``Route.version`` then names the one that answers)."""
        route = self.plan.route(user, self.newest if self.newest is not None else self.fallback)
        served = self.served.get(route.version)
        if served is None:
            served = self.served[self.fallback]
            route = Route(served.number, route.reason, route.experiment, route.arm, stand_in=True)
        return served, route

    @property
    def default(self) -> Route:
        return self.route(None)[1]


class Loader:
    """Loads and swaps the served versions (one load at a time) and folds posted ratings into them."""

    def __init__(self, versions: ModelVersions, store: Store, shared: SharedVersions | None,
                 clock: Callable[[], float] = time.monotonic):
        self.versions = versions
        self.store = store
        self.shared = shared
        self.steering = Steering(store)
        self.view: View | None = None
        self.plan = Plan()  # the last plan read (kept while the store does not answer)
        self._plan_read = False
        self._leases: dict[int, Lease] = {}
        self._sync_lock = threading.Lock()  # one fold-in (or swap) at a time
        self._swap_lock = threading.Lock()  # one load at a time
        self._refused: dict[int, str] = {}  # versions that failed their checks, and why (until CURRENT moves on)
        self._refused_newest: tuple | None = None
        self.load_error: str | None = None
        self.clock = clock
        self._load_backoff = Backoff(lambda: self.clock())  # a load that failed for a passing reason
        self._copy_backoff = Backoff(lambda: self.clock())  # a copy from the store this host could not hold
        self.on_store_trouble: Callable[[StoreError], None] = lambda exc: None
        self.on_store_back: Callable[[], None] = lambda: None
        self.on_forgotten: Callable[[list[int], int], None] = lambda users, upto: None  # this process's records
        self.now: Callable[[], float] = time.time  # the wall clock movie rules' dates are judged by
        self.shelf = Shelf(lambda: self.now())  # hidden movies and movie rules, whatever the version (read once)
        self._shelf_read = False

    # --- loading ----------------------------------------------------------------------------

    def read_plan(self) -> Plan:
        """The store's plan; when the store does not answer, the last one read, by this process or (at start)
        by any process of this host, which keep a copy in the versions folder (``plan.json``): a process
        that starts during an outage does not go back to the newest version an operator rolled back from."""
        try:
            plan = Plan.from_json(self.steering.plan())
        except StoreError as exc:
            self.on_store_trouble(exc)
            if not self._plan_read:
                self._plan_read = True
                try:
                    self.plan = Plan.from_json(json.loads((self.versions.root / PLAN_COPY).read_text()))
                    log.warning("serving the plan this host last read from the store (%s)",
                                self.versions.root / PLAN_COPY)
                except (OSError, ValueError, KeyError, TypeError):
                    pass
            return self.plan
        if plan != self.plan or not self._plan_read:
            try:
                self.versions.root.mkdir(parents=True, exist_ok=True)
                tmp = self.versions.root / f".{PLAN_COPY}-{os.getpid()}-{threading.get_ident()}.tmp"
                tmp.write_bytes(json.dumps(plan.as_json()).encode())  # a file of this process's own, renamed
                os.replace(tmp, self.versions.root / PLAN_COPY)
            except OSError as exc:
                log.warning("could not keep a copy of the serving plan in %s: %s", self.versions.root, exc)
        self.plan, self._plan_read = plan, True
        return plan

    def refresh(self) -> bool:
        """Follow the plan and CURRENT: load what they serve and swap it in; whether the view changed."""
        with self._swap_lock:
            plan = self.read_plan()
            if self.shared is not None and self._copy_backoff.ready():  # else: serve what is here
                try:
                    self.shared.sync(self.versions, plan.named())
                    self.on_store_back()
                    self._copy_backoff.succeeded()
                except StoreError as exc:
                    self.on_store_trouble(exc)
                except ModelError as exc:  # a full disk here: not every second, each a whole download
                    if isinstance(exc, TransientModelError):
                        self._copy_backoff.failed()
                    log.warning("could not copy a model version from the store: %s", exc)
            newest = self.versions.current()
            if (newest, plan) != self._refused_newest:  # a new version or plan: damaged ones are tried again
                self._refused, self._refused_newest = {}, (newest, plan)
            view = self.view
            loaded = dict(view.served) if view is not None else {}
            for served in loaded.values():
                self._settle(served)
            wanted = plan.versions(newest) if newest is not None or plan.pinned is not None else plan.named()
            errors: dict[int, str] = {}
            fresh: dict[int, tuple[Served, Lease]] = {}
            for number in sorted(wanted - set(loaded)):
                got = self._load(number, errors, first=view is None)
                if got is not None:
                    fresh[number] = got
            served = {n: s for n, s in loaded.items() if n in wanted}
            served.update({n: s for n, (s, _) in fresh.items()})
            default = plan.default(newest if newest is not None else -1).version
            fallback = default if default in served else (view.fallback if view is not None else None)
            if fallback is not None and fallback not in served and view is not None:
                served[fallback] = view.served[fallback]  # the last default stands in until the wanted one loads
            if fallback is None:
                fallback = next(iter(sorted(served, reverse=True)), None)
            self.load_error = next(iter(errors.values()), None)
            if fallback is None:  # nothing to serve yet
                for _, lease in fresh.values():
                    lease.release()
                return False
            changed = view is None or set(served) != set(view.served) or plan != view.plan \
                or fallback != view.fallback  # what answers changed (a newest that failed to load changes nothing)
            if changed or errors != view.errors or newest != view.newest:
                with self._sync_lock:
                    self.view = View(plan, newest, served, fallback, errors)
            for number, (_, lease) in fresh.items():
                self._leases[number] = lease
            for number in [n for n in self._leases if n not in served]:
                self._leases.pop(number).release()
            if fresh:
                # What is alive now (the libraries, these versions) lives long: keep it out of the cyclic GC's
                # full passes, which held the GIL for 10 ms on ml-latest-small, in the middle of requests.
                gc.freeze()
            return changed

    def _load(self, number: int, errors: dict[int, str], first: bool) -> tuple[Served, Lease] | None:
        """Version ``number`` loaded, leased and caught up with the store; None (the reason in ``errors``)
        when it cannot be now."""
        if number in self._refused:
            errors[number] = self._refused[number]
            return None
        if not self._load_backoff.ready(number):
            errors[number] = self.load_error or f"model version {number} is waiting to be loaded again"
            return None
        try:
            version, lease = self.versions.load(number)
        except TransientModelError as exc:  # not the version's fault (EMFILE, EIO, ENOMEM): try again later
            delay, errors[number] = self._load_backoff.failed(number), str(exc)
            log.warning("%s; %s; trying again in %.0f s", exc,
                        "not serving it" if not first else "not serving", delay)
            return None
        except ModelError as exc:  # damaged or gone: said once, and not read again until CURRENT moves on
            log.error("%s; %s", exc, "the versions in service stay" if not first else "not serving")
            errors[number] = str(exc)
            self._refused[number] = str(exc)
            return None
        start = time.perf_counter()
        try:
            fresh = self._based(version)
            fresh.apply(*self.store.changes(fresh.seq))  # most of the catching up, outside the lock
            with self._sync_lock:
                fresh.apply(*self.store.changes(fresh.synced))
                if not self._shelf_read:  # no version answers without the movie rules and hidden movies
                    self._read_shelf()
        except BaseException as exc:  # the store is away: not the version's fault, try again later
            lease.release()
            if isinstance(exc, StoreError):
                self._load_backoff.failed(number)
                self.on_store_trouble(exc)
                errors[number] = str(exc)
                return None
            raise
        self._load_backoff.succeeded()
        log.info("model version %d in service (trained on ratings up to request %d; %d user(s) posted since; "
                 "loaded in %.2f s)", fresh.number, fresh.seq, len(fresh.posted), time.perf_counter() - start)
        return fresh, lease

    def _based(self, version: Version) -> Served:
        """The version, served over the store's ratings from the last request of this store it covers: all of
        them when it was fitted on another store or before the store was restored (said once per load)."""
        covered = self.store.covered(version.meta)
        if covered is None:
            log.warning("model version %d in %s is not recorded as fitted on the ratings store %s as it is now "
                        "(another store, one restored from an earlier backup, or not recorded yet): every rating "
                        "the store holds is folded in", version.number, self.versions.root, self.store.where)
        return Served(version, 0 if covered is None else covered)

    def _settle(self, served: Served) -> None:
        """A version served over the whole store because it was not recorded yet (published, then recorded;
        or published while the store was down): once the store records it, count from its request again."""
        try:
            if served.base != served.version.seq and self.store.covered(served.version.meta) == served.version.seq:
                served.base = served.version.seq
                log.info("model version %d is recorded in the ratings store now", served.number)
        except StoreError as exc:
            self.on_store_trouble(exc)

    # --- folding in -------------------------------------------------------------------------

    def _read_shelf(self) -> None:
        """The hidden movies and movie rules as the store holds them now: read with the first version this
        process loads (none is served without them), then kept up by sync."""
        shelf = Shelf(self.shelf.now)
        shelf.apply(*self.store.changes(0, SHOWN))
        self.shelf, self._shelf_read = shelf, True

    def _synced(self, view: View) -> list[int]:
        return [s.synced for s in view.served.values()] + ([self.shelf.synced] if self._shelf_read else [])

    def sync(self) -> View:
        """Fold everything acknowledged before now (ratings, forgetting, withdrawals, hidden movies, movie
        rules) into every served version and the shelf (one read of the store's last request when nothing
        is new); the view to answer from, folded in at least that far (a view swapped in since the caller
        looked may be behind the one it replaced: the one checked is the one returned).  Raises StoreError
        when the store is away."""
        last = self.store.last_seq
        view = self.view
        if last < max(self._synced(view)):  # others folded further, or the store went back (a restored backup)
            with self._sync_lock:
                view = self.view
                if self.store.last_seq < max(self._synced(view)):  # went back: start over from it
                    served = {}
                    for number, old in view.served.items():
                        fresh = self._based(old.version)
                        fresh.apply(*self.store.changes(fresh.synced))
                        served[number] = fresh
                    self._read_shelf()
                    self.view = view = View(view.plan, view.newest, served, view.fallback, view.errors)
                    return view
        if last > min(self._synced(view)):
            with self._sync_lock:
                view = self.view
                if last <= min(self._synced(view)):  # folded in by the thread that had the lock before
                    return view
                upto, changes = self.store.changes(min(self._synced(view)))
                for served in view.served.values():  # newest per user and movie: applying one twice is harmless
                    served.apply(upto, changes)
                self.shelf.apply(upto, changes)
            forgotten = [u for u, c in changes.users.items() if c.forgotten]
            if forgotten:
                self.on_forgotten(forgotten, upto)
        return view

    def close(self) -> None:
        for lease in self._leases.values():
            lease.release()
        self._leases.clear()
