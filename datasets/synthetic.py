"""Write a MovieLens-shaped synthetic dataset of any size, streaming, in the ml-latest format.

    python -m datasets.synthetic --ratings 20000000 --out datasets/synthetic-20m [--seed 1]

Users' activity and movies' popularity are long-tailed (log-normal and Zipf
weights), each (user, movie) pair appears once, and ratings on the 0.5..5
half-star scale come from a low-rank model plus biases and noise, so ALS has
real signal to find.  Users are written in blocks, so memory stays bounded by
the block size and the factor tables, not by the number of ratings.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

from progress import Progress

GENRES = ("Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Documentary", "Drama",
          "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western")
RANK = 8
BLOCK_USERS = 4000
START, END = 820_000_000, 1_540_000_000  # 1995..2018, like ml-latest


def shape(n_ratings: int) -> tuple[int, int]:
    """Users and movies for a given size: ml-20m's proportions (about 145 ratings a user, 740 a movie),
    with more movies at small sizes so the catalogue is not saturated."""
    return max(50, n_ratings // 145), max(40, n_ratings // 740, int(6 * n_ratings ** 0.5))


def write_movies(path: Path, n_movies: int, rng: np.random.Generator) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["movieId", "title", "genres"])
        for movie in range(1, n_movies + 1):
            year = 1920 + int(rng.integers(0, 99))
            title = f"Synthetic Movie {movie} ({year})" if movie % 7 else f"Synthetic Movie, The {movie} ({year})"
            genres = rng.choice(len(GENRES), size=int(rng.integers(1, 4)), replace=False)
            writer.writerow([movie, title, "|".join(GENRES[g] for g in sorted(genres))])


def user_counts(n_ratings: int, n_users: int, n_movies: int, rng: np.random.Generator) -> np.ndarray:
    """Ratings per user: log-normal activity, at least 1, at most half the catalogue, summing to n_ratings."""
    cap = max(1, n_movies // 2)
    weights = rng.lognormal(0.0, 1.1, n_users)
    counts = np.minimum(cap, np.maximum(1, np.floor(weights / weights.sum() * n_ratings))).astype(np.int64)
    deficit = n_ratings - int(counts.sum())
    while deficit != 0:  # spread the rounding remainder over users with room
        room = np.flatnonzero(counts < cap) if deficit > 0 else np.flatnonzero(counts > 1)
        if room.size == 0:
            raise ValueError(f"{n_ratings} ratings do not fit {n_users} users x {n_movies} movies")
        take = rng.choice(room, size=min(abs(deficit), room.size), replace=False)
        counts[take] += 1 if deficit > 0 else -1
        deficit = n_ratings - int(counts.sum())
    return counts


def draw_movies(count: int, cdf: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``count`` distinct movie indices drawn by popularity (without replacement)."""
    chosen = np.unique(np.searchsorted(cdf, rng.random(int(count * 1.3) + 8)))
    while chosen.size < count:
        more = np.searchsorted(cdf, rng.random(count * 2 + 8))
        chosen = np.unique(np.concatenate([chosen, more]))
    return rng.permutation(chosen)[:count]


def generate(n_ratings: int, out: Path, seed: int = 1, n_users: int | None = None,
             n_movies: int | None = None) -> dict:
    """Write ``ratings.csv`` and ``movies.csv`` into ``out``; return the dataset's shape."""
    rng = np.random.default_rng(seed)
    default_users, default_movies = shape(n_ratings)
    n_users, n_movies = n_users or default_users, n_movies or default_movies
    out.mkdir(parents=True, exist_ok=True)
    write_movies(out / "movies.csv", n_movies, rng)

    popularity = 1.0 / np.arange(1, n_movies + 1) ** 0.9  # Zipf-like long tail
    popularity = popularity[rng.permutation(n_movies)]
    cdf = np.cumsum(popularity) / popularity.sum()
    cdf[-1] = 1.0
    counts = user_counts(n_ratings, n_users, n_movies, rng)
    U = rng.normal(0, 0.35, (n_users, RANK))
    V = rng.normal(0, 0.35, (n_movies, RANK))
    bu = rng.normal(0, 0.35, n_users)
    bi = rng.normal(0, 0.3, n_movies) + 0.4 * (np.log(popularity / popularity.mean()) / 4)

    progress = Progress(f"writing {out / 'ratings.csv'}", n_ratings, " ratings")
    written = 0
    with open(out / "ratings.csv", "w") as fh:
        fh.write("userId,movieId,rating,timestamp\n")
        for first in range(0, n_users, BLOCK_USERS):
            users, movies = [], []
            for u in range(first, min(n_users, first + BLOCK_USERS)):
                picked = draw_movies(int(counts[u]), cdf, rng)
                users.append(np.full(picked.size, u))
                movies.append(picked)
            u_idx, m_idx = np.concatenate(users), np.concatenate(movies)
            raw = 3.55 + bu[u_idx] + bi[m_idx] + np.einsum("ij,ij->i", U[u_idx], V[m_idx]) * 2.0
            raw += rng.normal(0, 0.55, raw.size)
            ratings = np.clip(np.round(raw * 2) / 2, 0.5, 5.0)
            stamps = rng.integers(START, END, raw.size)
            fh.write("".join(f"{u},{m},{r:.1f},{t}\n" for u, m, r, t in
                             zip((u_idx + 1).tolist(), (m_idx + 1).tolist(), ratings.tolist(), stamps.tolist())))
            written += raw.size
            progress.update(written)
    progress.close()
    return {"ratings": written, "users": n_users, "movies": n_movies, "out": str(out)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Write a synthetic MovieLens-shaped dataset (ml-latest format).")
    p.add_argument("--ratings", type=int, required=True, help="number of ratings")
    p.add_argument("--out", type=Path, required=True, help="folder to write ratings.csv and movies.csv into")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--users", type=int, help="number of users (default: ratings / 145)")
    p.add_argument("--movies", type=int, help="number of movies (default: ratings / 740, at least 6 sqrt(ratings))")
    args = p.parse_args(argv)
    if args.ratings < 1:
        print("datasets.synthetic: --ratings must be at least 1", file=sys.stderr)
        return 2
    try:
        print(generate(args.ratings, args.out, args.seed, args.users, args.movies))
    except (ValueError, OSError) as exc:
        print(f"datasets.synthetic: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
