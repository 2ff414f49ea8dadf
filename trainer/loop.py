"""The trainer role: the one process per model folder that keeps the published model up to date.

It holds the folder's trainer lock (a second trainer is refused).  At start it
publishes a first version when none fits this dataset and these parameters
(with the saved parameters, or the defaults, so API processes answer soon),
then tunes a dataset that has no saved parameters and publishes the tuned fit
as the next version.  From then on it checks the store every ``poll`` seconds
and fits again when the :class:`RetrainPolicy` says so or someone asked,
never two fits at once.  Posted ratings are already served through fold-in,
so a fit is about model quality, not visibility.  Its state, policy and last
fit go to the store, where every API process's /health reads them.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from model import ModelError, ModelParams
from spark.training import Cancelled
from storage.steering import CANDIDATE, PROMOTED, Steering
from storage.store import Store, StoreError

log = logging.getLogger(__name__)

RETRY_SECONDS = 5.0  # first wait after a failed fit; doubles up to 5 minutes
HEARTBEAT_SECONDS = 10.0
TUNE = "tune"  # what _due says when the parameters are to be tuned
CANDIDATE_FIT = "a candidate was requested"  # what _due says when an operator asked for a candidate fit
CANDIDATE_TRIES = 3  # failed fits of one candidate request before the trainer gives it up


class Engine(Protocol):
    """What the loop drives: engine.py's RecommendationEngine (the loop sits above it and does not import it)."""

    store: Store
    model_dir: Path
    tune_budget: object | None  # a model.TuneBudget while the parameters are to be tuned
    params_source: str

    def current_meta(self) -> dict | None: ...
    def matches(self, meta: dict | None) -> bool: ...
    def fit_and_publish(self, seq: int | None = None, params: ModelParams | None = None,
                        serve: bool = True) -> int: ...
    def adopt(self, params: ModelParams, source: str = "promoted") -> None: ...
    def share_versions(self) -> None: ...
    def tune(self) -> object: ...
    def cancel(self) -> None: ...


class TrainerBusy(RuntimeError):
    """Another trainer holds the model folder; the message says which process."""


@dataclass(frozen=True)
class RetrainPolicy:
    """When to fit again: once ``after_ratings`` new ratings arrived (or ``after_fraction`` of the ratings
    the version in service was trained on), or once the oldest rating it has not seen waited ``interval``
    seconds.  Zero (or None) turns either rule off; a request for a fit is always honoured."""

    after_ratings: int | None = None
    after_fraction: float | None = 0.01
    interval: float = 900.0

    def threshold(self, trained_on: int) -> int | None:
        """How many new ratings start a fit, for a version trained on ``trained_on`` ratings."""
        if self.after_ratings:
            return self.after_ratings
        if self.after_fraction:
            return max(1, round(self.after_fraction * trained_on))
        return None

    def reason(self, pending: int, waited: float, trained_on: int) -> str | None:
        """Why a fit is due with ``pending`` unseen ratings, the oldest ``waited`` seconds old; None if not."""
        if pending <= 0:
            return None
        threshold = self.threshold(trained_on)
        if threshold and pending >= threshold:
            return f"{pending} new rating(s), the threshold is {threshold}"
        if self.interval and waited >= self.interval:
            return f"the oldest of {pending} new rating(s) has waited {waited:.0f} s"
        return None

    def describe(self, trained_on: int) -> dict:
        return {"after_ratings": self.threshold(trained_on), "interval_seconds": self.interval or None}


class TrainerLock:
    """An exclusive ``flock`` on ``trainer.lock`` in the model folder, held for the trainer's life (the
    kernel drops it when the process dies, however it dies)."""

    def __init__(self, model_dir: Path, store: Store | None = None):
        self.path = Path(model_dir) / "trainer.lock"
        self.store = store
        self._fd: int | None = None
        self._claim = None

    def acquire(self) -> TrainerLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise TrainerBusy(f"another trainer ({holder}) already trains in {self.path.parent}; "
                              "run one trainer per model folder") from None
        if self.store is not None:  # a database store is shared by hosts: one trainer across all of them
            self._claim = self.store.trainer_lock()
            if self._claim is None:
                os.close(fd)
                raise TrainerBusy(f"another trainer already trains on the store {self.store.describe()['where']}; "
                                  "run one trainer per store")
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}\n".encode())
        self._fd = fd
        return self

    def held(self) -> bool:
        """Whether this trainer still holds the store (a database restart drops its lock; see AdvisoryClaim)."""
        return self._claim is None or self._claim.held()

    def release(self) -> None:
        if self._claim is not None:
            self._claim.release()
            self._claim = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class Trainer:
    """Runs the start-up fits and the retrain loop on one engine (in :meth:`run`'s thread)."""

    def __init__(self, engine: Engine, policy: RetrainPolicy, poll: float = 1.0,
                 heartbeat: float = HEARTBEAT_SECONDS, lock: TrainerLock | None = None):
        self.engine = engine
        self.lock = lock  # checked at every heartbeat: a trainer that lost the store stops
        self.store = engine.store
        self.policy = policy
        self.poll = poll
        self.heartbeat = heartbeat
        self.stop_event = threading.Event()
        self._meta = engine.current_meta()
        self._handled = float(self._meta.get("created", 0)) if self._meta else 0.0  # retrain requests up to then
        self.steering = Steering(self.store)
        self._candidate_failures: dict[float, int] = {}  # failed fits per candidate request (by its time)
        self._candidates_done: set[float] = set()
        self._status: dict = {"pid": os.getpid(), "host": os.uname().nodename, "heartbeat_seconds": heartbeat,
                              "state": "idle", "error": None, "last_fit": None}

    # --- status -----------------------------------------------------------------------------

    def _set(self, **changes) -> None:
        self._status.update(changes, since=time.time())
        self._beat()

    def _beat(self) -> None:
        trained_on = int(self._meta["n_ratings"]) if self._meta else 0
        self._status.update(heartbeat=time.time(), policy=self.policy.describe(trained_on))
        try:
            self.store.set_trainer_status(self._status)
        except Exception as exc:  # the store is busy or full: the next beat tries again
            log.warning("could not record the trainer's status: %s", exc)

    def _beats(self) -> None:
        while not self.stop_event.wait(self.heartbeat):
            if self.lock is not None and not self.lock.held():
                log.error("another trainer took the store's trainer lock (it was dropped when the database "
                          "restarted); this trainer stops")
                self._status.update(error="another trainer took the store")
                self.stop()
                return
            self._beat()

    # --- the loop ---------------------------------------------------------------------------

    def run(self) -> None:
        """Start-up fits, then fit whenever due, until :meth:`stop`.  Failures are logged and retried."""
        beats = threading.Thread(target=self._beats, name="trainer-heartbeat", daemon=True)
        beats.start()
        backoff, store_down = RETRY_SECONDS, False
        try:
            while not self.stop_event.is_set():
                try:
                    reason = self._due()
                except StoreError as exc:  # the database is away: keep waiting, the loop goes on when it is back
                    if not store_down:
                        log.warning("%s; no fit starts until it answers", exc)
                    store_down = True
                    self.stop_event.wait(self.poll)
                    continue
                if store_down:
                    log.info("the ratings store answers again")
                    store_down = False
                if reason is None:
                    self.stop_event.wait(self.poll)
                    continue
                try:
                    self._work(reason)
                    backoff = RETRY_SECONDS
                except Cancelled:
                    break
                except Exception as exc:
                    if self.stop_event.is_set():
                        break
                    self._failed(exc, backoff)
                    self.stop_event.wait(backoff)
                    backoff = min(backoff * 2, 300.0)
        finally:
            if self.stop_event.is_set():
                log.info("trainer stopped%s", " during a fit; the version in service stays"
                         if self._status["state"] in ("fitting", "tuning") else "")
            self.stop_event.set()
            self._set(state="stopped")

    def stopping(self) -> None:
        """Mark the stop as begun (only sets a flag: safe in a signal handler): a fit that fails from now on
        ends the loop quietly, as a cancelled one does.  :meth:`stop` cancels the fit."""
        self.stop_event.set()

    def stop(self) -> None:
        """Ask the loop to end; a running fit's Spark jobs are cancelled and nothing more is published."""
        self.stop_event.set()
        self.engine.cancel()

    def _due(self) -> str | None:
        """Why the next fit (or tuning) is due now, or None."""
        engine = self.engine
        try:
            engine.share_versions()  # a version published while the store was down goes there now
        except ModelError as exc:
            log.warning("could not share model versions through the store: %s", exc)
        self._adopt_promoted()
        if not engine.matches(self._meta):
            why = "no model is published yet" if self._meta is None else \
                "the published model was fitted on other data, with other parameters or on another ratings store"
            return f"{why}: a fit with the {engine.params_source} parameters"
        if engine.tune_budget is not None:
            return TUNE
        requested = self.store.retrain_requested()
        if requested is not None and requested > self._handled:
            return "a fit was requested"
        candidate = self.steering.candidate_request()
        if candidate is not None and not candidate.get("done") and not candidate.get("failed") \
                and candidate.get("at") not in self._candidates_done:
            return CANDIDATE_FIT
        seq = int(self._meta["seq"])
        pending = self.store.ratings_after(seq) if self.store.last_seq > seq else 0
        if not pending:
            return None
        first = self.store.first_time_after(seq) or time.time()
        return self.policy.reason(pending, time.time() - first, int(self._meta["n_ratings"]))

    def _adopt_promoted(self) -> None:
        """Parameters an operator promoted (an experiment's arm) become the dataset's, once."""
        promoted = self.steering.promoted()
        if promoted is None or promoted.get("applied") or promoted.get("params") is None:
            return
        try:
            params = ModelParams.from_dict(promoted["params"], "promoted parameters")
        except ModelError as exc:  # a version fitted before today's checks: the dataset's parameters stay
            log.error("the promoted parameters of model version %s cannot be used (%s); the dataset's stay",
                      promoted.get("version"), exc)
            self.steering.settle(PROMOTED, promoted["at"], applied=time.time(), error=str(exc))
            return
        if params != self.engine.params:
            log.info("the parameters of model version %s were promoted: they are the dataset's from now on",
                     promoted.get("version"))
            self.engine.adopt(params)
        self.steering.settle(PROMOTED, promoted["at"], applied=time.time())

    def _candidate(self) -> None:
        """Fit what an operator asked for: with its parameters, published as a candidate (``serve`` false),
        or (``serve`` true) with the parameters made the dataset's first."""
        request = self.steering.candidate_request() or {}
        asked = request.get("at")
        try:
            params = None if request.get("params") is None else ModelParams.from_dict(request["params"], "params")
        except ModelError as exc:  # checked when asked; a request written by an older release may not pass
            self.steering.settle(CANDIDATE, asked, failed=str(exc))
            raise
        serve = bool(request.get("serve", True))
        if params is not None and serve:
            self.engine.adopt(params, "given")
            params = None
        log.info("fitting: %s%s", CANDIDATE_FIT, "" if serve else " (published without serving it)")
        self._set(state="fitting", reason=CANDIDATE_FIT)
        start = time.perf_counter()
        try:
            number = self.engine.fit_and_publish(params=params, serve=serve)
        except Cancelled:
            raise
        except Exception as exc:  # retried with the loop's back-off, then given up (normal fits go on)
            tries = self._candidate_failures[asked] = self._candidate_failures.get(asked, 0) + 1
            if tries >= CANDIDATE_TRIES:
                log.error("giving up the candidate fit after %d failures", tries)
                self.steering.settle(CANDIDATE, asked, failed=f"{type(exc).__name__}: {str(exc)[:200]}")
            raise
        if serve:
            self._meta = self.engine.current_meta()
        self._candidates_done.add(asked)
        try:
            self.steering.settle(CANDIDATE, asked, done=number)  # once, whatever restarts follow
        except StoreError as exc:  # this trainer remembers it; a restart before the store answers fits it again
            log.warning("could not record the candidate fit as done: %s", exc)
        self._set(state="idle", error=None, reason=None,
                  last_fit={"version": number, "seconds": round(time.perf_counter() - start, 1), "ended": time.time(),
                            "candidate": not serve})

    def _work(self, reason: str) -> None:
        if reason == CANDIDATE_FIT:
            self._candidate()
            return
        if reason == TUNE:
            log.info("tuning the parameters (no params.json in %s); the version in service answers meanwhile",
                     self.engine.model_dir)
            self._set(state="tuning", reason="tuning")
            self.engine.tune()
            if self.engine.matches(self._meta):
                self._set(state="idle", reason=None)
                return
            reason = "the tuned parameters"
        self._fit(reason)

    def _fit(self, reason: str) -> None:
        asked = self.store.retrain_requested() or 0.0  # requests up to now are answered once this fit is out
        log.info("fitting: %s", reason)
        self._set(state="fitting", reason=reason)
        start = time.perf_counter()
        number = self.engine.fit_and_publish()
        self._meta = self.engine.current_meta()
        self._handled = max(self._handled, asked)
        self._set(state="idle", error=None, reason=None,
                  last_fit={"version": number, "seconds": round(time.perf_counter() - start, 1), "ended": time.time()})

    def _failed(self, exc: Exception, backoff: float) -> None:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        message = f"{type(exc).__name__}: {first_line}"
        serving = self._meta["version"] if self._meta else None
        log.error("fit failed (%s); %s; retrying in %.0f s", message,
                  f"version {serving} stays in service" if serving else "nothing is published yet", backoff)
        log.debug("fit failure", exc_info=exc)
        self._set(state="failed", error=message)
