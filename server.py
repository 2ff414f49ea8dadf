"""Run the recommendation service: Spark engine, Flask app, CherryPy WSGI server, Paste access log.

    python server.py --dataset datasets/ml-latest-small --port 5432
    spark-submit server.py --dataset hdfs://namenode/movielens/ml-latest --port 5432

Every flag falls back to an environment variable (see ``--help``).  SIGINT and
SIGTERM stop the server cleanly: in-flight requests finish, the retrain thread
stops, Spark is stopped and the access log flushed.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import re
import socket
import sys
import threading
import time
from pathlib import Path

import cherrypy
from paste.translogger import TransLogger
from threadpoolctl import threadpool_limits

from app import create_app
from engine import RETRAIN_MODES, RecommendationEngine, default_model_dir, load_params
from model import ModelError, Scale

log = logging.getLogger("server")


def build_parser() -> argparse.ArgumentParser:
    env = os.environ.get
    p = argparse.ArgumentParser(description="Serve movie recommendations over HTTP.")
    p.add_argument("--dataset", default=env("RECOMMENDER_DATASET", "datasets/ml-latest-small"),
                   help="MovieLens folder or URI (env RECOMMENDER_DATASET; default datasets/ml-latest-small)")
    p.add_argument("--host", default=env("RECOMMENDER_HOST", "127.0.0.1"),
                   help="address to bind (env RECOMMENDER_HOST; default 127.0.0.1)")
    p.add_argument("--port", type=int, default=int(env("RECOMMENDER_PORT", "5432")),
                   help="port to bind (env RECOMMENDER_PORT; default 5432)")
    p.add_argument("--master", default=env("SPARK_MASTER"),
                   help="Spark master (env SPARK_MASTER; default spark-submit's, else local[*])")
    p.add_argument("--model-dir", default=env("RECOMMENDER_MODEL_DIR"),
                   help="saved model and ratings log (env RECOMMENDER_MODEL_DIR; default models/<dataset name>)")
    p.add_argument("--retrain", choices=RETRAIN_MODES, default=env("RECOMMENDER_RETRAIN", "async"),
                   help="after new ratings: retrain in the background (async, default), inside the "
                        "request (sync) or never (off) (env RECOMMENDER_RETRAIN)")
    p.add_argument("--api-token", default=env("RECOMMENDER_API_TOKEN"),
                   help="require 'Authorization: Bearer TOKEN' on POST (env RECOMMENDER_API_TOKEN)")
    p.add_argument("--scale", default=env("RECOMMENDER_SCALE"), type=parse_scale,
                   help="rating scale LOW,HIGH,STEP such as 1,5,1 (env RECOMMENDER_SCALE; default: inferred "
                        "from the ratings, 0.5,5,0.5 for ml-latest)")
    p.add_argument("--heap", default=env("RECOMMENDER_HEAP"),
                   help="give Spark's driver JVM a fixed, pre-touched heap of this size (e.g. 1g, 6g) so the "
                        "service's memory stays flat under retraining (env RECOMMENDER_HEAP; default: the JVM "
                        "grows its heap as needed up to SPARK_DRIVER_MEMORY, 4g)")
    p.add_argument("--threads", type=int, default=int(env("RECOMMENDER_THREADS", "16")),
                   help="CherryPy worker threads (env RECOMMENDER_THREADS; default 16)")
    return p


def parse_scale(text: str | None) -> Scale | None:
    """``LOW,HIGH,STEP`` as a Scale, for --scale."""
    if text is None:
        return None
    try:
        low, high, step = (float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH,STEP such as 0.5,5,0.5, not {text!r}") from None
    if not (low < high and step > 0):
        raise argparse.ArgumentTypeError("need LOW < HIGH and STEP > 0")
    return Scale(low, high, step)


def heap_conf(size: str | None) -> dict[str, str]:
    """Spark settings for a fixed driver heap (only effective when this process starts the JVM)."""
    if not size:
        return {}
    if not re.fullmatch(r"\d+[mMgG]", size):
        raise SystemExit(f"server.py: --heap takes a size such as 512m or 4g, not {size!r}")
    return {"spark.driver.memory": size, "spark.driver.extraJavaOptions": f"-Xms{size} -XX:+AlwaysPreTouch"}


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build_wsgi(engine: RecommendationEngine, api_token: str | None = None):
    """The Flask app wrapped in Paste's TransLogger (Apache combined access log)."""
    return TransLogger(create_app(engine, api_token), setup_console_handler=False)


def exit_with_parent() -> None:
    """Under spark-submit the JVM is this process's parent: stop when it goes, rather than linger."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        log.warning("spark-submit's JVM has gone; stopping")
        cherrypy.engine.exit()

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def serve(wsgi_app, host: str, port: int, threads: int = 16, on_stop=None) -> None:
    """Graft the app into CherryPy and block until SIGINT/SIGTERM."""
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
    if on_stop is not None:
        cherrypy.engine.subscribe("stop", on_stop, priority=90)
    cherrypy.engine.signals.subscribe()
    cherrypy.engine.start()
    print(f"serving on http://{host}:{cherrypy.server.bound_addr[1]}", flush=True)
    cherrypy.engine.block()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Requests run on many threads at once, each with a small matrix-vector product: BLAS's own threads
    # only add wake-up stalls (p99 12 ms against 1.8 ms on ml-latest-small with one BLAS thread).
    threadpool_limits(1, user_api="blas")
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not is_loopback(args.host) and not args.api_token:
        print(f"server.py: refusing to listen on {args.host} without --api-token "
              "(or RECOMMENDER_API_TOKEN): anyone could post ratings", file=sys.stderr)
        return 2
    try:  # fail fast on a port in use, before Spark spends seconds starting
        with socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((args.host, args.port))
    except OSError as exc:
        print(f"server.py: cannot listen on {args.host}:{args.port}: {exc.strerror}", file=sys.stderr)
        return 2

    from datasets.movielens import DatasetError
    from sparkctx import create_context

    model_dir = Path(args.model_dir) if args.model_dir else default_model_dir(args.dataset)
    try:  # a bad params.json is reported before Spark spends seconds starting
        params = load_params(model_dir)
    except ModelError as exc:
        print(f"server.py: {exc}", file=sys.stderr)
        return 2
    try:
        sc = create_context(args.master, app_name="movie-recommender", conf=heap_conf(args.heap))
    except RuntimeError as exc:
        print(f"server.py: {exc}", file=sys.stderr)
        return 2
    try:
        engine = RecommendationEngine(sc, args.dataset, model_dir, params=params, retrain=args.retrain,
                                      scale=args.scale)
    except DatasetError as exc:
        sc.stop()
        print(f"server.py: {exc}", file=sys.stderr)
        return 2

    def shutdown():
        log.info("stopping: cancelling a running retrain, then Spark")
        try:
            sc.cancelAllJobs()
        except Exception:  # the JVM may have had the signal too (process-group kill)
            log.info("Spark had already stopped")
        engine.close()
        try:
            sc.stop()
        except Exception:
            pass
        logging.shutdown()

    if "PYSPARK_GATEWAY_PORT" in os.environ:
        exit_with_parent()
    serve(build_wsgi(engine, args.api_token), args.host, args.port, args.threads, on_stop=shutdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
