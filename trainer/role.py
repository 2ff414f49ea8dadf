"""The trainer role as a whole: checks, the folder's lock, the SparkContext, the engine and the loop.

Spark and the engine are imported only when the role starts, so role ``all``'s
API process can run :func:`precheck` without loading any trainer code.

``server.py --role trainer`` runs one in its own process; under spark-submit
with ``--role all`` it runs inside the API process (the JVM belongs to that
process).  Everything that can be refused in one line is checked before the
JVM starts.
"""

from __future__ import annotations

import argparse
import logging
import threading
import warnings
from pathlib import Path

from datasets import movielens
from model import ModelError, TuneBudget
from storage.backends import open_store
from storage.params import saved_params
from storage.store import StoreError

log = logging.getLogger(__name__)


PY4J_LOGGERS = ("py4j", "py4j.clientserver", "py4j.java_gateway")


class _NotFromPy4J(logging.Filter):
    """Drops what py4j logs through the root logger (its GatewayClient.send_command calls ``logging.info``
    and ``logging.exception``, with a traceback, when the JVM does not answer)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return Path(record.pathname).parent.name != "py4j"


NOT_FROM_PY4J = _NotFromPy4J()


class SetupError(RuntimeError):
    """The trainer cannot start; the message says why in one line."""


def precheck(args: argparse.Namespace, model_dir: Path) -> None:
    """What can be refused before Spark starts: a missing local dataset, a bad params.json."""
    try:
        movielens.check_local(args.dataset)
        saved_params(model_dir)
    except (movielens.DatasetError, ModelError) as exc:
        raise SetupError(str(exc)) from None


def heap_conf(size: str | None) -> dict[str, str]:
    """Spark settings for a fixed driver heap (only effective when this process starts the JVM)."""
    if not size:
        return {}
    return {"spark.driver.memory": size, "spark.driver.extraJavaOptions": f"-Xms{size} -XX:+AlwaysPreTouch"}


class TrainerRole:
    """Start with :meth:`start` (raises SetupError), stop with :meth:`stop`; :meth:`wait` until it ends."""

    def __init__(self, args: argparse.Namespace, model_dir: Path):
        self.args = args
        self.model_dir = model_dir
        self.lock = None
        self.store = None
        self.sc = None
        self.engine = None
        self.trainer = None
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()
        self._stop_lock = threading.Lock()
        self._closed = False
        self._quiet = False

    def start(self) -> TrainerRole:
        from trainer.loop import TrainerBusy, TrainerLock

        precheck(self.args, self.model_dir)
        try:
            self.store = open_store(self.args.store, self.model_dir)
        except StoreError as exc:
            raise SetupError(str(exc)) from None
        try:
            self.lock = TrainerLock(self.model_dir, self.store).acquire()
        except (TrainerBusy, StoreError) as exc:
            self.store.close()
            raise SetupError(str(exc)) from None
        try:
            self._start_spark()
        except BaseException:
            self.lock.release()
            self.store.close()
            raise
        return self

    def _start_spark(self) -> None:
        from engine import RecommendationEngine
        from spark.context import create_context
        from trainer.loop import RetrainPolicy, Trainer

        args = self.args
        logging.getLogger("py4j").setLevel(logging.WARNING)  # one line per closed connection at INFO
        try:
            self.sc = create_context(args.master, app_name="movie-recommender-trainer", conf=heap_conf(args.heap),
                                     checkpoint_dir=args.checkpoint_dir)
        except RuntimeError as exc:
            raise SetupError(str(exc)) from None
        budget = None if args.no_tune else TuneBudget(args.tune_fits, args.tune_time_cap)
        try:
            self.engine = RecommendationEngine(self.sc, args.dataset, self.model_dir, store=self.store,
                                               scale=args.scale, tune_budget=budget,
                                               keep_versions=args.keep_versions)
        except movielens.DatasetError as exc:
            self.sc.stop()
            raise SetupError(str(exc)) from None
        after_ratings, after_fraction = args.retrain_after
        policy = RetrainPolicy(after_ratings, after_fraction, args.retrain_interval)
        self.engine.versions.clean_partial()
        try:
            self.engine.share_versions()
        except (StoreError, ModelError) as exc:
            self.sc.stop()
            raise SetupError(f"could not share model versions through the store: {exc}") from None
        self.trainer = Trainer(self.engine, policy, lock=self.lock)
        self._thread = threading.Thread(target=self._run, name="trainer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.trainer.run()
        finally:
            self._stopped.set()

    def stopping(self) -> None:
        """Stopping has begun: say so at once (safe in a signal handler: it only sets flags), before :meth:`stop`.

        A process-group SIGTERM (systemd's default stop, ``kill -- -PGID``) reaches the JVM too, and it may
        go first: from now on a fit that fails is the stop's doing (the loop ends without an error), and
        the py4j and pyspark errors of a JVM that has gone are expected, so they are not logged.
        """
        if not self._quiet:
            self._quiet = True
            for name in PY4J_LOGGERS:
                logging.getLogger(name).setLevel(logging.CRITICAL + 1)
            logging.getLogger().addFilter(NOT_FROM_PY4J)
        server = getattr(self.sc, "_accumulatorServer", None)  # None while Spark starts: stop() comes back here
        if server is not None:  # its handler reads EOF when the JVM goes, and socketserver prints a traceback
            server.handle_error = lambda request, client_address: None
        if self.trainer is not None:
            self.trainer.stopping()

    def stop(self, timeout: float = 60) -> None:
        """Stop the loop (cancelling a running fit), then Spark; release the folder.  Once; later calls wait."""
        self.stopping()
        with self._stop_lock:
            if not self._closed:
                self._closed = True
                self._close(timeout)

    def _close(self, timeout: float) -> None:
        if self.trainer is not None:
            self.trainer.stop()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("the trainer did not stop within %.0f s; leaving it", timeout)
        if self.engine is not None:
            self.engine.close()  # and its store
        elif self.store is not None:
            self.store.close()
        if self.sc is not None:
            try:
                with warnings.catch_warnings():  # "Unable to cleanly shutdown Spark JVM process": it went first
                    warnings.simplefilter("ignore", RuntimeWarning)
                    self.sc.stop()
            except Exception as exc:
                log.debug("stopping Spark: %s", exc)
        if self.lock is not None:
            self.lock.release()
        self._stopped.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the loop ends (or ``timeout``); whether it has."""
        return self._stopped.wait(timeout)

