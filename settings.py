"""server.py's command line: every flag, its environment variable, and one-line errors for bad values.

A value from the environment goes through the flag's own type and choices, so
a bad one is the same one-line error (naming the variable), before anything starts.
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

from datasets.movielens import dataset_name
from model import Scale, TuneBudget
from serving.validation import MAX_POST_RATINGS

ROLES = ("all", "trainer", "api")
PROJECT_DIR = Path(__file__).resolve().parent


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors, and flags that fall back to environment variables."""

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


def positive_seconds(text: str) -> float:
    """An argparse type: a number of seconds, more than 0."""
    try:
        value = seconds(text)
    except argparse.ArgumentTypeError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, more than 0, not {text!r}")
    return value


def yes_no(text: str) -> bool:
    """An argparse type: 1/true/yes/on or 0/false/no/off."""
    value = text.strip().lower()
    if value not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        raise argparse.ArgumentTypeError(f"expected 1 or 0 (true/false, yes/no, on/off), not {text!r}")
    return value in ("1", "true", "yes", "on")


def ratings_or_percent(text: str) -> tuple[int | None, float | None]:
    """An argparse type: a number of ratings (``5000``) or a share of the trained ratings (``1%``);
    ``0`` turns the rule off."""
    value = text.strip()
    try:
        if value.endswith("%"):
            share = float(value[:-1])
            if 0 <= share <= 100:
                return None, share / 100 or None
        elif value.isdigit():
            return int(value) or None, None
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"expected a number of ratings such as 5000 or a share such as 1%, not {text!r}")


def cpu_count(text: str) -> int | None:
    """An argparse type: a number of CPUs, ``auto`` (all this process may use but one; none on one CPU)
    or ``all`` (None: no limit)."""
    value = text.strip().lower()
    usable = len(os.sched_getaffinity(0))
    if value == "all":
        return None
    if value == "auto":
        return usable - 1 if usable > 1 else None
    if value.isdigit() and int(value) >= 1:
        return min(int(value), usable)
    raise argparse.ArgumentTypeError(f"expected a number of CPUs, auto or all, not {text!r}")


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


def default_model_dir(dataset: str) -> Path:
    """models/<dataset name> in the project folder."""
    return PROJECT_DIR / "models" / dataset_name(dataset)


def build_parser() -> Parser:
    p = Parser(prog="server.py", description="Serve movie recommendations over HTTP, train them with Spark, or both.")
    p.add("--role", env="RECOMMENDER_ROLE", choices=ROLES, default="all",
          help="all: train and serve (the trainer runs as a child process at low priority); trainer: the Spark "
               "driver that fits and publishes model versions; api: answer HTTP from the published versions, "
               "without Spark (env RECOMMENDER_ROLE; default all)")
    p.add("--dataset", env="RECOMMENDER_DATASET", default="datasets/ml-latest-small",
          help="MovieLens folder or URI, for the trainer (env RECOMMENDER_DATASET; default datasets/ml-latest-small)")
    p.add("--model-dir", env="RECOMMENDER_MODEL_DIR",
          help="the folder every role on a host shares: published model versions, the ratings store (unless "
               "--store names a database), params.json (env RECOMMENDER_MODEL_DIR; default models/<dataset name>)")
    p.add("--store", env="RECOMMENDER_STORE",
          help="where posted ratings, user tokens and the trainer's status live, shared by every role: "
               "postgresql://USER:PASSWORD@HOST:PORT/DATABASE for API processes on several hosts (model "
               "versions are published there too; the model folder is then each host's own cache) "
               "(env RECOMMENDER_STORE; default: SQLite, ratings.db in the model folder)")
    p.add("--host", env="RECOMMENDER_HOST", default="127.0.0.1",
          help="address to bind (env RECOMMENDER_HOST; default 127.0.0.1)")
    p.add("--port", env="RECOMMENDER_PORT", type=whole(0, 65535), default=5432,
          help="port to bind (env RECOMMENDER_PORT; default 5432)")
    p.add("--threads", env="RECOMMENDER_THREADS", type=whole(1, 1024), default=16,
          help="CherryPy worker threads (env RECOMMENDER_THREADS; default 16)")
    p.add("--max-post-ratings", env="RECOMMENDER_MAX_POST_RATINGS", type=whole(1, 1_000_000),
          default=MAX_POST_RATINGS,
          help="the most ratings one POST may hold; more is a 413 that stores nothing (each is predicted and "
               f"folded in under a lock every request takes) (env RECOMMENDER_MAX_POST_RATINGS; default "
               f"{MAX_POST_RATINGS})")
    p.add("--request-timeout", env="RECOMMENDER_REQUEST_TIMEOUT", type=positive_seconds, default=10.0,
          help="seconds a request may take to arrive, head and body; a connection still incomplete then is "
               "closed (env RECOMMENDER_REQUEST_TIMEOUT; default 10)")
    p.add("--api-token", env="RECOMMENDER_API_TOKEN",
          help="require 'Authorization: Bearer TOKEN' to post ratings, read a user's ratings and ask for a fit "
               "(env RECOMMENDER_API_TOKEN; on the command line it is visible in ps: prefer --api-token-file)")
    p.add("--api-token-file", env="RECOMMENDER_API_TOKEN_FILE",
          help="read the API token from this file (env RECOMMENDER_API_TOKEN_FILE)")
    p.add("--master", env="SPARK_MASTER", help="Spark master (env SPARK_MASTER; default spark-submit's, else local[*])")
    p.add("--checkpoint-dir", env="SPARK_CHECKPOINT_DIR",
          help="where ALS checkpoints its factors; on a cluster a path every executor reaches, such as hdfs://... "
               "(env SPARK_CHECKPOINT_DIR; default on a local master: a temporary folder of the trainer's)")
    p.add("--scale", env="RECOMMENDER_SCALE", type=parse_scale,
          help="rating scale LOW,HIGH,STEP such as 1,5,1 (env RECOMMENDER_SCALE; default: inferred "
               "from the ratings, 0.5,5,0.5 for ml-latest)")
    p.add("--heap", env="RECOMMENDER_HEAP", type=heap_size,
          help="give Spark's driver JVM a fixed, pre-touched heap of this size (e.g. 1g, 6g) so the "
               "trainer's memory stays flat (env RECOMMENDER_HEAP; default: the JVM grows its heap as "
               "needed up to SPARK_DRIVER_MEMORY, 4g)")
    p.add("--tune-fits", env="RECOMMENDER_TUNE_FITS", type=whole(1, 1000), default=TuneBudget.fits,
          help="a dataset without saved parameters (params.json) is tuned after its first fit: the candidate "
               f"fits the search may make (env RECOMMENDER_TUNE_FITS; default {TuneBudget.fits})")
    p.add("--tune-time-cap", env="RECOMMENDER_TUNE_TIME_CAP", type=seconds, default=TuneBudget.seconds,
          help="a safety net: no new tuning fit starts after this many seconds, and the report says so "
               f"(env RECOMMENDER_TUNE_TIME_CAP; default {TuneBudget.seconds:g})")
    p.add("--no-tune", env="RECOMMENDER_NO_TUNE", type=yes_no, nargs="?", const=True, default=False,
          help="use the default parameters instead of tuning (env RECOMMENDER_NO_TUNE=1)")
    p.add("--retrain-after", env="RECOMMENDER_RETRAIN_AFTER", type=ratings_or_percent, default=(None, 0.01),
          metavar="N|P%", help="fit again once this many new ratings arrived, or this share of the ratings the "
                               "version in service was trained on; 0: never by count (env "
                               "RECOMMENDER_RETRAIN_AFTER; default 1%%: 1,008 on ml-latest-small, 200,000 at 20M)")
    p.add("--retrain-interval", env="RECOMMENDER_RETRAIN_INTERVAL", type=seconds, default=900.0,
          help="fit again once the oldest new rating has waited this many seconds; 0: never by time "
               "(env RECOMMENDER_RETRAIN_INTERVAL; default 900)")
    p.add("--keep-versions", env="RECOMMENDER_KEEP_VERSIONS", type=whole(1, 1000), default=3,
          help="published model versions kept (besides any an API process still serves) "
               "(env RECOMMENDER_KEEP_VERSIONS; default 3)")
    p.add("--trainer-nice", env="RECOMMENDER_TRAINER_NICE", type=whole(0, 19), default=19,
          help="role all: the trainer process's niceness, so fits yield the CPU to requests; 19 also "
               "puts it in Linux's idle scheduling class (env RECOMMENDER_TRAINER_NICE; default 19)")
    p.add("--trainer-cpus", env="RECOMMENDER_TRAINER_CPUS", type=cpu_count, default=cpu_count("auto"),
          help="role all: once a version serves, keep the trainer (its JVM and workers too) on this many "
               "CPUs, so requests always have a core of their own; auto: all but one, all: no limit "
               "(env RECOMMENDER_TRAINER_CPUS; default auto)")
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
