"""Peak memory of fitting the item neighbourhood, in the driver and in the Python workers; one JSON line.

    .venv/bin/python bench/neighbourhood_memory.py --dataset datasets/synthetic-20m --model-dir M [--master local[2]]

``M`` holds a published version fitted on the dataset (its rating and ranking
models are reused, so only the neighbourhood is fitted).  A sampler reads the
resident memory of this process (the Python driver), of the JVM (driver and, on
a local master, the executors) and of the Python workers every 0.1 s while the
neighbourhood is fitted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

from common import rss_mb

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from datasets import movielens  # noqa: E402
from server import descendants  # noqa: E402
from spark.context import create_context  # noqa: E402
from spark.training import fit_neighbour_model, packed  # noqa: E402
from storage.versions import ModelVersions  # noqa: E402


def command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


class Sampler(threading.Thread):
    """The highest resident memory seen of the driver, the JVM and all Python workers together."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak = {"python_driver_mb": 0.0, "jvm_mb": 0.0, "python_workers_mb": 0.0}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.1):
            jvm = workers = 0.0
            for pid in descendants(os.getpid()):
                line = command(pid)
                if "java" in line.split(" ", 1)[0]:
                    jvm += rss_mb(pid)
                elif "python" in line:
                    workers += rss_mb(pid)
            for key, value in (("python_driver_mb", rss_mb(os.getpid())), ("jvm_mb", jvm),
                               ("python_workers_mb", workers)):
                self.peak[key] = max(self.peak[key], round(value, 1))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", required=True)
    p.add_argument("--model-dir", required=True, type=Path)
    p.add_argument("--master", default="local[2]")
    args = p.parse_args()
    versions = ModelVersions(args.model_dir)
    models = versions.load(versions.current())[0].models
    sc = create_context(args.master)
    ratings, _ = movielens.load_ratings(sc, movielens.detect_layout(sc, args.dataset))
    with packed(ratings) as arrays:
        n_ratings = arrays.map(lambda part: len(part[0])).sum()
        sampler = Sampler()
        before = dict(python_driver_mb=rss_mb(os.getpid()))
        sampler.start()
        start = time.perf_counter()
        neighbours = fit_neighbour_model(sc, arrays, models.rating, models.ranking, models.params.neighbours)
        seconds = time.perf_counter() - start
        sampler.done.set()
        sampler.join()
    print(json.dumps({"ratings": int(n_ratings), "movies": len(models.rating.movie_ids),
                      "width": int(neighbours.neighbours.shape[1]), "seconds": round(seconds, 1),
                      "python_driver_before_mb": before["python_driver_mb"], **sampler.peak}))
    sc.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
