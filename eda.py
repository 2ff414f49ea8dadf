"""Exploratory report of a MovieLens dataset: PNG plots and an index page.

    python eda.py --dataset datasets/ml-latest-small --out reports/ml-latest-small/

Spark aggregates the ratings (so the same command works on the large sets);
matplotlib (Agg) draws the rating distribution, ratings and mean rating per
genre, ratings per month, ratings count against mean rating per movie, the
popularity long tail, and, when ``evaluate.py --tune`` has saved its table for
the dataset, RMSE against rank and lambda.
"""

from __future__ import annotations

import argparse
import html
import json
import logging
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from datasets import movielens  # noqa: E402


def aggregate(sc, dataset: str) -> dict:
    """Everything the plots need, computed with Spark and collected small."""
    layout = movielens.detect_layout(sc, dataset)
    movies = movielens.load_movies(sc, layout)
    ratings, bad = movielens.load_ratings(sc, layout, with_timestamp=True)
    ratings = ratings.cache()
    per_value = dict(ratings.map(lambda t: t[2]).countByValue())
    per_movie = ratings.map(lambda t: (t[1], (t[2], 1))).reduceByKey(
        lambda a, b: (a[0] + b[0], a[1] + b[1])).collect()
    per_month = dict(ratings.map(lambda t: time.strftime("%Y-%m", time.gmtime(t[3]))).countByValue())
    n_users = ratings.map(lambda t: t[0]).distinct().count()
    first, last = ratings.map(lambda t: (t[3], t[3])).reduce(lambda a, b: (min(a[0], b[0]), max(a[1], b[1])))
    ratings.unpersist()
    return {"movies": movies, "per_value": per_value, "per_movie": per_movie, "per_month": per_month,
            "n_users": n_users, "first": first, "last": last, "malformed": bad.value}


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_distribution(data: dict, path: Path) -> None:
    values = sorted(data["per_value"])
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar([str(v) for v in values], [data["per_value"][v] for v in values], color="#4c72b0")
    ax.set(title="Rating distribution", xlabel="Rating (stars)", ylabel="Number of ratings")
    _save(fig, path)


def genre_table(data: dict) -> list[tuple[str, int, float]]:
    """(genre, ratings, mean rating) for every genre, most rated first."""
    sums: dict[str, list[float]] = {}
    for movie, (total, count) in data["per_movie"]:
        genres = data["movies"][movie].genres if movie in data["movies"] else ()
        for genre in genres or ("(no genres listed)",):
            acc = sums.setdefault(genre, [0.0, 0])
            acc[0] += total
            acc[1] += count
    return sorted(((g, int(n), s / n) for g, (s, n) in sums.items()), key=lambda row: -row[1])


def plot_genres(data: dict, path: Path) -> None:
    table = genre_table(data)
    names = [row[0] for row in table]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5), sharey=True)
    left.barh(names, [row[1] for row in table], color="#55a868")
    left.set(title="Ratings per genre", xlabel="Number of ratings", ylabel="Genre")
    left.invert_yaxis()
    right.barh(names, [row[2] for row in table], color="#c44e52")
    right.set(title="Mean rating per genre", xlabel="Mean rating (stars)")
    right.set_xlim(min(row[2] for row in table) - 0.2, max(row[2] for row in table) + 0.1)
    _save(fig, path)


def plot_months(data: dict, path: Path) -> None:
    months = sorted(data["per_month"])
    dates = np.array([np.datetime64(m) for m in months])
    fig, ax = plt.subplots(figsize=(10, 4))
    ax.plot(dates, [data["per_month"][m] for m in months], color="#8172b2", linewidth=1)
    ax.set(title="Ratings per month", xlabel="Month", ylabel="Number of ratings")
    _save(fig, path)


def plot_count_vs_mean(data: dict, path: Path) -> None:
    counts = np.array([c for _, (_, c) in data["per_movie"]])
    means = np.array([s / c for _, (s, c) in data["per_movie"]])
    fig, ax = plt.subplots(figsize=(7, 5))
    hb = ax.hexbin(counts, means, xscale="log", gridsize=40, bins="log", cmap="viridis", mincnt=1)
    fig.colorbar(hb, ax=ax, label="Movies (log scale)")
    ax.set(title="Ratings count against mean rating, per movie", xlabel="Number of ratings (log scale)",
           ylabel="Mean rating (stars)")
    _save(fig, path)


def plot_long_tail(data: dict, path: Path) -> None:
    counts = np.sort(np.array([c for _, (_, c) in data["per_movie"]]))[::-1]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(np.arange(1, len(counts) + 1), counts, color="#dd8452")
    ax.set(title="Movie popularity long tail", xlabel="Movie rank by popularity (log scale)",
           ylabel="Number of ratings (log scale)", xscale="log", yscale="log")
    _save(fig, path)


def plot_tuning(tune: dict, path: Path) -> None:
    table = tune["table"]
    fig, ax = plt.subplots(figsize=(7, 4))
    for rank in sorted({row["rank"] for row in table}):
        rows = sorted((row for row in table if row["rank"] == rank), key=lambda row: row["reg"])
        ax.plot([row["reg"] for row in rows], [row["valid_rmse"] for row in rows], marker="o", label=f"rank {rank}")
    ax.set(title="Validation RMSE against rank and lambda", xlabel="lambda (regularisation)",
           ylabel="Validation RMSE")
    ax.legend()
    _save(fig, path)


def write_report(data: dict, out: Path, name: str, tune: dict | None) -> list[tuple[str, str]]:
    """Draw every plot into ``out`` and write index.html; return (file, caption) pairs."""
    out.mkdir(parents=True, exist_ok=True)
    plots = [
        ("rating_distribution.png", plot_distribution, "How often each rating value is given."),
        ("genres.png", plot_genres, "Number of ratings and mean rating for each genre."),
        ("ratings_per_month.png", plot_months, "Ratings given per calendar month."),
        ("count_vs_mean.png", plot_count_vs_mean,
         "Each movie's number of ratings against its mean rating: rarely rated movies scatter widely."),
        ("long_tail.png", plot_long_tail, "Ratings per movie, most popular first: a few movies get most ratings."),
    ]
    made = []
    for filename, draw, caption in plots:
        draw(data, out / filename)
        made.append((filename, caption))
    if tune:
        plot_tuning(tune, out / "tuning.png")
        chosen = tune["chosen"].get("rating", tune["chosen"])  # {"rating": {...}, ...}, or a flat pick of old
        made.append(("tuning.png", f"Validation RMSE of each candidate; chosen: rank {chosen['rank']}, "
                                   f"lambda {chosen['reg']:g}."))
    n_ratings = sum(c for _, (_, c) in data["per_movie"])
    mean = sum(s for _, (s, _) in data["per_movie"]) / n_ratings
    n_movies = len(data["per_movie"])
    headline = {
        "ratings": f"{n_ratings:,}", "users": f"{data['n_users']:,}", "movies rated": f"{n_movies:,}",
        "movies listed": f"{len(data['movies']):,}", "mean rating": f"{mean:.2f}",
        "density": f"{n_ratings / (data['n_users'] * n_movies):.2%}",
        "period": f"{time.strftime('%Y-%m-%d', time.gmtime(data['first']))} to "
                  f"{time.strftime('%Y-%m-%d', time.gmtime(data['last']))}",
    }
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in headline.items())
    figures = "".join(f'<figure><img src="{f}" alt="{html.escape(c)}"><figcaption>{html.escape(c)}</figcaption>'
                      f"</figure>" for f, c in made)
    (out / "index.html").write_text(
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{html.escape(name)}: EDA</title>"
        "<style>body{font-family:system-ui,sans-serif;max-width:60rem;margin:auto;padding:1rem}"
        "img{max-width:100%}figure{margin:2rem 0}th{text-align:left;padding-right:1rem}</style></head>"
        f"<body><h1>{html.escape(name)}</h1><p>MovieLens data © GroupLens Research.</p><table>{rows}</table>"
        f"{figures}</body></html>\n")
    (out / "summary.json").write_text(json.dumps(headline, indent=2) + "\n")
    return made


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Plots and an index page describing a MovieLens dataset.")
    p.add_argument("--dataset", required=True, help="MovieLens folder or URI")
    p.add_argument("--out", type=Path, help="report folder (default reports/<dataset name>/)")
    p.add_argument("--tune-result", type=Path,
                   help="evaluate.py --tune table (default models/<dataset name>/tune.json, if present)")
    p.add_argument("--master", help="Spark master (default local[*])")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    name = movielens.dataset_name(args.dataset)
    out = args.out or Path("reports") / name
    from settings import default_model_dir
    from spark.context import create_context

    tune_path = args.tune_result or default_model_dir(args.dataset) / "tune.json"
    tune = json.loads(tune_path.read_text()) if tune_path.exists() else None
    sc = create_context(args.master, app_name="recommender-eda")
    try:
        data = aggregate(sc, args.dataset)
    except movielens.DatasetError as exc:
        print(f"eda.py: {exc}", file=sys.stderr)
        return 2
    finally:
        sc.stop()
    made = write_report(data, out, name, tune)
    print(json.dumps({"out": str(out), "plots": [f for f, _ in made], "index": str(out / "index.html")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
