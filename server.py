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

import tuning
from app import create_app
from engine import RETRAIN_MODES, RecommendationEngine, default_model_dir, saved_params
from model import ModelError, Scale

log = logging.getLogger("server")


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors, and flags that fall back to environment variables.

    A value from the environment goes through the flag's own type and choices,
    so a bad one is the same one-line error (naming the variable), before Spark starts.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.env: dict[str, str] = {}  # dest -> environment variable

    def add(self, *flags: str, env: str | None = None, **kwargs) -> None:
        action = self.add_argument(*flags, **kwargs)
        if env:
            self.env[action.dest] = env

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message}\n")

    def parse_args(self, args=None, namespace=None):
        for action in self._actions:
            var = self.env.get(action.dest)
            raw = os.environ.get(var) if var else None
            if raw is None:
                continue
            try:
                value = action.type(raw) if action.type else raw
            except (ValueError, argparse.ArgumentTypeError) as exc:
                self.error(f"{var}={raw!r}: {exc}")
            if action.choices is not None and value not in action.choices:
                self.error(f"{var}={raw!r}: choose from {', '.join(map(str, action.choices))}")
            action.default = value
        return super().parse_args(args, namespace)


def whole(low: int, high: int):
    """An argparse type: a whole number within [low, high]."""
    def parse(text: str) -> int:
        if not text.strip().isdigit() or not low <= int(text) <= high:
            raise argparse.ArgumentTypeError(f"expected a whole number from {low} to {high}, not {text!r}")
        return int(text)
    return parse


def seconds(text: str) -> float:
    """An argparse type: a number of seconds, 0 or more."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds, 0 or more, not {text!r}")
    return value


def yes_no(text: str) -> bool:
    """An argparse type: 1/true/yes/on or 0/false/no/off."""
    value = text.strip().lower()
    if value not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        raise argparse.ArgumentTypeError(f"expected 1 or 0 (true/false, yes/no, on/off), not {text!r}")
    return value in ("1", "true", "yes", "on")


def build_parser() -> Parser:
    p = Parser(prog="server.py", description="Serve movie recommendations over HTTP.")
    p.add("--dataset", env="RECOMMENDER_DATASET", default="datasets/ml-latest-small",
          help="MovieLens folder or URI (env RECOMMENDER_DATASET; default datasets/ml-latest-small)")
    p.add("--host", env="RECOMMENDER_HOST", default="127.0.0.1",
          help="address to bind (env RECOMMENDER_HOST; default 127.0.0.1)")
    p.add("--port", env="RECOMMENDER_PORT", type=whole(0, 65535), default=5432,
          help="port to bind (env RECOMMENDER_PORT; default 5432)")
    p.add("--master", env="SPARK_MASTER", help="Spark master (env SPARK_MASTER; default spark-submit's, else local[*])")
    p.add("--model-dir", env="RECOMMENDER_MODEL_DIR",
          help="saved model and ratings store (env RECOMMENDER_MODEL_DIR; default models/<dataset name>)")
    p.add("--retrain", env="RECOMMENDER_RETRAIN", choices=RETRAIN_MODES, default="async",
          help="after new ratings: retrain in the background (async, default), also make the POST wait "
               "for the retrained model (sync), or never (off) (env RECOMMENDER_RETRAIN)")
    p.add("--api-token", env="RECOMMENDER_API_TOKEN",
          help="require 'Authorization: Bearer TOKEN' to post ratings and to read a user's ratings "
               "(env RECOMMENDER_API_TOKEN; on the command line it is visible in ps: prefer --api-token-file)")
    p.add("--api-token-file", env="RECOMMENDER_API_TOKEN_FILE",
          help="read the API token from this file (env RECOMMENDER_API_TOKEN_FILE)")
    p.add("--scale", env="RECOMMENDER_SCALE", type=parse_scale,
          help="rating scale LOW,HIGH,STEP such as 1,5,1 (env RECOMMENDER_SCALE; default: inferred "
               "from the ratings, 0.5,5,0.5 for ml-latest)")
    p.add("--heap", env="RECOMMENDER_HEAP", type=heap_size,
          help="give Spark's driver JVM a fixed, pre-touched heap of this size (e.g. 1g, 6g) so the "
               "service's memory stays flat under retraining (env RECOMMENDER_HEAP; default: the JVM "
               "grows its heap as needed up to SPARK_DRIVER_MEMORY, 4g)")
    p.add("--tune-budget", env="RECOMMENDER_TUNE_BUDGET", type=seconds, default=tuning.BUDGET_SECONDS,
          help="a dataset without saved parameters (params.json) is tuned on its first training: the seconds "
               f"the search may start new fits for (env RECOMMENDER_TUNE_BUDGET; default {tuning.BUDGET_SECONDS:g})")
    p.add("--no-tune", env="RECOMMENDER_NO_TUNE", type=yes_no, nargs="?", const=True, default=False,
          help="use the default parameters instead of tuning (env RECOMMENDER_NO_TUNE=1)")
    p.add("--threads", env="RECOMMENDER_THREADS", type=whole(1, 1024), default=16,
          help="CherryPy worker threads (env RECOMMENDER_THREADS; default 16)")
    return p


def read_token(args: argparse.Namespace) -> str | None:
    """The API token from --api-token or --api-token-file; raises ValueError with a one-line reason."""
    if args.api_token and args.api_token_file:
        raise ValueError("give --api-token or --api-token-file, not both")
    if not args.api_token_file:
        return args.api_token or None
    try:
        token = Path(args.api_token_file).read_text().strip()
    except OSError as exc:
        raise ValueError(f"cannot read the API token file {args.api_token_file}: {exc.strerror}") from None
    if not token or any(c.isspace() for c in token):
        raise ValueError(f"the API token file {args.api_token_file} must hold one token without spaces")
    return token


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


def heap_size(text: str) -> str:
    """A JVM heap size such as 512m or 4g, for --heap."""
    if not re.fullmatch(r"\d+[mMgG]", text):
        raise argparse.ArgumentTypeError(f"expected a size such as 512m or 4g, not {text!r}")
    return text


def heap_conf(size: str | None) -> dict[str, str]:
    """Spark settings for a fixed driver heap (only effective when this process starts the JVM)."""
    if not size:
        return {}
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
    try:
        token = read_token(args)
    except ValueError as exc:
        print(f"server.py: {exc}", file=sys.stderr)
        return 2
    if not is_loopback(args.host) and not token:
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
        params = saved_params(model_dir)
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
                                      scale=args.scale, tune_budget=None if args.no_tune else args.tune_budget)
    except DatasetError as exc:
        sc.stop()
        print(f"server.py: {exc}", file=sys.stderr)
        return 2

    def shutdown():
        log.info("stopping")
        engine.close()
        try:
            sc.stop()
        except Exception:
            pass
        logging.shutdown()

    if "PYSPARK_GATEWAY_PORT" in os.environ:
        exit_with_parent()
    serve(build_wsgi(engine, token), args.host, args.port, args.threads, on_stop=shutdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
