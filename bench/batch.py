"""Batch recommendations: the seconds batch.py takes to write every user's top-10, on local[2].

    .venv/bin/python bench/batch.py [--dataset datasets/ml-latest-small] [--params '{"ranking": {"rank": 32}}']

Fits a first version with ``server.py --role trainer --no-tune`` in a temporary model folder (``--params``
is written to its params.json first: smaller ranks for the 20M synthetic set), stops the trainer, then
runs ``batch.py --master local[2]`` as a user would, once as Parquet and once as CSV, and prints one JSON
object: each run's wall seconds (Spark's start included) and batch.py's own summary (its ``seconds``
exclude Spark's start), with users and rows a second.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import DEFAULT_DATASET, ROOT, wait_until

from storage.versions import ModelVersions


def _fit(dataset: str, model_dir: Path, params: str | None) -> float:
    if params:
        (model_dir / "params.json").write_text(params)
    start = time.perf_counter()
    log = open(model_dir / "trainer.out", "w")
    proc = subprocess.Popen([sys.executable, str(ROOT / "server.py"), "--role", "trainer", "--no-tune",
                             "--dataset", dataset, "--model-dir", str(model_dir)], cwd=ROOT, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        wait_until("the first version", lambda: ModelVersions(model_dir).current() is not None, 7200,
                   [(proc, model_dir / "trainer.out")])
    finally:
        proc.terminate()
        proc.wait(60)
    return round(time.perf_counter() - start, 1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default=DEFAULT_DATASET)
    p.add_argument("--params", help="params.json for the fit (JSON text)")
    p.add_argument("--count", type=int, default=10)
    args = p.parse_args(argv)
    result: dict = {"dataset": args.dataset, "master": "local[2]", "count": args.count}
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        model_dir = Path(tmp) / "model"
        model_dir.mkdir()
        result["fit_seconds"] = _fit(args.dataset, model_dir, args.params)
        for fmt in ("parquet", "csv"):
            start = time.perf_counter()
            done = subprocess.run([sys.executable, str(ROOT / "batch.py"), "--model-dir", str(model_dir),
                                   "--out", str(Path(tmp) / f"out-{fmt}"), "--format", fmt, "--master", "local[2]",
                                   "--count", str(args.count)], cwd=ROOT, capture_output=True, text=True)
            wall = time.perf_counter() - start
            if done.returncode != 0:
                raise SystemExit(f"bench: batch.py failed: {done.stderr[-2000:]}")
            summary = json.loads(done.stdout.strip().splitlines()[-1])
            result[fmt] = {"wall_seconds": round(wall, 2), **summary,
                           "users_per_second": round(summary["users"] / summary["seconds"], 1),
                           "bytes": sum(f.stat().st_size for f in (Path(tmp) / f"out-{fmt}").iterdir())}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
