"""Accuracy benchmark: RMSE of every part (baseline, ALS, neighbourhood, blend) with the default and the tuned
parameters, on ml-latest-small's random 80/20 split, on split files made with other seeds, and on a
whole-star copy of ml-latest-small (shaped like ml-100k: every rating rounded up to whole stars).

    .venv/bin/python bench/accuracy.py [--seeds 2026,7] [--fits 16]

Each evaluation is ``evaluate.py`` in its own process; "tuned" is what the service does for a dataset
without saved parameters (tuning on a validation split carved from the training part, never the test
part).  One JSON line per evaluation.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import random
import subprocess
import sys
import tempfile
from pathlib import Path

from common import DEFAULT_DATASET, ROOT


def split_files(source: Path, seed: int, out: Path) -> tuple[Path, Path]:
    """Write train/test CSVs holding a random 80/20 of ``source``'s ratings (Python's random, ``seed``)."""
    rng = random.Random(seed)
    train, test = out / f"train-{seed}.csv", out / f"test-{seed}.csv"
    with open(source / "ratings.csv", newline="") as fh, open(train, "w", newline="") as tr, \
            open(test, "w", newline="") as te:
        rows = csv.reader(fh)
        header = next(rows)
        writers = csv.writer(tr, lineterminator="\n"), csv.writer(te, lineterminator="\n")
        for w in writers:
            w.writerow(header)
        for row in rows:
            writers[rng.random() < 0.2].writerow(row)
    return train, test


def whole_stars(source: Path, out: Path) -> Path:
    """A copy of ``source`` with every rating rounded up to a whole star (0.5 -> 1, 3.5 -> 4)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "movies.csv").write_bytes((source / "movies.csv").read_bytes())
    with open(source / "ratings.csv", newline="") as fh, open(out / "ratings.csv", "w", newline="") as dst:
        rows = csv.reader(fh)
        writer = csv.writer(dst, lineterminator="\n")
        writer.writerow(next(rows))
        for user, movie, rating, stamp in rows:
            writer.writerow([user, movie, f"{math.ceil(float(rating)):.1f}", stamp])
    return out


def run(label: str, args: list[str], model_dir: Path) -> dict:
    out = subprocess.run([sys.executable, str(ROOT / "evaluate.py"), *args, "--json", "--master", "local[2]",
                          "--model-dir", str(model_dir)], cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        return {"run": label, "error": out.stderr.strip().splitlines()[-1:]}
    result = json.loads(out.stdout.strip().splitlines()[-1])
    keep = ("rmse", "coverage", "models", "tuned", "ndcg_at_10", "precision_at_10", "popularity_ndcg_at_10",
            "fit_seconds", "n_train", "n_test")
    return {"run": label, **{k: result[k] for k in keep if k in result}, "params": result["params"]}


def main() -> int:
    p = argparse.ArgumentParser(description="RMSE of each part, default against tuned parameters.")
    p.add_argument("--dataset", type=Path, default=Path(DEFAULT_DATASET))
    p.add_argument("--seeds", default="2026,7", help="seeds of the extra split files (Python's random)")
    p.add_argument("--fits", default="16", help="tuning budget: candidate fits")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        whole = whole_stars(args.dataset, tmp / "ml-latest-small-whole-stars")
        runs = [("seed 42", ["--dataset", str(args.dataset)]), ("whole stars, seed 42", ["--dataset", str(whole)])]
        for seed in (int(s) for s in args.seeds.split(",") if s):
            train, test = split_files(args.dataset, seed, tmp)
            runs.append((f"split files, seed {seed}", ["--train", str(train), "--test", str(test)]))
        for label, data in runs:
            for tuned in (False, True):
                extra = ["--tune-fits", args.fits] if tuned else ["--no-tune"]
                model_dir = Path(tempfile.mkdtemp(dir=tmp))  # no saved parameters: tuned as on a first start
                print(json.dumps({**run(label, data + extra, model_dir), "tuning": tuned}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
