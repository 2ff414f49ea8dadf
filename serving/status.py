"""What the operators' status page shows (/status.json; /status draws it): the version in service and the
published ones with their fits, offline validation figures and live figures, and the store's kind, place and size."""

from __future__ import annotations

import time

from storage.params import tuning_summary
from storage.store import Store, StoreError

STATUS_SECONDS = 1.0  # /health's trainer status is read at most this often (its counts: when ratings arrive)


class Health:
    """What /health reports: the version in service, what it has not seen, and the trainer's state.

    The store is asked for its counts only when ratings arrived or the version changed, and for the
    trainer's status at most every STATUS_SECONDS, so a flood of /health costs the store little.
    """

    def __init__(self, store: Store, quality):
        self.store = store
        self.quality = quality
        self._cache: tuple | None = None  # (key, pending, first, trainer, when)

    def read(self, served, route, view) -> dict:
        """The status of ``served`` (the version that answers outside an experiment, with what was posted since
        folded in; ``route`` says why it serves) and of the ``view`` of every served version."""
        try:
            pending, first, trainer = self._store_status(served)
            store_error = None
        except StoreError as exc:  # still serving from memory: say what is unknown, and why
            pending, trainer, first, store_error = None, {}, None, str(exc)
        policy = trainer.get("policy") or {}
        due: dict = {"ratings_to_go": None, "at": None}
        if policy.get("after_ratings") and pending is not None:
            due["ratings_to_go"] = max(0, int(policy["after_ratings"]) - pending)
        if first is not None and policy.get("interval_seconds"):
            due["at"] = iso(first + float(policy["interval_seconds"]))
        state = trainer.get("state", "unknown")
        if trainer.get("heartbeat") and state not in ("stopped",) and \
                time.time() - float(trainer["heartbeat"]) > 3 * float(trainer.get("heartbeat_seconds", 10)):
            state = "not running"  # no heartbeat: the trainer died without saying so
        return {"status": "ok" if store_error is None else "degraded", "store_error": store_error,
                "model_version": served.number, "trained_at": served.snapshot.trained_at,
                "trained_on_request": served.seq, "n_ratings": int(served.counts.sum()), "pending_ratings": pending,
                "training": state in ("fitting", "tuning"),
                "trainer": {"state": state, "pid": trainer.get("pid"), "last_fit": trainer.get("last_fit"),
                            "error": trainer.get("error")},
                "last_retrain_error": trainer.get("error"), "next_fit": due,
                "serving": serving(route, view), "live_quality": self.quality.summary()}

    def _store_status(self, served) -> tuple[int, float | None, dict]:
        """Pending ratings, the first one's time and the trainer's status, from the store or the cache."""
        key, now = (served.number, served.seq, served.synced), time.monotonic()
        cached = self._cache
        if cached is not None and cached[0] == key:
            pending, first = cached[1], cached[2]
        else:
            pending = self.store.ratings_after(served.seq)
            first = self.store.first_time_after(served.seq) if pending else None
        if cached is not None and now - cached[4] < STATUS_SECONDS:
            trainer, now = cached[3], cached[4]
        else:
            trainer = self.store.trainer_status() or {}
        self._cache = (key, pending, first, trainer, now)
        return pending, first, trainer


def serving(route, view) -> dict:
    """What serves and why: the default version (``reason``: pinned or newest), the pin, the newest, the
    running experiment's arms, and every version this process has loaded."""
    experiment = view.plan.experiment
    return {"version": route.version, "reason": route.reason, "pinned": view.plan.pinned, "newest": view.newest,
            "experiment": None if experiment is None else {
                "name": experiment.name, "arms": experiment.arms, "traffic": experiment.traffic},
            "loaded": sorted(view.served), "load_errors": {str(k): v for k, v in view.errors.items()} or None}


def iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def public_health(health: dict) -> dict:
    """/health for callers without the admin token: status, version and counts, and no paths, pids, hosts
    or error texts (which name the store's host and user); the store is only said not to answer."""
    trainer = health["trainer"]
    public = {k: v for k, v in health.items() if k not in ("store_error", "last_retrain_error", "trainer")}
    public["trainer"] = {"state": trainer["state"], "last_fit": trainer["last_fit"]}
    # What serves and why, not the experiment's arms or traffic: with them and the hash anyone could tell
    # every user's arm.
    public["serving"] = {k: health["serving"][k] for k in ("version", "reason")}
    if health["store_error"] is not None:
        public["store"] = "not answering"
    return public


def operator_status(recommender, control) -> dict:
    """The serving status (/health's), each kept version newest first with its fit, parameters and live
    figures (``control``'s /admin/versions rows), the running and last experiments with their arms side by
    side, the last tuning's validation figures, and the ratings store's size on disk."""
    health = recommender.status()
    versions = control.versions()
    # The figures travel with each version (an API host of a database store has no tune.json of its own).
    serving = control.describe(health["model_version"]) or {}
    tuning = serving.get("validation") or tuning_summary(recommender.model_dir)
    try:
        experiments = control.experiments()["experiments"]
    except StoreError:
        experiments = None
    return {"serving": health, "versions": versions["versions"], "experiments": experiments, "validation": tuning,
            "store": {**recommender.store.describe(), "last_request": recommender.store.last_seq}}
