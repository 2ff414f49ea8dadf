"""Reading every MovieLens layout, malformed lines, and fetching with checksum verification."""

from __future__ import annotations

import hashlib
import io
import zipfile

import pytest
from fixtures import SPECIAL_TITLES, write_dataset

from datasets import fetch as fetch_mod
from datasets import movielens


@pytest.mark.parametrize("kind", ["csv", "dat", "100k"])
def test_each_layout_reads_titles_genres_and_ratings(sc, tmp_path, kind):
    fx = write_dataset(tmp_path / kind, kind, n_users=10, n_movies=12)
    layout = movielens.detect_layout(sc, str(fx.path))
    assert layout.kind == kind
    movies = movielens.load_movies(sc, layout)
    assert {m: movies[m].title for m in SPECIAL_TITLES} == SPECIAL_TITLES
    assert movies[2].genres == ("Comedy", "Crime")
    assert movies[12].genres == ("Drama",)
    ratings, bad = movielens.load_ratings(sc, layout)
    assert sorted(ratings.collect()) == sorted(fx.ratings)
    assert bad.value == 0


def test_csv_quoted_title_with_comma_keeps_its_genres(sc, tmp_path):
    fx = write_dataset(tmp_path / "q", "csv", n_users=3, n_movies=5)
    assert '"American President, The (1995)"' in (fx.path / "movies.csv").read_text()
    movies = movielens.load_movies(sc, movielens.detect_layout(sc, str(fx.path)))
    assert movies[1] == movielens.Movie(1, "American President, The (1995)", ("Comedy",))


def test_latin1_titles_of_ml100k_are_decoded(sc, tmp_path):
    fx = write_dataset(tmp_path / "l", "100k", n_users=3, n_movies=5)
    assert "Café".encode("latin-1") in (fx.path / "u.item").read_bytes()
    movies = movielens.load_movies(sc, movielens.detect_layout(sc, str(fx.path)))
    assert movies[3].title == "Café, Le (1990)"
    assert movies[4].title == "Amélie (2001)"


@pytest.mark.parametrize("kind,bad", [("csv", 8), ("dat", 4), ("100k", 3)])
def test_malformed_lines_are_skipped_and_counted(sc, tmp_path, kind, bad):
    fx = write_dataset(tmp_path / kind, kind, n_users=5, n_movies=6, bad_lines=bad)
    ratings, counter = movielens.load_ratings(sc, movielens.detect_layout(sc, str(fx.path)))
    assert ratings.count() == len(fx.ratings)
    assert counter.value == bad


def test_non_finite_and_negative_ratings_are_malformed_and_the_first_is_found(sc, tmp_path):
    for line in ("1,2,inf,5", "1,2,-inf,5", "1,2,nan,5", "1,2,-0.5,5", "1,2,1e999,5"):
        assert movielens.parse_rating("csv", line) is None, line
    assert movielens.parse_rating("csv", "1,2,0,5") == (1, 2, 0.0, 5)  # a scale may start at 0
    fx = write_dataset(tmp_path / "v", "csv", n_users=4, n_movies=4)
    lines = (fx.path / "ratings.csv").read_text().splitlines()
    with open(fx.path / "ratings.csv", "a") as fh:
        fh.write("1,2,inf,5\n2,3,4.0,7\n1,3,-1,5\n")
    layout = movielens.detect_layout(sc, str(fx.path))
    ratings, counter = movielens.load_ratings(sc, layout)
    assert ratings.count() == len(fx.ratings) + 1 and counter.value == 2
    assert movielens.first_malformed(sc, layout) == (len(lines) + 1, "1,2,inf,5")  # 1-based, the header is line 1
    clean = write_dataset(tmp_path / "c", "csv", n_users=4, n_movies=4)
    assert movielens.first_malformed(sc, movielens.detect_layout(sc, str(clean.path))) is None


def test_binary_garbage_in_ratings_does_not_crash(sc, tmp_path):
    fx = write_dataset(tmp_path / "g", "csv", n_users=4, n_movies=4)
    with open(fx.path / "ratings.csv", "ab") as fh:
        fh.write(b"\xff\xfe\x00garbage\n1,1,\xe9,3\n")
    ratings, counter = movielens.load_ratings(sc, movielens.detect_layout(sc, str(fx.path)))
    assert ratings.count() == len(fx.ratings)
    assert counter.value == 2


def test_missing_dataset_is_a_one_line_error(sc, tmp_path):
    with pytest.raises(movielens.DatasetError) as err:
        movielens.detect_layout(sc, str(tmp_path / "nothing-here"))
    assert "\n" not in str(err.value) and "ratings.csv" in str(err.value)


def test_ratings_without_movies_file_is_an_error(sc, tmp_path):
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,1\n")
    with pytest.raises(movielens.DatasetError, match="no movies.csv"):
        movielens.detect_layout(sc, str(tmp_path))


def test_parse_rating_rejects_out_of_range_ids():
    assert movielens.parse_rating("csv", "1,2,3.5,4") == (1, 2, 3.5, 4)
    assert movielens.parse_rating("csv", "-1,2,3.5,4") is None
    assert movielens.parse_rating("csv", "1,2147483648,3.5,4") is None
    assert movielens.parse_rating("csv", "1,2,nan,4") is None


def test_fingerprint_changes_with_content(sc, tmp_path):
    fx = write_dataset(tmp_path / "f", "csv", n_users=3, n_movies=4)
    layout = movielens.detect_layout(sc, str(fx.path))
    before = movielens.fingerprint(sc, layout)
    assert before == movielens.fingerprint(sc, layout)
    with open(fx.path / "ratings.csv", "a") as fh:
        fh.write("3,1,2.0,5\n")
    assert movielens.fingerprint(sc, layout) != before


def _zip_of(folder_name: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(f"{folder_name}/ratings.csv", "userId,movieId,rating,timestamp\n1,1,4.0,1\n")
        zf.writestr(f"{folder_name}/movies.csv", "movieId,title,genres\n1,A (1999),Drama\n")
    return buf.getvalue()


def test_fetch_from_mirror_verifies_md5(tmp_path):
    mirror, dest = tmp_path / "mirror", tmp_path / "dest"
    mirror.mkdir()
    dest.mkdir()
    data = _zip_of("ml-1m")
    (mirror / "ml-1m.zip").write_bytes(data)
    (mirror / "ml-1m.zip.md5").write_text(f"MD5 (ml-1m.zip) = {hashlib.md5(data).hexdigest()}\n")
    target = fetch_mod.fetch("ml-1m", dest, str(mirror))
    assert (target / "ratings.csv").exists()
    # A second fetch finds the verified copy and does not need the mirror.
    (mirror / "ml-1m.zip").unlink()
    assert fetch_mod.fetch("ml-1m", dest, str(mirror)) == target


def test_fetch_refuses_a_zip_with_the_wrong_checksum(tmp_path):
    mirror, dest = tmp_path / "mirror", tmp_path / "dest"
    mirror.mkdir()
    dest.mkdir()
    (mirror / "ml-1m.zip").write_bytes(_zip_of("ml-1m"))
    (mirror / "ml-1m.zip.md5").write_text("0" * 32 + "  ml-1m.zip\n")
    with pytest.raises(fetch_mod.FetchError, match="refusing"):
        fetch_mod.fetch("ml-1m", dest, str(mirror))
    assert not (dest / "ml-1m").exists()


def test_fetch_cli_reports_unknown_names_in_one_line(capsys, tmp_path):
    assert fetch_mod.main(["ml-nope", "--dest", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown dataset" in err


def test_real_dataset_is_verified_and_complete(real_dataset):
    assert (real_dataset / ".verified").read_text().split()[1] == fetch_mod.KNOWN_SHA256["ml-latest-small"]
    with open(real_dataset / "ratings.csv") as fh:
        assert sum(1 for _ in fh) == 100_836 + 1
