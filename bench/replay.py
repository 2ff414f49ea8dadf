"""A replay that shows an experiment's live figures mean something: held-out ratings of a split, posted
through the API to an experiment of a candidate against the control, each arm's live RMSE and MAE next to
evaluate.py's offline figures for the same parameters on the same split.

    .venv/bin/python bench/replay.py [--dataset datasets/ml-latest-small] [--seed 42] [--users 200]
                                     [--candidate-params '{"rating": {"reg": 0.01}}'] [--control-params JSON]
    .venv/bin/python bench/replay.py --train train.csv --test test.csv [--movies DIR/movies.csv]

The split: ``--train``/``--test`` files (ratings.csv-shaped, as ``evaluate.py --train --test`` reads
them), or by default a random 80/20 of ``--dataset``'s ratings made with Python's ``random.Random(--seed)``
(bench/accuracy.py's ``split_files``; not the split ``evaluate.py --dataset --seed`` makes with Spark's
randomSplit).  A trainer (``server.py --role trainer --no-tune --retrain-after 0 --retrain-interval 0
--master local[2]``: nothing fits on its own) gets the training part as its dataset (with ``--movies``, by
default the dataset's movies.csv) and fits version 1 with the defaults (``--control-params``: those, written
as the model folder's params.json); ``POST /admin/retrain {"params": <--candidate-params>, "serve": false}``
fits version 2, a candidate, on the same ratings; ``POST /admin/experiments`` starts ``--name`` with control
= version 1, candidate = version 2, 50/50.  ``--users`` test users (drawn with ``--seed``; 0: every one)
are replayed on one API process, one user after another: a top-10 list (``GET /<user>/ratings/top/10``, so
the hit rate has a list to count against), the prediction of each of the user's test movies before any is
posted (``static``), then the test ratings in time order, each posted alone (``POST /<user>/ratings``) just
after reading its prediction (``GET /<user>/ratings/<movie>``).  Then ``GET /admin/experiments/<name>``,
and, once the services stopped, ``evaluate.py --train --test --params <each version's parameters>
--master local[2] --json`` (``--no-offline`` skips it).

What to compare, per arm: ``live.rmse`` (the experiment's figure) with ``offline.rmse``.  They should be
close, not equal: the live figure covers only the replayed users' test ratings, and each prediction after a
user's first includes the fold-in of the ratings that user posted earlier in the replay (more of their
ratings known than in training), so it is usually a little lower; ``static`` is the same users' test
ratings predicted before any of their posts (no fold-in), which offline would give on those users alone;
the candidate minus control difference should have the same sign live and offline.  ``client`` is the
live figure recomputed here from the predictions the GETs returned: it must equal ``live`` (up to the
GET's 4 decimals) or the experiment's records are wrong.

Prints one JSON object:

* ``split``: the train and test files, ``seed``, ``test_users`` (all of them), ``replayed_users`` and
  ``replayed_ratings``; ``seconds``: the replay's wall time; ``failed``: calls that did not answer 200 (201
  for a POST), with ``first_failures``; ``wrong_arm``: answers whose arm or model_version was not the
  user's first one (must be 0).
* ``compare``: per arm ``live_rmse``, ``static_rmse`` and ``offline_rmse`` side by side, and the candidate
  minus control difference ``live`` (with the experiment's 95% ``live_interval``), ``static`` and
  ``offline``, and ``same_sign``: whether live and offline agree on which arm is better.
* ``experiment``: its ``name``, ``traffic``, and ``difference`` (candidate minus control of RMSE, MAE and
  hit rate, each with its 95% interval) as ``GET /admin/experiments/<name>`` gave them.
* ``arms``: for ``control`` and ``candidate``: ``version``, ``params`` (the version's, as /admin/versions
  lists them; evaluate.py gets the same), ``users`` (replayed users this script saw answered by that arm),
  ``live`` (the experiment's per-arm figures: users, lists, posted, rmse, rmse_interval, mae,
  mae_interval, hit_rate, hit_rate_interval, liked, hits), ``client`` (n, rmse, mae from the GETs just
  before each post), ``static`` (n, rmse, mae of the predictions read before the user's first post),
  ``offline`` (evaluate.py on the whole test part: rmse, mae, coverage, n_test, fit_seconds,
  params_source; null with ``--no-offline``).
"""

from __future__ import annotations

import argparse
import csv
import http.client
import json
import math
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from accuracy import split_files
from common import DEFAULT_DATASET, ROOT, Client, start_server, stop_all, wait_until

JSON = {"Content-Type": "application/json"}
CANDIDATE = {"rating": {"reg": 0.01}}  # weak regularisation: a candidate that should lose, clearly


def call(client: Client, method: str, path: str, body=None) -> tuple[int, object]:
    data = None if body is None else json.dumps(body).encode()
    try:
        _, status, raw = client.call(method, path, data, JSON if data is not None else None, check=False)
    except (OSError, http.client.HTTPException):
        if method != "GET":
            raise
        client.conn.close()  # the server closed the connection while it idled: once more on a new one
        _, status, raw = client.call(method, path, data, None, check=False)
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


def checked(client: Client, method: str, path: str, body=None, want: tuple = (200,)):
    status, answer = call(client, method, path, body)
    if status not in want:
        raise SystemExit(f"bench: {method} {path} {json.dumps(body) if body is not None else ''} -> {status}: "
                         f"{answer}")
    return answer


def read_test(path: Path) -> dict[int, list[tuple[int, float, int]]]:
    """Each test user's (movie, rating, timestamp), in time order."""
    users: dict[int, list[tuple[int, float, int]]] = defaultdict(list)
    with open(path, newline="") as fh:
        rows = csv.reader(fh)
        next(rows)
        for row in rows:
            users[int(row[0])].append((int(row[1]), float(row[2]), int(row[3]) if len(row) > 3 else 0))
    for ratings in users.values():
        ratings.sort(key=lambda r: (r[2], r[0]))
    return users


def errors_summary(errors: list[float]) -> dict:
    if not errors:
        return {"n": 0, "rmse": None, "mae": None}
    return {"n": len(errors), "rmse": round(math.sqrt(sum(e * e for e in errors) / len(errors)), 4),
            "mae": round(sum(abs(e) for e in errors) / len(errors), 4)}


def replay(port: int, test: dict, chosen: list[int], name: str) -> dict:
    """Replay the chosen users' test ratings; per arm the errors seen here, and what went wrong."""
    client = Client("127.0.0.1", port)
    live, static = defaultdict(list), defaultdict(list)
    users, failed, wrong = defaultdict(int), [], 0
    for user in chosen:
        status, top = call(client, "GET", f"/{user}/ratings/top/10")
        if status != 200:
            failed.append(f"GET /{user}/ratings/top/10 -> {status}: {str(top)[:200]}")
            continue
        arm = (top.get("arm"), top.get("model_version"))
        if top.get("experiment") != name:
            failed.append(f"GET /{user}/ratings/top/10 -> not in the experiment: {str(top)[:200]}")
            continue
        users[arm[0]] += 1
        for movie, rating, _ in test[user]:
            status, p = call(client, "GET", f"/{user}/ratings/{movie}")
            if status != 200:
                failed.append(f"GET /{user}/ratings/{movie} -> {status}: {str(p)[:200]}")
                continue
            wrong += (p.get("arm"), p.get("model_version")) != arm
            static[arm[0]].append(p["predicted_rating"] - rating)
        for movie, rating, _ in test[user]:
            status, p = call(client, "GET", f"/{user}/ratings/{movie}")
            if status != 200:
                failed.append(f"GET /{user}/ratings/{movie} -> {status}: {str(p)[:200]}")
                continue
            wrong += (p.get("arm"), p.get("model_version")) != arm
            status, ack = call(client, "POST", f"/{user}/ratings", [{"movieId": movie, "rating": rating}])
            if status != 201:
                failed.append(f"POST /{user}/ratings {movie},{rating} -> {status}: {str(ack)[:200]}")
                continue
            wrong += (ack.get("arm"), ack.get("model_version")) != arm
            live[arm[0]].append(p["predicted_rating"] - rating)
    return {"live": live, "static": static, "users": users, "failed": failed, "wrong_arm": wrong}


def offline(train: Path, test: Path, params: dict, master: str, scratch: Path, label: str) -> dict:
    """evaluate.py on the split with these parameters, in its own process."""
    params_file = scratch / f"params-{label}.json"
    params_file.write_text(json.dumps(params))
    out = subprocess.run([sys.executable, str(ROOT / "evaluate.py"), "--train", str(train), "--test", str(test),
                          "--params", str(params_file), "--master", master, "--json"],
                         cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or [f"exit {out.returncode}"])[-1]}
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return {k: result.get(k) for k in ("rmse", "mae", "coverage", "n_test", "fit_seconds", "params_source")}


def compare(arms: dict, live_difference: dict) -> dict:
    """Each arm's live, static and offline RMSE side by side, and the candidate minus control of each."""
    def rmse(arm: str, kind: str):
        figures = arms[arm][kind] or {}
        return figures.get("rmse")

    def minus(kind: str):
        a, b = rmse("candidate", kind), rmse("control", kind)
        return None if a is None or b is None else round(a - b, 4)

    out = {arm: {f"{kind}_rmse": rmse(arm, kind) for kind in ("live", "static", "offline")} for arm in arms}
    live, offline_difference = live_difference.get("rmse"), minus("offline")
    out["difference"] = {"live": live, "live_interval": live_difference.get("rmse_interval"),
                         "static": minus("static"), "offline": offline_difference,
                         "same_sign": None if live is None or offline_difference is None
                         else (live > 0) == (offline_difference > 0)}
    return out


def main() -> int:
    p = argparse.ArgumentParser(description="Replay a split's held-out ratings through an experiment; live "
                                            "figures per arm against evaluate.py's offline ones.")
    p.add_argument("--dataset", default=DEFAULT_DATASET, help="source of the split and of movies.csv")
    p.add_argument("--train", type=Path, help="training ratings CSV (with --test; default: a split of --dataset)")
    p.add_argument("--test", type=Path, help="test ratings CSV, same format")
    p.add_argument("--movies", type=Path, help="movies.csv for the trainer (default: the dataset's)")
    p.add_argument("--seed", type=int, default=42, help="split seed, and which users are replayed (default 42)")
    p.add_argument("--users", type=int, default=200, help="test users replayed (default 200; 0: every one)")
    p.add_argument("--candidate-params", type=json.loads, default=CANDIDATE,
                   help=f"params.json-shaped JSON for the candidate (default '{json.dumps(CANDIDATE)}': the rating "
                        "model's lambda 0.15 -> 0.01, so the arms differ)")
    p.add_argument("--control-params", type=json.loads, default=None,
                   help="params.json-shaped JSON for version 1 (default: the defaults)")
    p.add_argument("--name", default="replay", help="the experiment's name (default replay)")
    p.add_argument("--master", default="local[2]", help="Spark master of the trainer and evaluate.py")
    p.add_argument("--fit-timeout", type=float, default=1800, help="seconds to wait for each fit")
    p.add_argument("--no-offline", action="store_true", help="skip evaluate.py")
    p.add_argument("--keep", action="store_true", help="keep the scratch folder (model folder, logs, split)")
    args = p.parse_args()
    if bool(args.train) != bool(args.test):
        p.error("give both --train and --test, or neither")
    if args.users < 0:
        p.error("--users must be 0 or more")
    sys.path.insert(0, str(ROOT))
    from model import ModelError, ModelParams

    try:
        for given in (args.candidate_params, args.control_params):
            if given is not None:
                ModelParams.from_dict(given, "params")
    except ModelError as exc:
        p.error(str(exc))

    scratch = Path(tempfile.mkdtemp(prefix="replay-"))
    dataset = Path(args.dataset)
    if args.train:
        train, test_file = args.train.resolve(), args.test.resolve()
    else:
        train, test_file = split_files(dataset, args.seed, scratch)
    # the trainer's dataset: the training part and the catalogue
    data = scratch / f"replay-train-{args.seed}"
    data.mkdir()
    shutil.copyfile(train, data / "ratings.csv")
    shutil.copyfile(args.movies or dataset / "movies.csv", data / "movies.csv")
    model_dir = scratch / "model"
    model_dir.mkdir()
    if args.control_params is not None:
        (model_dir / "params.json").write_text(json.dumps(ModelParams.from_dict(args.control_params).as_dict()))

    test = read_test(test_file)
    chosen = sorted(test)
    if args.users and args.users < len(chosen):
        chosen = sorted(random.Random(args.seed).sample(chosen, args.users))
    result: dict = {"split": {"train": str(train), "test": str(test_file),
                              "seed": None if args.train else args.seed, "test_users": len(test),
                              "replayed_users": len(chosen),
                              "replayed_ratings": sum(len(test[u]) for u in chosen)}}
    watched = []
    try:
        api, port = start_server(str(model_dir), role="api", wait_for_model=False)
        watched.append((api, model_dir / f"api-{port}.out"))
        log = model_dir / "trainer.out"
        trainer = subprocess.Popen([sys.executable, str(ROOT / "server.py"), "--role", "trainer", "--no-tune",
                                    "--retrain-after", "0", "--retrain-interval", "0", "--master", args.master,
                                    "--model-dir", str(model_dir), "--dataset", str(data)],
                                   cwd=ROOT, stdout=open(log, "w"), stderr=subprocess.STDOUT)
        watched.append((trainer, log))
        client = Client("127.0.0.1", port)
        wait_until("version 1 in service", lambda: call(client, "GET", "/health")[0] == 200, args.fit_timeout,
                   watched)
        checked(client, "POST", "/admin/retrain", {"params": args.candidate_params, "serve": False}, want=(202,))
        wait_until("candidate version 2",
                   lambda: any(v["version"] == 2 for v in checked(client, "GET", "/admin/versions")["versions"]),
                   args.fit_timeout, watched)
        kept = {v["version"]: v for v in checked(client, "GET", "/admin/versions")["versions"]}
        arms = {"control": 1, "candidate": 2}
        checked(client, "POST", "/admin/experiments",
                {"name": args.name, "arms": {a: {"version": v} for a, v in arms.items()},
                 "traffic": {"control": 50, "candidate": 50}}, want=(201,))
        start = time.perf_counter()
        seen = replay(port, test, chosen, args.name)
        result["seconds"] = round(time.perf_counter() - start, 1)
        # a new connection: the first one idled through the replay, past the server's keep-alive timeout
        report = checked(Client("127.0.0.1", port), "GET", f"/admin/experiments/{args.name}")
    finally:
        stop_all(proc for proc, _ in watched)
    result["failed"] = len(seen["failed"])
    if seen["failed"]:
        result["first_failures"] = seen["failed"][:5]
    result["wrong_arm"] = seen["wrong_arm"]
    result["experiment"] = {"name": report["name"], "traffic": report["traffic"],
                            "difference": report["difference"]}
    result["arms"] = {}
    for arm, version in arms.items():
        params = kept[version]["params"]
        result["arms"][arm] = {
            "version": version, "params": params, "users": seen["users"].get(arm, 0),
            "live": {k: v for k, v in report["arms"][arm].items() if k != "version"},
            "client": errors_summary(seen["live"][arm]), "static": errors_summary(seen["static"][arm]),
            "offline": None if args.no_offline else offline(train, test_file, params, args.master, scratch, arm)}
    result["compare"] = compare(result["arms"], report["difference"].get("candidate", {}))
    if args.keep:
        result["scratch"] = str(scratch)
    else:
        shutil.rmtree(scratch, ignore_errors=True)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
