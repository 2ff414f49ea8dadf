"""What one POST of ratings costs the API process, by catalogue size; one JSON line per catalogue.

    .venv/bin/python bench/post_cost.py [--movies 9742 27278 86537] [--ratings 1000] [--repeat 20]

Synthetic models (random NumPy arrays of the default ranks and neighbour width) over catalogues of
the given sizes, and the two steps of ``Recommender.add_ratings`` that depend on the models: the
prediction of the posted ratings for the live quality (``Snapshot.predicted_ratings``) and the fold-in
(``Served.apply``, under the recommender's lock, then the vectors, folded at the user's next answer).
Each step's median time and its peak of new memory (tracemalloc, measured on a separate run) for a
user with ``--history`` earlier ratings who posts ``--ratings`` new ones.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import model as m  # noqa: E402
from serving.state import Served  # noqa: E402
from storage.catalogue import Catalogue, Histories  # noqa: E402
from storage.store import Changes, UserChange  # noqa: E402
from storage.versions import Version  # noqa: E402

USERS = 1000  # users the synthetic models were "trained" on
USER = 1  # the user who posts


def synthetic_version(n_movies: int, history: int, seed: int = 0) -> Version:
    """A version over ``n_movies`` movies whose models are random arrays; user ``USER`` rated ``history``."""
    rng = np.random.default_rng(seed)
    movie_ids = np.arange(1, n_movies + 1, dtype=np.int64)
    user_ids = np.arange(1, USERS + 1, dtype=np.int64)
    rp, kp, npar = m.RatingParams(), m.RankingParams(), m.NeighbourParams()
    scale = m.Scale(0.5, 5.0, 0.5)
    rating = m.RatingModel(3.5, user_ids, rng.normal(0, 0.3, USERS), rng.normal(0, 0.1, (USERS, rp.rank)),
                         movie_ids, rng.normal(0, 0.3, n_movies), rng.normal(0, 0.1, (n_movies, rp.rank)), rp, scale)
    ranking = m.RankingModel(user_ids, rng.normal(0, 0.1, (USERS, kp.rank)), movie_ids,
                           rng.normal(0, 0.1, (n_movies, kp.rank)), kp)
    neighbours = m.NeighbourModel(rng.integers(0, n_movies, (n_movies, npar.neighbours), dtype=np.int32),
                                np.sort(rng.uniform(-0.2, 1, (n_movies, npar.neighbours)), axis=1)[:, ::-1]
                                .astype(np.float32), npar)
    models = m.Models(rating, ranking, neighbours)
    catalogue = Catalogue(movie_ids, [f"Movie {m}" for m in movie_ids.tolist()], [("Drama",)] * n_movies)
    users = rng.integers(USER + 1, USERS + 1, 20 * n_movies)  # USER rated exactly ``history``
    rows = rng.integers(0, n_movies, len(users))
    rated = rng.choice(n_movies, history, replace=False)
    users, rows = np.concatenate([users, np.full(history, USER)]), np.concatenate([rows, rated])
    values = rng.integers(1, 11, len(users)) / 2
    histories = Histories.build(users, rows, values, n_movies)
    return Version(models, catalogue, histories, {"version": 1, "seq": 0})


def measure(step, repeat: int) -> dict:
    """Median milliseconds over ``repeat`` runs, then the peak of new memory of one more, in MB."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        step()
        times.append((time.perf_counter() - start) * 1000)
    tracemalloc.start()
    step()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {"ms": round(statistics.median(times), 3), "peak_mb": round(peak / 2**20, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--movies", type=int, nargs="+", default=[9742, 27278, 86537])
    parser.add_argument("--ratings", type=int, default=1000)
    parser.add_argument("--history", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    from threadpoolctl import threadpool_limits

    threadpool_limits(1, user_api="blas")  # as server.py serves
    for n_movies in args.movies:
        print(json.dumps(post_cost(n_movies, args.ratings, args.history, args.repeat)), flush=True)


def post_cost(n_movies: int, ratings: int, history: int, repeat: int) -> dict:
    """Both steps' cost for one catalogue size."""
    version = synthetic_version(n_movies, history)
    served = Served(version)
    rng = np.random.default_rng(1)
    posted = rng.choice(n_movies, ratings, replace=False)
    pairs = {int(version.catalogue.movie_ids[r]): float(v) for r, v in zip(posted, rng.integers(1, 11, ratings) / 2)}
    rows = np.sort(posted).astype(np.int64)
    snapshot, rated = served.snapshot, served.ratings_of(USER)
    vectors = snapshot.user_vectors(USER)

    def predict() -> None:
        snapshot.predicted_ratings(vectors, rows, rated=(rated.rows, rated.ratings))

    changes = Changes(users={USER: UserChange(ratings=pairs)})

    def fold_in() -> None:  # the ratings merged in, then the vectors at the user's next answer
        served.apply(1, changes)
        snapshot.user_vectors(USER)

    return {"movies": n_movies, "ratings": ratings, "history": history, "predict": measure(predict, repeat),
            "apply": measure(fold_in, repeat)}

if __name__ == "__main__":
    main()
