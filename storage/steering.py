"""The serving plan and experiments in the ratings store: what every API process on every host serves.

* ``meta.serving_plan``: the pinned version (or none) and the running experiment, as JSON
  (serving/plan.py reads it); every change takes that row's lock first, and so does a
  database store's upload of a new version, which drops old versions in the same transaction:
  a version the plan names is never dropped, and one dropped is never pinned.
* ``experiments``: every experiment started (its arms, traffic, start, stop and outcome); a name is
  used once.
* ``experiment_ratings``: the first rating a user in an experiment posts of each movie (a re-rating does not
  count again: one user cannot weigh an arm down by posting one movie over and over), with the arm, the
  version that served the user, the prediction it made just before, and whether the movie was in the last
  list shown to the user (NULL: no list shown), written in the ratings' own transaction while the
  experiment runs.
* ``experiment_lists``: per experiment and user, the lists served and the last one (its movies and
  when), written by each API process in one transaction a second (serving/experiments.py), while the
  experiment runs.  "Last" is by the writing host's clock: hosts whose clocks disagree by more than the
  time between two lists may keep the earlier one.

So an experiment's figures add up every process and host.  A candidate fit asked for by an operator
(``candidate_request``) and parameters promoted to the dataset's (``promoted_params``) pass through
meta as well, for the trainer.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable

from storage.store import PUT_META, Cursor, Store

PLAN = "serving_plan"  # meta key
CANDIDATE = "candidate_request"  # meta key: {"at", "params", "serve"} (the trainer fits it once)
PROMOTED = "promoted_params"  # meta key: {"at", "version", "params"}: the dataset's parameters from now on

ARM_TOTALS = """
SELECT arm, count(*), coalesce(sum((predicted - rating) * (predicted - rating)), 0),
       coalesce(sum((predicted - rating) * (predicted - rating) * (predicted - rating) * (predicted - rating)), 0),
       coalesce(sum(abs(predicted - rating)), 0),
       coalesce(sum(CASE WHEN rating >= 4 AND shown IS NOT NULL THEN 1 ELSE 0 END), 0),
       coalesce(sum(CASE WHEN rating >= 4 AND shown = 1 THEN 1 ELSE 0 END), 0)
FROM experiment_ratings WHERE experiment = ? GROUP BY arm
"""
ARM_USERS = """
SELECT arm, count(*) FROM (SELECT arm, "user" FROM experiment_lists WHERE experiment = ?
                           UNION SELECT arm, "user" FROM experiment_ratings WHERE experiment = ?) AS u GROUP BY arm
"""
# A list served: counted, and kept as the user's last unless the row holds a later one (processes flush
# their lists a second apart, in any order).
LISTS = """
INSERT INTO experiment_lists (experiment, "user", arm, lists, movies, shown_at) VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (experiment, "user") DO UPDATE SET lists = experiment_lists.lists + excluded.lists,
    movies = CASE WHEN excluded.shown_at >= experiment_lists.shown_at THEN excluded.movies
                  ELSE experiment_lists.movies END,
    shown_at = CASE WHEN excluded.shown_at >= experiment_lists.shown_at THEN excluded.shown_at
                    ELSE experiment_lists.shown_at END
"""


class PlanChanged(Exception):
    """A plan change could not be made as asked; ``status`` is the HTTP status, the message says why."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.message = message
        self.status = status


def named_versions(plan: dict | None) -> set[int]:
    """The versions a plan (its JSON) names: the pin and the running experiment's arms."""
    plan = plan or {}
    named = set() if plan.get("pinned") is None else {int(plan["pinned"])}
    experiment = plan.get("experiment") or {}
    return named | {int(v) for v in (experiment.get("arms") or {}).values()}


class Steering:
    """The plan, the experiments and their records, over one store."""

    def __init__(self, store: Store):
        self.store = store

    # --- the plan ---------------------------------------------------------------------------

    def plan(self) -> dict:
        """The plan's JSON (``{"pinned": None, "experiment": None}`` when nothing was ever set)."""
        value = self.store.get_meta(PLAN)
        return json.loads(value) if value else {"pinned": None, "experiment": None}

    def protected(self) -> set[int]:
        """The versions pruning must keep."""
        return named_versions(self.plan())

    def locked_plan(self, db: Cursor) -> dict:
        """Inside a write transaction: the plan, its row locked for the transaction (see the module)."""
        db.execute(f"INSERT INTO meta VALUES ('{PLAN}', '{{}}') ON CONFLICT (key) DO NOTHING")
        row = db.execute("SELECT value FROM meta WHERE key = ?" + self.store.lock_row, (PLAN,)).fetchone()
        return {"pinned": None, "experiment": None, **json.loads(row[0])}

    def pin(self, number: int | None, kept: Iterable[int] | None = None) -> dict:
        """Pin version ``number`` (None: follow the newest again); the new plan.  With ``kept`` (a database
        store's versions are checked in the transaction instead), a version not among them is refused.
        While an experiment runs it decides every user's version: a pin is refused (409), so that a roll
        back never leaves half the users where they were."""
        with self.store.writing() as db:
            plan = self.locked_plan(db)
            running = plan.get("experiment")
            if running:
                raise PlanChanged(f"the experiment {running['name']!r} is running and serves every user: stop it "
                                  f"first (POST /admin/experiments/{running['name']}/stop, with "
                                  '{"promote": "<arm>"} or {"promote": "newest"} to choose what serves)', 409)
            if number is not None:
                self._check_kept(db, [number], kept)
            plan["pinned"] = number
            db.execute(PUT_META, (PLAN, json.dumps(plan)))
        return plan

    def _check_kept(self, db: Cursor, numbers: list[int], kept: Iterable[int] | None) -> None:
        if kept is None:
            kept = [r[0] for r in db.execute("SELECT number FROM model_versions ORDER BY number").fetchall()]
        kept = sorted(set(kept), reverse=True)
        for number in numbers:
            if number not in kept:
                raise PlanChanged(f"model version {number} is not kept; kept versions: "
                                  f"{', '.join(map(str, kept)) or 'none'}", 404)

    # --- experiments ------------------------------------------------------------------------

    def start(self, experiment: dict, kept: Iterable[int] | None = None) -> dict:
        """Start ``experiment`` (serving/plan.py's JSON, with ``started``) unless one runs (409) or its name was
        used (409) or an arm's version is not kept (404); the new plan."""
        with self.store.writing() as db:
            plan = self.locked_plan(db)
            running = plan.get("experiment")
            if running:
                raise PlanChanged(f"the experiment {running['name']!r} is running: stop it first "
                                  f"(POST /admin/experiments/{running['name']}/stop)", 409)
            if db.execute("SELECT 1 FROM experiments WHERE name = ?", (experiment["name"],)).fetchone():
                raise PlanChanged(f"an experiment named {experiment['name']!r} was run already: "
                                  "choose another name", 409)
            self._check_kept(db, list(experiment["arms"].values()), kept)
            db.execute("INSERT INTO experiments (name, spec, started) VALUES (?, ?, ?)",
                       (experiment["name"], json.dumps(experiment), experiment["started"]))
            plan["experiment"] = experiment
            db.execute(PUT_META, (PLAN, json.dumps(plan)))
        return plan

    def stop(self, name: str, outcome: dict, pin: int | None | bool = False,
             params: dict | None = None) -> dict:
        """Stop the running experiment ``name`` (404 when it is not the running one), recording ``outcome``;
        ``pin``: a version to pin, None to follow the newest, False to leave the pin as it is.  ``params``:
        the promoted arm's parameters, which become the dataset's (the trainer reads them).  The new plan."""
        now = time.time()
        with self.store.writing() as db:
            plan = self.locked_plan(db)
            running = plan.get("experiment")
            if not running or running["name"] != name:
                row = db.execute("SELECT stopped FROM experiments WHERE name = ?", (name,)).fetchone()
                raise PlanChanged(f"the experiment {name!r} " + ("was stopped already" if row else "does not exist"),
                                  409 if row else 404)
            db.execute("UPDATE experiments SET stopped = ?, outcome = ? WHERE name = ?",
                       (now, json.dumps(outcome), name))
            plan["experiment"] = None
            if pin is not False:
                plan["pinned"] = pin
            db.execute(PUT_META, (PLAN, json.dumps(plan)))
            if params is not None:
                db.execute(PUT_META, (PROMOTED, json.dumps({"at": now, "version": pin, "params": params})))
        return plan

    def experiment(self, name: str) -> dict | None:
        """One experiment's record: its spec, started, stopped (None while it runs) and outcome."""
        with self.store.reading() as db:
            row = db.execute("SELECT spec, started, stopped, outcome FROM experiments WHERE name = ?",
                             (name,)).fetchone()
        return None if row is None else _record(row)

    def experiments(self, limit: int = 10) -> list[dict]:
        """The last ``limit`` experiments, newest first."""
        with self.store.reading() as db:
            rows = db.execute("SELECT spec, started, stopped, outcome FROM experiments ORDER BY started DESC "
                              "LIMIT ?", (limit,)).fetchall()
        return [_record(r) for r in rows]

    # --- what an experiment measures --------------------------------------------------------

    @staticmethod
    def running(db: Cursor) -> set[str]:
        """Inside a transaction: the names of the experiments that run (records of others are not kept)."""
        return {r[0] for r in db.execute("SELECT name FROM experiments WHERE stopped IS NULL").fetchall()}

    @staticmethod
    def write_lists(db: Cursor, lists: list[tuple[str, int, str, int, list[int], float]]) -> None:
        """Inside a write transaction: lists served, as (experiment, user, arm, how many, last movies, when),
        those of running experiments only."""
        running = Steering.running(db)
        kept = [(e, u, a, n, json.dumps([int(x) for x in m]), t) for e, u, a, n, m, t in lists if e in running]
        db.executemany(LISTS, kept)
        # A list another process served before its user was forgotten, written after: not kept.
        db.executemany('DELETE FROM experiment_lists WHERE experiment = ? AND "user" = ? AND shown_at < '
                       '(SELECT time FROM forgotten WHERE forgotten."user" = ?)', [(e, u, u) for e, u, *_ in kept])

    @staticmethod
    def last_list(db: Cursor, experiment: str, user: int) -> set[int] | None:
        """The movies of the last list recorded for ``user`` in ``experiment`` (None: none shown)."""
        row = db.execute('SELECT movies FROM experiment_lists WHERE experiment = ? AND "user" = ?',
                         (experiment, user)).fetchone()
        return None if row is None else set(json.loads(row[0]))

    @staticmethod
    def write_ratings(db: Cursor, rows: list[tuple]) -> None:
        """Inside the ratings' transaction: (experiment, seq, user, movie, arm, version, rating, predicted,
        shown) for each posted rating; a movie the user rated before in the experiment is not counted again,
        nor anything of an experiment that stopped."""
        running = Steering.running(db)
        db.executemany('INSERT INTO experiment_ratings (experiment, seq, "user", movie, arm, version, rating, '
                       'predicted, shown) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) '
                       'ON CONFLICT (experiment, "user", movie) DO NOTHING', [r for r in rows if r[0] in running])

    def totals(self, name: str) -> dict[str, dict]:
        """Per arm: users, lists, posted ratings, and the sums the figures come from (serving/figures.py)."""
        out: dict[str, dict] = {}

        def arm(a: str) -> dict:
            return out.setdefault(a, {"users": 0, "lists": 0, "posted": 0, "sum_e2": 0.0, "sum_e4": 0.0,
                                      "sum_abs": 0.0, "liked": 0, "hits": 0})

        with self.store.reading() as db:  # SQLite: one connection's reads; PostgreSQL: close enough
            for a, n, e2, e4, ab, liked, hits in db.execute(ARM_TOTALS, (name,)).fetchall():
                arm(a).update(posted=int(n), sum_e2=float(e2), sum_e4=float(e4), sum_abs=float(ab),
                              liked=int(liked), hits=int(hits))
            for a, users in db.execute(ARM_USERS, (name, name)).fetchall():
                arm(a)["users"] = int(users)
            for a, lists in db.execute("SELECT arm, sum(lists) FROM experiment_lists WHERE experiment = ? "
                                       "GROUP BY arm", (name,)).fetchall():
                arm(a)["lists"] = int(lists)
        return out

    # --- requests for the trainer -----------------------------------------------------------

    def request_candidate(self, params: dict | None, serve: bool) -> float:
        """Ask the trainer for a fit with ``params`` (None: the dataset's), served or not; when it was asked."""
        now = time.time()
        self.store.put_meta(CANDIDATE, json.dumps({"at": now, "params": params, "serve": serve}))
        return now

    def candidate_request(self) -> dict | None:
        """The last candidate request: ``at``, ``params``, ``serve``, and once the trainer is done with it
        ``done`` (the version it published) or ``failed`` (why it gave up)."""
        value = self.store.get_meta(CANDIDATE)
        return json.loads(value) if value else None

    def promoted(self) -> dict | None:
        """The last promotion: ``at``, ``version``, ``params``, and ``applied`` once the trainer took them."""
        value = self.store.get_meta(PROMOTED)
        return json.loads(value) if value else None

    def settle(self, key: str, at: float, **fields) -> bool:
        """Mark the request under meta ``key`` (CANDIDATE or PROMOTED) asked at ``at`` with ``fields`` (done,
        failed, applied), unless a newer request replaced it meanwhile; whether it did."""
        with self.store.writing() as db:
            row = db.execute("SELECT value FROM meta WHERE key = ?" + self.store.lock_row, (key,)).fetchone()
            request = json.loads(row[0]) if row else None
            if request is None or request.get("at") != at:
                return False
            db.execute(PUT_META, (key, json.dumps({**request, **fields})))
        return True


def _record(row) -> dict:
    spec, started, stopped, outcome = row
    return {**json.loads(spec), "started": started, "stopped": stopped,
            "outcome": json.loads(outcome) if outcome else None}
