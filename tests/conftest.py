"""Shared test set-up: one real SparkContext per session, generated datasets, live HTTP servers."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import sys
import threading
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fixtures import write_dataset  # noqa: E402

from model import ModelParams, RankingParams, RatingParams  # noqa: E402

# Small and quick, but enough to recover the fixtures' planted taste groups.
FAST = ModelParams(RatingParams(rank=4, iterations=10, reg=0.05, seed=7), RankingParams(rank=4, iterations=10, seed=7))
REAL_DATASET = ROOT / "datasets" / "ml-latest-small"


def quick(iterations: int = 2, rating_rank: int | None = None) -> ModelParams:
    """FAST with fewer iterations (and optionally another rating rank): for tests where only the
    mechanics count (train or load, caching, what a tuning reports), not what the models learn."""
    rating = replace(FAST.rating, iterations=iterations, rank=rating_rank or FAST.rating.rank)
    return ModelParams(rating, replace(FAST.ranking, iterations=iterations))


# C1 only: the tests' many small jobs never repay C2's compile threads on two cores (measured: the
# ml-latest-small evaluation 30.0 s -> 26.9 s, the fixture's first fit 12.5 s -> 7.5 s, same figures).
C1_ONLY = "-XX:TieredStopAtLevel=1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def sc(tmp_path_factory):
    from spark.context import create_context

    os.environ.setdefault("SPARK_CHECKPOINT_DIR", str(tmp_path_factory.mktemp("checkpoints")))
    context = create_context("local[2]", app_name="recommender-tests",
                             conf={"spark.default.parallelism": "2", "spark.sql.shuffle.partitions": "2",
                                   "spark.driver.extraJavaOptions": C1_ONLY})
    yield context
    context.stop()


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server for this test session (tests/pgserver.py); each test makes its own database."""
    from pgserver import PostgresServer

    server = PostgresServer()
    yield server
    server.close()


@pytest.fixture(scope="session")
def csv_fixture(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("csv") / "ml-fixture", "csv")


def publish(sc, dataset, model_dir: Path, params: ModelParams) -> Path:
    """Fit ``params`` on ``dataset`` and publish version 1 into ``model_dir``, with the params saved, as a
    trainer leaves it (a trainer or server started on a copy finds a version that matches and fits nothing)."""
    from engine import RecommendationEngine
    from storage.params import save_params

    save_params(model_dir, params)
    engine = RecommendationEngine(sc, str(dataset), model_dir, params=params)
    try:
        engine.fit_and_publish()
    finally:
        engine.close()
    return model_dir


@pytest.fixture(scope="session")
def fixture_model(sc, csv_fixture, tmp_path_factory):
    """The CSV fixture's models with the FAST parameters, fitted once per session and published."""
    return publish(sc, csv_fixture.path, tmp_path_factory.mktemp("fixture-model") / "model", FAST)


@pytest.fixture
def make_engine(sc, tmp_path, csv_fixture, fixture_model):
    """Build engines (the trainer's side) on a dataset; all are closed at the end.

    An engine on the CSV fixture with the FAST parameters whose model folder
    does not exist yet (by default a fresh one) starts from a copy of the
    session's published version; others start from an empty folder.
    """
    from engine import RecommendationEngine

    engines = []

    def build(dataset, model_dir=None, params=FAST, **kwargs):
        model_dir = Path(model_dir or tmp_path / f"model-{len(engines)}")
        if not model_dir.exists() and str(dataset) == str(csv_fixture.path) and params == FAST:
            copy_model(fixture_model, model_dir)
        engine = RecommendationEngine(sc, str(dataset), model_dir, params=params, **kwargs)
        engines.append(engine)
        return engine

    yield build
    for engine in engines:
        engine.close()


@pytest.fixture
def make_recommender(tmp_path, fixture_model):
    """Recommenders (the API's side, no Spark) on a model folder, by default a fresh copy of the fixture's
    published version; all are closed at the end."""
    from serving.recommender import Recommender

    made = []

    def build(model_dir=None, watch=False):
        if model_dir is None:
            model_dir = copy_model(fixture_model, tmp_path / f"served-{len(made)}")
        recommender = Recommender(Path(model_dir)).start(watch=watch)
        made.append(recommender)
        return recommender

    yield build
    for recommender in made:
        recommender.close()


class LiveServer:
    """The project's WSGI pipeline (Flask app in Paste's TransLogger) on CherryPy's server with the service's
    limits on slow clients (http_limits.py), on loopback."""

    def __init__(self, recommender, api_token=None, host: str = "127.0.0.1", threads: int = 8,
                 request_timeout: float = 10.0, **options):
        """``options`` go to server.build_wsgi (such as ``max_post_ratings``)."""
        from app import MAX_BODY
        from http_limits import Server
        from server import build_wsgi

        self.recommender = recommender
        self.host = host
        self.server = Server((host, 0), build_wsgi(recommender, api_token, host, **options), numthreads=threads,
                             request_timeout=request_timeout, body_limit=MAX_BODY)
        self.server.prepare()
        self.port = self.server.bind_addr[1]
        self.thread = threading.Thread(target=self.server.serve, daemon=True)
        self.thread.start()

    def call(self, method: str, path: str, body: bytes | str | None = None, headers: dict | None = None):
        """Send one request; return (status, parsed JSON body or None, raw body)."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        try:
            if isinstance(body, str):
                body = body.encode()
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            raw = response.read()
            try:
                data = json.loads(raw) if raw else None
            except ValueError:
                data = None
            return response.status, data, raw
        finally:
            conn.close()

    def get(self, path: str):
        return self.call("GET", path)

    def post_json(self, path: str, payload, headers: dict | None = None):
        return self.call("POST", path, json.dumps(payload), {"Content-Type": "application/json", **(headers or {})})

    def stop(self):
        self.server.stop()


@contextmanager
def serving(model_dir: Path, api_token=None):
    """A recommender on ``model_dir`` behind a LiveServer, for module-scoped fixtures; stopped at the end."""
    from serving.recommender import Recommender

    recommender = Recommender(model_dir).start(watch=False)
    server = LiveServer(recommender, api_token)
    try:
        yield server
    finally:
        server.stop()
        recommender.close()


@pytest.fixture
def live(make_recommender):
    """A live server over a recommender on a fresh copy of the fixture's published version."""
    servers = []

    def start(recommender=None, api_token=None, **options):
        server = LiveServer(recommender or make_recommender(), api_token, **options)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def real_dataset():
    """ml-latest-small, fetched through MOVIELENS_MIRROR or GroupLens (make test fetches it first)."""
    if not (REAL_DATASET / "ratings.csv").exists():
        from datasets.fetch import fetch

        fetch("ml-latest-small")
    return REAL_DATASET


@pytest.fixture(scope="session")
def real_model(sc, real_dataset, tmp_path_factory):
    """ml-latest-small's models with the default parameters, fitted once per session and published.

    Tests copy the folder (``copy_model``) so each recommender or engine starts from it.
    """
    return publish(sc, real_dataset, tmp_path_factory.mktemp("real-model") / "model", ModelParams())


def copy_model(source: Path, target: Path) -> Path:
    """A private copy of a model folder (versions, ratings store and params.json)."""
    shutil.copytree(source, target)
    return target


@pytest.fixture
def servers(csv_fixture, fixture_model):
    """Start server.py processes (tests/processes.py); a model folder that does not exist yet starts as a copy
    of the fixture's published version.  Any left running are killed at the end."""
    from processes import ServerProcess

    started = []

    def start(model_dir: Path, *args: str, role: str = "all", dataset=None, **kwargs):
        if not model_dir.exists():
            copy_model(fixture_model, model_dir)
        if role != "api" and dataset is None:
            dataset = csv_fixture.path
        server = ServerProcess(model_dir, *args, role=role, dataset=dataset, **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        if server.proc.poll() is None:
            server.stop(signal.SIGKILL)


# Real processes, clusters, a browser, full-size training: `make test` runs them, `make test-fast` does not.
SLOW_MODULES = {"test_cluster", "test_server", "test_browser", "test_roles", "test_hosts", "test_model_changes",
                "test_people_processes"}


@pytest.hookimpl(tryfirst=True)  # the marks must exist before pytest-xdist's own hook reads xdist_group
def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.module.__name__ in SLOW_MODULES or "real_model" in item.fixturenames:
            item.add_marker(pytest.mark.slow)
        if "real_model" in item.fixturenames:  # under pytest -n, one worker trains ml-latest-small's models
            item.add_marker(pytest.mark.xdist_group("real-model"))
