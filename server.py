"""Run the recommendation service: the trainer, the API, or both (the default), as processes.

    python server.py                                           # all: train and serve ml-latest-small
    python server.py --role trainer --dataset DIR --model-dir M  # the Spark driver: fits, publishes versions
    python server.py --role api --model-dir M --port 5433       # HTTP from the published versions, no JVM
    spark-submit server.py --role trainer --dataset hdfs://namenode/movielens/ml-latest --model-dir M

Role ``all`` runs the API in this process and the trainer as a child process
(``--role trainer``) at low CPU priority, restarted if it crashes; under
spark-submit, whose JVM belongs to this process, the trainer runs inside it.
API processes never import pyspark.  Every flag falls back to an environment
variable (settings.py, ``--help``).  SIGINT and SIGTERM stop cleanly: in-flight
requests finish, a running fit is cancelled, the access log is flushed.
"""

from __future__ import annotations

import ctypes
import ipaddress
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from serving.validation import MAX_POST_RATINGS
from settings import build_parser, default_model_dir, read_token

log = logging.getLogger("server")

PR_SET_PDEATHSIG = 1


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build_wsgi(recommender, api_token: str | None = None, host: str = "127.0.0.1",
               max_post_ratings: int = MAX_POST_RATINGS):
    """The Flask app wrapped in Paste's TransLogger (Apache combined access log); bound to a loopback ``host``,
    it answers loopback host names and addresses only (``host`` among them)."""
    from paste.translogger import TransLogger

    from app import LOOPBACK_NAMES, create_app

    hosts = LOOPBACK_NAMES if is_loopback(host) else None
    return TransLogger(create_app(recommender, api_token, hosts, max_post_ratings), setup_console_handler=False)


def under_spark_submit() -> bool:
    return "PYSPARK_GATEWAY_PORT" in os.environ


def exit_with_parent(stop) -> None:
    """Under spark-submit the JVM is this process's parent: ``stop()`` when it goes, rather than linger."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        log.warning("spark-submit's JVM has gone; stopping")
        stop()

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def serve(wsgi_app, host: str, port: int, threads: int = 16, on_stop=None, request_timeout: float = 10.0) -> None:
    """Graft the app into CherryPy and block until SIGINT/SIGTERM (or ``cherrypy.engine.exit()``).

    Requests arrive off the workers, within ``request_timeout`` seconds each (http_limits.py)."""
    import cherrypy

    from app import MAX_BODY
    from http_limits import cherrypy_server

    cherrypy.tree.graft(wsgi_app, "/")
    cherrypy.config.update({
        "engine.autoreload.on": False,
        "checker.on": False,
        "log.screen": False,
        "server.socket_host": host,
        "server.socket_port": port,
        "server.thread_pool": threads,
        "server.socket_queue_size": 128,
    })
    cherrypy.server.httpserver = cherrypy_server(cherrypy.server, request_timeout, MAX_BODY)
    if on_stop is not None:
        cherrypy.engine.subscribe("stop", on_stop, priority=90)
    cherrypy.engine.signals.subscribe()
    cherrypy.engine.start()
    print(f"serving on http://{host}:{cherrypy.server.bound_addr[1]}", flush=True)
    cherrypy.engine.block()


def stop_serving() -> None:
    """End ``serve`` from any thread, as SIGTERM would."""
    import cherrypy

    cherrypy.engine.exit()


class TrainerChild:
    """Role all: the trainer as a child process (``server.py --role trainer``) at low CPU priority.

    A crash is logged and the child restarted after a back-off (the version in
    service keeps answering); a refusal to start (exit status 2: its one-line
    message is already on the terminal) stops the whole service through
    ``on_refused``.  The child gets SIGTERM if this process dies, however it dies.
    """

    def __init__(self, argv: list[str], nice: int, cpus: int | None, on_refused):
        self.command = [sys.executable, str(Path(__file__).resolve()), *argv, "--role", "trainer"]
        self.nice = nice
        self.cpus = set(sorted(os.sched_getaffinity(0))[-cpus:]) if cpus else None
        self.on_refused = on_refused
        self.proc: subprocess.Popen | None = None
        self._stopping = threading.Event()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._supervise, name="trainer-child", daemon=True)

    def start(self) -> TrainerChild:
        self._thread.start()  # the thread that starts the child must outlive it (PR_SET_PDEATHSIG)
        self._started.wait(30)
        return self

    def _spawn(self) -> None:
        nice = self.nice

        def lower_priority_and_follow_parent() -> None:
            os.nice(nice)
            if nice == 19:  # the lowest: run only on a CPU no request wants (Linux's SCHED_IDLE)
                os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)

        self.proc = subprocess.Popen(self.command, preexec_fn=lower_priority_and_follow_parent)
        log.info("trainer started (pid %d, nice %d)", self.proc.pid, nice)

    def _supervise(self) -> None:
        backoff = 5.0
        while not self._stopping.is_set():
            self._spawn()
            self._started.set()
            code = self.proc.wait()
            # Ctrl-C reaches the trainer and this process together: give our own stop a moment to show.
            if self._stopping.wait(2.0):
                return
            if code == 0:
                log.warning("the trainer stopped on request; the version in service keeps answering, and "
                            "nothing is fitted until a trainer runs again")
                return
            if code == 2:
                log.error("the trainer refused to start (its message is above); stopping the service")
                self.on_refused()
                return
            log.error("the trainer exited with status %s; the version in service keeps answering; "
                      "restarting it in %.0f s", code, backoff)
            if self._stopping.wait(backoff):
                return
            backoff = min(backoff * 2, 300.0)

    def confine_while(self, serving) -> None:
        """While ``serving()`` is true, keep every thread of the trainer's processes (the trainer, its JVM,
        Spark's Python workers) on ``cpus``: a fit then never competes with requests for their core.

        Before the first version nothing is served, so the first fit has every core.  Threads and
        processes started later inherit the affinity; the pass repeats every 2 s for the ones that
        started between two passes and for a restarted trainer.  Measured on 2 cores: CPU-bound work in
        Linux's idle class on both cores still made top-10 p99 5.5 ms against 2.4 ms quiet; on one core 2.5 ms.
        """
        if self.cpus is None:
            return

        def confine() -> None:
            while not self._stopping.wait(2.0):
                proc = self.proc
                if proc is not None and proc.poll() is None and serving():
                    for pid in (proc.pid, *descendants(proc.pid)):
                        for task in _tasks(pid):
                            try:
                                os.sched_setaffinity(task, self.cpus)
                            except OSError:  # it ended meanwhile
                                pass

        threading.Thread(target=confine, name="trainer-cpus", daemon=True).start()

    def stop(self, timeout: float = 60) -> None:
        self._stopping.set()
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("the trainer did not stop within %.0f s; killing it", timeout)
            proc.kill()
            proc.wait()


def _tasks(pid: int) -> list[int]:
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return []


def descendants(pid: int) -> list[int]:
    """Every process under ``pid``, from /proc's children lists."""
    found, frontier = [], [pid]
    while frontier:
        children = []
        for parent in frontier:
            for task in _tasks(parent):
                try:
                    children += [int(c) for c in Path(f"/proc/{parent}/task/{task}/children").read_text().split()]
                except OSError:
                    pass
        found += children
        frontier = children
    return found


def fail(message: str) -> int:
    print(f"server.py: {message}", file=sys.stderr)
    return 2


def run_trainer(args, model_dir: Path) -> int:
    """``--role trainer``: fit and publish until SIGTERM/SIGINT (one that arrives while Spark starts stops
    the trainer as soon as it is up, so nothing it made is left behind)."""
    from trainer.role import SetupError, TrainerRole

    stop = threading.Event()
    role = TrainerRole(args, model_dir)

    def on_signal(*_) -> None:
        stop.set()
        role.stopping()  # at once: a process-group SIGTERM stops the JVM too, and a fit then fails

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if under_spark_submit():
        exit_with_parent(stop.set)
    try:
        role.start()
    except SetupError as exc:
        return fail(str(exc))
    except KeyboardInterrupt:  # SIGINT while the SparkContext's own handler was in place
        stop.set()
    signal.signal(signal.SIGINT, on_signal)  # the SparkContext put its own in place (cancel, then raise)
    while not stop.is_set() and not role.wait(0.5):
        pass
    role.stop()
    logging.shutdown()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse the flags and run the role.  The API's libraries (Flask, CherryPy) load only in roles all and
    api, after role all has started its trainer; the trainer's (Spark) only in the trainer."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format=f"%(asctime)s %(levelname)s {'trainer' if args.role == 'trainer' else 'api'} "
                               "%(name)s: %(message)s")
    model_dir = Path(args.model_dir) if args.model_dir else default_model_dir(args.dataset)
    if args.role == "trainer":
        return run_trainer(args, model_dir)
    try:
        token = read_token(args)
    except ValueError as exc:
        return fail(str(exc))
    if not is_loopback(args.host) and not token:
        return fail(f"refusing to listen on {args.host} without --api-token (or RECOMMENDER_API_TOKEN): "
                    "anyone could post ratings")
    try:  # fail fast on a port in use, before anything starts
        with socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((args.host, args.port))
    except OSError as exc:
        return fail(f"cannot listen on {args.host}:{args.port}: {exc.strerror}")

    exit_code = [0]
    trainer = None
    if args.role == "all":
        from trainer.role import SetupError, precheck

        try:
            precheck(args, model_dir)
        except SetupError as exc:
            return fail(str(exc))
        if under_spark_submit():  # the JVM is this process's: the trainer runs here
            from trainer.role import TrainerRole

            try:
                trainer = TrainerRole(args, model_dir).start()
            except SetupError as exc:
                return fail(str(exc))
            exit_with_parent(stop_serving)
        else:
            def refused():
                exit_code[0] = 2
                stop_serving()

            trainer = TrainerChild(argv, args.trainer_nice, args.trainer_cpus, refused).start()
    from threadpoolctl import threadpool_limits

    from serving.recommender import Recommender

    # Requests run on many threads at once, each with a small matrix-vector product: BLAS's own threads
    # only add wake-up stalls (p99 12 ms against 1.8 ms on ml-latest-small with one BLAS thread).
    threadpool_limits(1, user_api="blas")
    from storage.backends import open_store
    from storage.store import StoreError

    try:
        store = open_store(args.store, model_dir, connections=args.threads)  # a connection per thread
    except StoreError as exc:
        if trainer is not None:
            trainer.stop()
        return fail(str(exc))
    recommender = Recommender(model_dir, store).start()
    if isinstance(trainer, TrainerChild):
        trainer.confine_while(lambda: recommender.version is not None)

    def shutdown():
        log.info("stopping")
        if trainer is not None:
            trainer.stop()
        recommender.close()
        logging.shutdown()

    serve(build_wsgi(recommender, token, args.host, args.max_post_ratings), args.host, args.port, args.threads,
          on_stop=shutdown, request_timeout=args.request_timeout)
    return exit_code[0]


if __name__ == "__main__":
    sys.exit(main())
