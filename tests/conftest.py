"""Shared test set-up: one real SparkContext per session, generated datasets, live HTTP servers."""

from __future__ import annotations

import http.client
import json
import os
import shutil
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
    from sparkctx import create_context

    os.environ.setdefault("SPARK_CHECKPOINT_DIR", str(tmp_path_factory.mktemp("checkpoints")))
    context = create_context("local[2]", app_name="recommender-tests",
                             conf={"spark.default.parallelism": "2", "spark.sql.shuffle.partitions": "2",
                                   "spark.driver.extraJavaOptions": C1_ONLY})
    yield context
    context.stop()


@pytest.fixture(scope="session")
def csv_fixture(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("csv") / "ml-fixture", "csv")


@pytest.fixture(scope="session")
def fixture_model(sc, csv_fixture, tmp_path_factory):
    """The CSV fixture's models with the FAST parameters, trained once per session and saved."""
    from engine import RecommendationEngine

    model_dir = tmp_path_factory.mktemp("fixture-model") / "model"
    RecommendationEngine(sc, str(csv_fixture.path), model_dir, params=FAST, retrain="off").close()
    return model_dir


@pytest.fixture
def make_engine(sc, tmp_path, csv_fixture, fixture_model):
    """Build engines on a dataset; all are closed at the end.

    An engine on the CSV fixture with the FAST parameters whose model folder
    does not exist yet (by default a fresh one) starts from a copy of the
    session's saved models: it loads instead of training.  Other engines train.
    """
    from engine import RecommendationEngine

    engines = []

    def build(dataset, model_dir=None, params=FAST, retrain="off"):
        model_dir = Path(model_dir or tmp_path / f"model-{len(engines)}")
        if not model_dir.exists() and str(dataset) == str(csv_fixture.path) and params == FAST:
            copy_model(fixture_model, model_dir)
        engine = RecommendationEngine(sc, str(dataset), model_dir, params=params, retrain=retrain)
        engines.append(engine)
        return engine

    yield build
    for engine in engines:
        engine.close()


class LiveServer:
    """The project's WSGI pipeline (Flask app in Paste's TransLogger) on CherryPy's server, on loopback."""

    def __init__(self, engine, api_token=None):
        from cheroot.wsgi import Server

        from server import build_wsgi

        self.engine = engine
        self.server = Server(("127.0.0.1", 0), build_wsgi(engine, api_token), numthreads=8)
        self.server.prepare()
        self.port = self.server.bind_addr[1]
        self.thread = threading.Thread(target=self.server.serve, daemon=True)
        self.thread.start()

    def call(self, method: str, path: str, body: bytes | str | None = None, headers: dict | None = None):
        """Send one request; return (status, parsed JSON body or None, raw body)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
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
def serving(sc, dataset, model_dir, params=FAST, retrain="off"):
    """An engine on ``dataset`` behind a LiveServer, for module-scoped fixtures; stopped at the end."""
    from engine import RecommendationEngine

    engine = RecommendationEngine(sc, str(dataset), model_dir, params=params, retrain=retrain)
    server = LiveServer(engine)
    try:
        yield server
    finally:
        server.stop()
        engine.close()


@pytest.fixture
def live(make_engine, csv_fixture):
    """A live server over an engine on the CSV fixture (retrain off unless a test makes its own)."""
    servers = []

    def start(engine=None, api_token=None):
        server = LiveServer(engine or make_engine(csv_fixture.path), api_token)
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
    """ml-latest-small's models with the default parameters, trained once per session and saved.

    Tests copy the folder (``copy_model``) so each engine loads them instead of training again.
    """
    from engine import RecommendationEngine

    model_dir = tmp_path_factory.mktemp("real-model")
    RecommendationEngine(sc, str(real_dataset), model_dir, params=ModelParams(), retrain="off").close()
    return model_dir


def copy_model(source: Path, target: Path) -> Path:
    """A private copy of a saved model folder (ratings store included)."""
    shutil.copytree(source, target)
    return target


# Real processes, clusters, a browser, full-size training: `make test` runs them, `make test-fast` does not.
SLOW_MODULES = {"test_cluster", "test_server", "test_browser"}


@pytest.hookimpl(tryfirst=True)  # the marks must exist before pytest-xdist's own hook reads xdist_group
def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.module.__name__ in SLOW_MODULES or "real_model" in item.fixturenames:
            item.add_marker(pytest.mark.slow)
        if "real_model" in item.fixturenames:  # under pytest -n, one worker trains ml-latest-small's models
            item.add_marker(pytest.mark.xdist_group("real-model"))
