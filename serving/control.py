"""Operators steer which model versions serve: list the kept ones, pin or roll back, ask for candidates, run
experiments and read their figures.  The app's admin blueprint (model_admin.py) is a thin layer over this.

Every change goes to the store's serving plan (storage/steering.py), which
every API process follows within a poll; the process that took the request
follows it before answering.  Before a version is pinned or put in an
experiment this process holds a lease on it (and, with a database store,
copies it first), so no prune can take it between the check and the plan.
"""

from __future__ import annotations

import time
from contextlib import ExitStack

from model import ModelError, ModelParams
from serving.errors import InputError, NotFound, StoreUnavailable
from serving.figures import ArmTotals, experiment_figures
from serving.plan import NAME, Experiment
from serving.status import iso as _iso
from storage.steering import PlanChanged
from storage.store import StoreError

MAX_ARMS = 10
BODY_KEYS = {"name", "arms", "traffic", "control"}


class ModelControl:
    """The operators' side of one API process's recommender."""

    def __init__(self, recommender):
        self.rec = recommender
        self.steering = recommender.steering

    # --- what is kept -----------------------------------------------------------------------

    def kept(self) -> list[int]:
        """Every kept version, newest first: the store's (a database store carries them) or this folder's."""
        shared = self.rec.shared
        return sorted(shared.numbers() if shared is not None else self.rec.versions.numbers(), reverse=True)

    def describe(self, number: int) -> dict | None:
        meta = self.rec.versions.describe(number)
        if meta is None and self.rec.shared is not None:
            meta = self.rec.shared.describe(number)
        return meta

    def versions(self) -> dict:
        """GET /admin/versions: what serves and why, and every kept version with its fit, parameters,
        validation and live figures (this process's), newest first."""
        self.rec.current()  # fails with a 503 before the first version
        view = self.rec.loader.view
        plan, default = view.plan, view.default
        arms: dict[int, list[str]] = {}  # version -> the arms it serves (two arms may share one)
        for arm, number in sorted((plan.experiment.arms if plan.experiment else {}).items()):
            arms.setdefault(number, []).append(arm)
        live = {row["version"]: row for row in self.rec.quality.summary()}
        rows = []
        for number in self.kept():
            meta = self.describe(number) or {}
            rows.append({"version": number, "created_at": meta.get("created_at"), "seq": meta.get("seq"),
                         "n_ratings": meta.get("n_ratings"), "fit_seconds": meta.get("fit_seconds"),
                         "params": meta.get("params"), "tuned": meta.get("tuned"),
                         "validation": meta.get("validation"), "candidate": bool(meta.get("candidate")),
                         "newest": number == view.newest, "pinned": number == plan.pinned,
                         "experiment": None if number not in arms else {"name": plan.experiment.name,
                                                                        "arms": arms[number]},
                         "serving": number in view.served, "live": live.get(number)})
        return {"serving": default.version, "reason": default.reason, "pinned": plan.pinned,
                "newest": view.newest, "experiment": None if plan.experiment is None else plan.experiment.name,
                "versions": rows}

    def _hold(self, numbers: list[int], stack: ExitStack) -> list[int]:
        """Make ``numbers`` present in this folder and hold them (leases in ``stack``) while the plan changes;
        the kept versions to check them against (None for a database store: checked in its transaction)."""
        kept = self.kept()
        missing = [n for n in numbers if n not in kept]
        if missing:
            raise NotFound(f"model version {missing[0]} is not kept; kept versions: "
                           f"{', '.join(map(str, kept)) or 'none'}")
        shared = self.rec.shared
        for number in numbers:
            try:
                if shared is not None and number not in self.rec.versions.numbers():
                    shared.sync(self.rec.versions, {number})  # copied here, and spared by that copy's prune
                _, lease = self.rec.versions.load(number)
            except StoreError as exc:
                raise _unavailable(exc) from None
            except ModelError as exc:  # damaged, or this host cannot hold it (a full disk)
                raise InputError(f"model version {number} cannot be served here: {exc}", 409) from None
            stack.callback(lease.release)
        return kept

    def _changed(self, change):
        """Run a plan change, then follow the new plan here before answering."""
        try:
            plan = change()
        except PlanChanged as exc:
            raise (NotFound(exc.message) if exc.status == 404 else InputError(exc.message, exc.status)) from None
        self.rec.refresh()
        return plan

    # --- pin and roll back ------------------------------------------------------------------

    def serve(self, body) -> dict:
        """POST /admin/serve ``{"version": N}`` pins version N, ``{"version": "newest"}`` follows the newest."""
        if not isinstance(body, dict) or set(body) != {"version"}:
            raise InputError('expected {"version": <a kept version number>} or {"version": "newest"}')
        wanted = body["version"]
        if wanted == "newest":
            self._changed(lambda: self.steering.pin(None))
        else:
            if isinstance(wanted, bool) or not isinstance(wanted, int):
                raise InputError(f'version must be a version number or "newest", not {str(wanted)[:40]!r}')
            with ExitStack() as stack:
                kept = self._hold([wanted], stack)
                self._changed(lambda: self.steering.pin(wanted, None if self.rec.shared else kept))
        view = self.rec.loader.view
        return {"serving": view.default.version, "pinned": view.plan.pinned}

    # --- candidates -------------------------------------------------------------------------

    def retrain(self, body) -> dict:
        """POST /admin/retrain: a fit on every stored rating now; with ``{"params": {...}, "serve": false}`` a
        candidate with those parameters (checked here, before any fit), published without serving it."""
        if body is None:
            return {"requested_at": self.rec.request_retrain(), "model_version": self.rec.version}
        if not isinstance(body, dict) or set(body) - {"params", "serve"}:
            extra = ", ".join(sorted(set(body) - {"params", "serve"})) if isinstance(body, dict) else ""
            raise InputError('expected {"params": {...}, "serve": false}' + (f", not the key(s) {extra}" if extra
                                                                               else ""))
        serve = body.get("serve", True)
        if not isinstance(serve, bool):
            raise InputError(f"serve must be true or false, not {str(serve)[:40]!r}")
        params = None
        if body.get("params") is not None:
            try:
                params = ModelParams.from_dict(body["params"], "params").as_dict()
            except ModelError as exc:
                raise InputError(str(exc)) from None
        try:
            asked = self.steering.request_candidate(params, serve)
        except StoreError as exc:
            raise _unavailable(exc) from None
        return {"requested_at": asked, "model_version": self.rec.version, "params": params, "serve": serve}

    # --- experiments ------------------------------------------------------------------------

    def start(self, body) -> dict:
        """POST /admin/experiments: check the body whole, then start it (one at a time)."""
        experiment = parse_experiment(body)
        with ExitStack() as stack:
            kept = self._hold(sorted(set(experiment.arms.values())), stack)
            self._changed(lambda: self.steering.start(experiment.as_json(), None if self.rec.shared else kept))
        return self.report(experiment.name)

    def stop(self, name: str, body) -> dict:
        """POST /admin/experiments/<name>/stop, optionally ``{"promote": "<arm>"}`` (pin its version; its
        parameters become the dataset's) or ``{"promote": "newest"}`` (follow the newest)."""
        body = body or {}
        if not isinstance(body, dict) or set(body) - {"promote"}:
            raise InputError('expected no body, or {"promote": "<arm>"} or {"promote": "newest"}')
        record = self.steering.experiment(name)
        if record is None:
            raise NotFound(f"no experiment named {name[:64]!r}")
        promote = body.get("promote")
        pin, params = False, None
        if promote == "newest":
            pin = None
        elif promote is not None:
            if not isinstance(promote, str) or promote not in record["arms"]:
                raise InputError(f"promote must be one of the arms ({', '.join(sorted(record['arms']))}) or "
                                 f"newest, not {str(promote)[:40]!r}")
            pin = record["arms"][promote]
            params = (self.describe(pin) or {}).get("params")
        try:
            self.rec.experiments.flush()  # this process's last lists count; nothing is recorded after the stop
        except StoreError:
            pass
        outcome = {"promoted": promote, "pinned": pin if pin is not False else None}
        self._changed(lambda: self.steering.stop(name, outcome, pin, params))
        return self.report(name)

    def report(self, name: str) -> dict:
        """GET /admin/experiments/<name>: per arm users, lists, posted ratings, live RMSE, MAE and hit rate
        with 95% intervals, and each arm minus the control, over every process's records."""
        record = self.steering.experiment(name)
        if record is None:
            raise NotFound(f"no experiment named {name[:64]!r}")
        try:
            self.rec.experiments.flush()  # this process's lists count too
        except StoreError:
            pass
        figures = self._figures(record)
        return {"name": name, "running": record["stopped"] is None, "control": record["control"],
                "traffic": record["traffic"], "started_at": _iso(record["started"]),
                "stopped_at": None if record["stopped"] is None else _iso(record["stopped"]),
                "outcome": record["outcome"], **figures}

    def _figures(self, record: dict) -> dict:
        totals = self.steering.totals(record["name"])
        empty = {k: 0 for k in ArmTotals.__dataclass_fields__}
        arms, difference = experiment_figures(
            {arm: ArmTotals(**{**empty, **totals.get(arm, {})}) for arm in record["arms"]}, record["control"])
        return {"arms": {arm: {"version": record["arms"][arm], **arms[arm]} for arm in sorted(record["arms"])},
                "difference": difference}

    def experiments(self) -> dict:
        """GET /admin/experiments: the running one and the last ones, newest first."""
        return {"experiments": [self.report(r["name"]) for r in self.steering.experiments()]}


def parse_experiment(body) -> Experiment:
    """The experiment a POST asks for, or InputError naming what is wrong (nothing starts)."""
    example = ('{"name": "rank-16", "arms": {"control": {"version": 3}, "candidate": {"version": 4}}, '
               '"traffic": {"control": 50, "candidate": 50}}')
    if not isinstance(body, dict):
        raise InputError(f"expected {example}")
    if set(body) - BODY_KEYS or not {"name", "arms", "traffic"} <= set(body):
        wrong = sorted(set(body) - BODY_KEYS) or sorted({"name", "arms", "traffic"} - set(body))
        raise InputError(f"expected {example}; {'unknown' if set(body) - BODY_KEYS else 'missing'} "
                         f"key(s): {', '.join(wrong)}")
    name, arms, traffic = body["name"], body["arms"], body["traffic"]
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise InputError("name must be 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit")
    if not isinstance(arms, dict) or not 2 <= len(arms) <= MAX_ARMS:
        raise InputError(f"arms must be an object of 2 to {MAX_ARMS} arms, each {{\"version\": N}}")
    versions = {}
    for arm, spec in arms.items():
        if not NAME.fullmatch(arm):
            raise InputError(f"arm name {arm[:64]!r}: 1 to 64 letters, digits, '.', '_' or '-'")
        version = spec.get("version") if isinstance(spec, dict) else None
        if not isinstance(spec, dict) or set(spec) != {"version"} or isinstance(version, bool) \
                or not isinstance(version, int):
            raise InputError(f'arm {arm!r} must be {{"version": <a kept version number>}}')
        versions[arm] = version
    if not isinstance(traffic, dict) or set(traffic) != set(arms):
        raise InputError(f"traffic must give every arm ({', '.join(sorted(arms))}) a share, and no other")
    for arm, share in traffic.items():
        if isinstance(share, bool) or not isinstance(share, int) or not 0 <= share <= 100:
            raise InputError(f"traffic of {arm!r} must be a whole percentage from 0 to 100, not {str(share)[:20]!r}")
    if sum(traffic.values()) != 100:
        raise InputError(f"traffic must sum to 100, not {sum(traffic.values())}")
    control = body.get("control", "control" if "control" in arms else sorted(arms)[0])
    if not isinstance(control, str) or control not in arms:
        raise InputError(f"control must be one of the arms ({', '.join(sorted(arms))})")
    return Experiment(name, versions, dict(traffic), control, time.time())


def _unavailable(exc: StoreError) -> StoreUnavailable:
    return StoreUnavailable(f"the request could not be stored; nothing was changed, try again later ({exc})")
