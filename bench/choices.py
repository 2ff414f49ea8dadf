"""Two modelling choices measured on the same split files (issue 20 items 9 and 10); one JSON line per run.

    .venv/bin/python bench/choices.py [--seed 2026]

- ``threshold``: the signed-confidence boundary of the ranking model, fixed 2.5 against the scale's
  midpoint and the user's mean rating, by NDCG@10 of the served lists, on ml-latest-small and on its
  whole-star copy (ml-100k-shaped).
- ``candidates``: the neighbourhood's 200 candidates by the dot product of the ranking model's factors
  against their cosine, by the served blend's RMSE, with Toy Story's first neighbours.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
from accuracy import split_files, whole_stars
from common import DEFAULT_DATASET

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import evaluate  # noqa: E402
from datasets import movielens  # noqa: E402
from model import ModelParams, NeighbourParams, RankingParams  # noqa: E402
from spark.context import create_context  # noqa: E402
from spark.training import fit_models, infer_scale  # noqa: E402


def load(sc, train: Path, test: Path):
    return tuple(movielens.load_ratings(sc, movielens.Layout("csv", str(path), ""))[0].cache()
                 for path in (train, test))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", type=Path, default=Path(DEFAULT_DATASET))
    p.add_argument("--seed", type=int, default=2026, help="seed of the split files (Python's random)")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    sc = create_context("local[2]")
    movies = movielens.load_movies(sc, movielens.detect_layout(sc, str(args.dataset)))
    titles = {m: movie.title for m, movie in movies.items()}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        half = load(sc, *split_files(args.dataset, args.seed, tmp))
        whole_dir = whole_stars(args.dataset, tmp / "whole")
        whole = load(sc, *split_files(whole_dir, args.seed, whole_dir))
        for label, (train, test), midpoint in (("ml-latest-small", half, 2.75), ("whole stars", whole, 3.0)):
            for name, ranking in (("2.5", RankingParams()), ("midpoint", replace(RankingParams(), threshold=midpoint)),
                                  ("user mean", replace(RankingParams(), centre="user"))):
                result = evaluate.evaluate(sc, train, test, ModelParams(ranking=ranking))
                print(json.dumps({"choice": "threshold", "data": label, "boundary": name,
                                  "ndcg_at_10": result["ndcg_at_10"], "precision_at_10": result["precision_at_10"],
                                  "rmse": result["rmse"]}), flush=True)
        train, test = half
        for how in ("dot", "cosine"):
            models = fit_models(sc, train, ModelParams(neighbours=replace(NeighbourParams(), candidates=how)),
                                infer_scale(train))
            parts = evaluate.rating_metrics(sc, models, train, test)["models"]
            row = int(models.rating.movie_rows(np.array([1]))[0])
            first = [titles[int(models.rating.movie_ids[r])] for r in models.neighbours.neighbours[row][:3] if r >= 0]
            print(json.dumps({"choice": "candidates", "data": "ml-latest-small", "candidates": how,
                              "blend_rmse": parts["blend"]["rmse"],
                              "neighbourhood_rmse": parts["neighbourhood"]["rmse"],
                              "toy_story_first_neighbours": first}), flush=True)
    sc.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
