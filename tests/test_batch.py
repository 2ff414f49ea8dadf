"""batch.py: every user's list written by Spark equals the API's for that user, as Parquet or CSV."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import copy_model

import batch
from serving.movie_rules import MovieRules
from serving.personal import PersonalData

ROOT = Path(__file__).resolve().parent.parent


def _api_lists(rec, users, count, min_count) -> dict[int, list[tuple]]:
    lists = {}
    for user in users:
        top = rec.recommend(user, count, min_count)
        lists[user] = [(s.movie.movie_id, s.predicted_rating, s.ranking_score) for s in top.movies]
    return lists


def _read(sc, out: Path, fmt: str) -> dict[int, list[tuple]]:
    from pyspark.sql import SparkSession

    rows = SparkSession.builder.getOrCreate().read.format(fmt).option("header", True) \
        .option("inferSchema", True).load(str(out)).collect()
    lists: dict[int, list] = {}
    for row in sorted(rows, key=lambda r: (int(r["userId"]), int(r["rank"]))):
        lists.setdefault(int(row["userId"]), []).append(
            (int(row["movieId"]), float(row["predicted_rating"]),
             None if row["ranking_score"] is None else float(row["ranking_score"])))
    return lists


def test_batch_lists_are_the_apis_with_rules_hidden_movies_and_posted_ratings(sc, make_recommender, tmp_path):
    rec = make_recommender()
    rec.add_ratings(4, [(m, 5.0) for m in (1, 2, 3)])  # posted since the fit: folded in as by the API
    first = rec.recommend(8, 1, 0).movies[0].movie.movie_id
    MovieRules(rec).put(first, {"hidden": True})  # withdrawn from every list, the batch's too
    PersonalData(rec).hide(9, [rec.recommend(9, 1, 0).movies[0].movie.movie_id])
    served = rec.current()
    users = sorted(set(served.histories.users.tolist()) | set(served.posted))
    summary = batch.run(sc, rec.model_dir, str(tmp_path / "lists"), count=5, min_count=0)
    rec.recommend(5, 3, 0, batch=True)
    assert 5 not in rec.quality._shown  # a batch's list is shown to nobody (live quality, experiments)
    written = _read(sc, tmp_path / "lists", "parquet")
    expected = _api_lists(rec, users, 5, 0)
    assert summary["users"] == len(users) and summary["model_version"] == rec.version
    assert summary["rows"] == sum(len(v) for v in expected.values()) > 0
    assert set(written) == {u for u, v in expected.items() if v}
    for user in users:
        assert [m for m, _, _ in written.get(user, [])] == [m for m, _, _ in expected[user]], user
        for (_, p, s), (_, p2, s2) in zip(written.get(user, []), expected[user]):
            assert p == pytest.approx(p2, abs=1e-9) and s == pytest.approx(s2, rel=1e-6)
    assert all(first not in [m for m, _, _ in v] for v in written.values())
    assert (tmp_path / "lists" / "_SUCCESS").exists()


def test_batch_csv_for_listed_users_with_a_header_and_the_popular_fallback(sc, make_recommender, tmp_path):
    rec = make_recommender()
    stranger = 999_999
    listed = tmp_path / "users.txt"
    listed.write_text(f"userId\n3\n{stranger}\n3\n")
    out = tmp_path / "lists-csv"
    batch.run(sc, rec.model_dir, str(out), count=3, min_count=2, users=batch.read_users(listed), fmt="csv")
    parts = sorted(out.glob("part-*.csv"))
    assert parts and (out / "_SUCCESS").exists()
    with parts[0].open() as f:
        assert next(csv.reader(f)) == list(batch.COLUMNS)
    written = _read(sc, out, "csv")
    assert written == {u: v for u, v in _api_lists(rec, [3, stranger], 3, 2).items() if v}
    assert [s for _, _, s in written[stranger]] == [None] * 3  # popular: no ranking score


@pytest.mark.parametrize("args,needle", [
    (["--count", "0"], "--count"),
    (["--format", "json"], "--format"),
    (["--users", "missing.txt"], "--users"),
    (["--model-dir", "nowhere"], "no published model version"),
])
def test_bad_arguments_fail_in_one_line_before_spark_starts(fixture_model, tmp_path, args, needle):
    model = copy_model(fixture_model, tmp_path / "model")
    base = {"--model-dir": str(model), "--out": str(tmp_path / "out")}
    for flag, value in zip(args[::2], args[1::2]):
        base[flag] = value
    command = [sys.executable, str(ROOT / "batch.py"), *[x for kv in base.items() for x in kv]]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    lines = done.stderr.strip().splitlines()
    assert done.returncode != 0 and len(lines) == 1 and needle in lines[0] and "Traceback" not in done.stderr
    assert done.stdout == "" and not (tmp_path / "out").exists()


def test_a_bad_users_line_and_an_existing_output_are_refused(tmp_path):
    bad = tmp_path / "users.txt"
    bad.write_text("1\n2\nthree\n")
    with pytest.raises(batch.BatchError, match="line 3"):
        batch.read_users(bad)
    (tmp_path / "out").mkdir()
    with pytest.raises(batch.BatchError, match="exists already"):
        batch.check_out(str(tmp_path / "out"))
