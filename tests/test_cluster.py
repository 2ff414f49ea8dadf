"""The same code on a real Spark standalone cluster (a Master and a Worker on 127.0.0.1), via spark-submit."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyspark
import pytest
from conftest import C1_ONLY, ROOT, copy_model, free_port
from fixtures import write_ratings_csv

from spark.context import ensure_java

SPARK_BIN = Path(pyspark.__file__).resolve().parent / "bin"


def _spark_env(tmp_path: Path) -> dict:
    """On a loopback cluster this host's disk is every executor's, so a folder here is a shared checkpoint dir."""
    ensure_java()
    return {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_LOG_DIR": str(tmp_path / "logs"),
            "TMPDIR": str(tmp_path), "SPARK_CHECKPOINT_DIR": str(tmp_path / "checkpoints"), "SPARK_NO_DAEMONIZE": "1",
            "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A standalone Master and one Worker on loopback, shared by this module's tests, stopped however they end."""
    tmp_path = tmp_path_factory.mktemp("cluster")
    env = _spark_env(tmp_path)
    port = free_port()
    procs, logs = [], {}

    def launch(name: str, *args: str) -> None:
        logs[name] = tmp_path / f"{name}.log"
        procs.append(subprocess.Popen([str(SPARK_BIN / "spark-class"), *args], env=env, cwd=tmp_path,
                                      stdout=open(logs[name], "w"), stderr=subprocess.STDOUT,
                                      start_new_session=True))

    try:
        launch("master", "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
               "--port", str(port), "--webui-port", str(free_port()))
        _wait_for(lambda: "Starting Spark master" in logs["master"].read_text()
                  and "I have been elected leader" in logs["master"].read_text(), 120, "the master")
        launch("worker", "org.apache.spark.deploy.worker.Worker", f"spark://127.0.0.1:{port}",
               "--host", "127.0.0.1", "--cores", "2", "--memory", "2g", "--webui-port", str(free_port()),
               "--work-dir", str(tmp_path / "work"))
        _wait_for(lambda: "Registering worker" in logs["master"].read_text(), 120, "the worker to register")
        yield f"spark://127.0.0.1:{port}", logs["master"]
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def _submit(master: str, script: str, *args: str, cwd: Path, env: dict, timeout: float = 600):
    return subprocess.run([str(SPARK_BIN / "spark-submit"), "--master", master,
                           "--conf", "spark.executor.memory=1g", "--conf", "spark.driver.host=127.0.0.1",
                           # C1 only, as in the tests' own context
                           "--conf", f"spark.driver.extraJavaOptions={C1_ONLY}",
                           "--conf", f"spark.executor.extraJavaOptions={C1_ONLY}",
                           str(ROOT / script), *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


pytestmark = pytest.mark.xdist_group("cluster")  # one cluster for both tests


def test_cluster_evaluation_matches_local(cluster, sc, csv_fixture, tmp_path):
    master, master_log = cluster
    import evaluate
    from datasets import movielens
    from model import ModelParams

    train = [r for i, r in enumerate(csv_fixture.ratings) if i % 5]
    test = [r for i, r in enumerate(csv_fixture.ratings) if not i % 5]
    write_ratings_csv(tmp_path / "train.csv", train)
    write_ratings_csv(tmp_path / "test.csv", test)
    elsewhere = tmp_path / "elsewhere"  # not the project folder: executors get the modules from Spark
    elsewhere.mkdir()
    args = ("--train", str(tmp_path / "train.csv"), "--test", str(tmp_path / "test.csv"),
            "--rank", "4", "--iterations", "3", "--ranking-rank", "4", "--ranking-iterations", "3",
            "--min-count", "0", "--json")
    out = _submit(master, "evaluate.py", *args, cwd=elsewhere, env=_spark_env(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    on_cluster = json.loads(out.stdout.strip().splitlines()[-1])
    # The same evaluation on this process's local[2] context, with the parameters the command line gave.
    params = evaluate.params_from_args(evaluate.build_parser().parse_args(list(args)), ModelParams())
    train_rdd, _ = movielens.load_ratings(sc, movielens.Layout("csv", str(tmp_path / "train.csv"), ""))
    test_rdd, _ = movielens.load_ratings(sc, movielens.Layout("csv", str(tmp_path / "test.csv"), ""))
    local = evaluate.evaluate(sc, train_rdd, test_rdd, params, min_count=0)
    assert on_cluster["params"] == local["params"]
    assert on_cluster["coverage"] == local["coverage"] == 1.0
    assert on_cluster["n_test"] == local["n_test"] == len(test)
    assert abs(on_cluster["rmse"] - local["rmse"]) <= 0.005
    assert abs(on_cluster["ndcg_at_10"] - local["ndcg_at_10"]) <= 0.05
    assert "Registered app recommender-evaluate" in master_log.read_text()  # the cluster really ran it


def _call(port: int, method: str, path: str, body: bytes | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"} if body else {})
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        conn.close()


def test_spark_submit_trains_on_the_cluster_with_the_posted_ratings_and_serves(cluster, csv_fixture, fixture_model,
                                                                               postgres, tmp_path):
    """``spark-submit server.py`` on a standalone cluster with the PostgreSQL store: the trainer runs in the
    driver (spark-submit's JVM is the process's own), its fits run on the cluster's executors and include the
    ratings posted to the API, read from PostgreSQL; the version goes to the database for other hosts."""
    master, master_log = cluster
    url = postgres.create_database()
    env = {**_spark_env(tmp_path), "RECOMMENDER_STORE": url}
    port = free_port()
    model_dir = copy_model(fixture_model, tmp_path / "model")  # version 1 answers at once
    out_path = tmp_path / "server.out"
    elsewhere = tmp_path / "elsewhere"  # not the project folder: executors get the modules from Spark
    elsewhere.mkdir()
    proc = subprocess.Popen([str(SPARK_BIN / "spark-submit"), "--master", master,
                             "--conf", "spark.executor.memory=1g", "--conf", "spark.driver.host=127.0.0.1",
                             "--conf", f"spark.driver.extraJavaOptions={C1_ONLY}",
                             "--conf", f"spark.executor.extraJavaOptions={C1_ONLY}", str(ROOT / "server.py"),
                             "--dataset", str(csv_fixture.path), "--port", str(port), "--model-dir", str(model_dir)],
                            cwd=elsewhere, env=env, stdout=open(out_path, "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        _wait_for(lambda: "serving on http://" in out_path.read_text() or proc.poll() is not None, 180, "the server")
        assert proc.poll() is None, out_path.read_text()[-3000:]
        status, top = _call(port, "GET", "/1/ratings/top/3?min_count=0")
        assert status == 200 and len(top["movies"]) == 3 and top["model_version"] == 1
        body = json.dumps([{"movieId": m, "rating": 5.0} for m in csv_fixture.dramas[:4]]).encode()
        assert _call(port, "POST", "/8800/ratings", body)[0] == 201
        assert _call(port, "POST", "/admin/retrain")[0] == 202
        # Version 1 was fitted on the fixture's SQLite store: the trainer fits one on this store, with the POST.
        _wait_for(lambda: _call(port, "GET", "/health")[1]["trained_on_request"] == 1, 180, "a version with the POST")
        assert "Registered app movie-recommender-trainer" in master_log.read_text()
        from storage.versions import ModelVersions

        number = _call(port, "GET", "/health")[1]["model_version"]
        version, lease = ModelVersions(model_dir).load(number)
        lease.release()
        assert number >= 2 and version.models.rating.user_row(8800) is not None  # the trainer read the store
        from storage.postgres import PostgresStore
        from storage.shipping import SharedVersions

        store = PostgresStore(url)
        assert [e.user for e in store.entries()] == [8800] and SharedVersions(store).current() >= number
        store.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) in (0, 143)
        # The Python driver must not outlive spark-submit's JVM and keep the port.
        _wait_for(lambda: _closed(port), 30, "the Python driver to stop")
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _closed(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0
