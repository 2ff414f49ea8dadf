"""The EDA report, the synthetic-data generator and progress output."""

from __future__ import annotations

import io
import json
import threading
from collections import Counter

import eda
from datasets import movielens, synthetic
from progress import Progress, Ticker

PLOTS = {"rating_distribution.png", "genres.png", "ratings_per_month.png", "count_vs_mean.png", "long_tail.png"}


def test_eda_writes_every_plot_with_title_and_labelled_axes(sc, csv_fixture, tmp_path, monkeypatch):
    drawn = {}
    real_save = eda._save

    def inspecting_save(fig, path):
        drawn[path.name] = [(ax.get_title(), ax.get_xlabel(), ax.get_ylabel()) for ax in fig.axes
                            if ax.get_label() != "<colorbar>"]
        real_save(fig, path)

    monkeypatch.setattr(eda, "_save", inspecting_save)
    data = eda.aggregate(sc, str(csv_fixture.path))
    tune = {"table": [{"rank": r, "reg": g, "valid_rmse": 0.9 - r / 100 + g} for r in (4, 8) for g in (0.1, 0.2)],
            "chosen": {"rating": {"rank": 8, "reg": 0.1}}}
    made = eda.write_report(data, tmp_path / "report", "ml-fixture", tune)
    assert {name for name, _ in made} == PLOTS | {"tuning.png"} == set(drawn)
    for name, axes in drawn.items():
        assert axes, name
        for title, xlabel, _ylabel in axes:
            assert title and xlabel, (name, title, xlabel)
        assert axes[0][2], name  # the first panel always names its y axis
    for name in drawn:
        assert (tmp_path / "report" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    index = (tmp_path / "report" / "index.html").read_text()
    assert all(f'src="{name}"' in index for name in drawn) and "ml-fixture" in index
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary["ratings"] == f"{len(csv_fixture.ratings):,}" and summary["users"] == "60"


def test_genre_table_counts_each_genre_of_a_movie(sc, csv_fixture):
    table = {g: n for g, n, _ in eda.genre_table(eda.aggregate(sc, str(csv_fixture.path)))}
    per_movie = Counter(m for _, m, _ in csv_fixture.ratings)
    assert table["Crime"] == per_movie[2]
    assert table["Comedy"] == sum(per_movie[m] for m in csv_fixture.comedies)


def test_synthetic_data_is_movielens_shaped_and_loadable(sc, tmp_path):
    info = synthetic.generate(20_000, tmp_path / "syn", seed=3)
    assert info["ratings"] == 20_000
    layout = movielens.detect_layout(sc, str(tmp_path / "syn"))
    ratings, bad = movielens.load_ratings(sc, layout)
    rows = ratings.collect()
    assert len(rows) == 20_000 and bad.value == 0
    assert len({(u, m) for u, m, _ in rows}) == 20_000  # each pair once
    assert {r for _, _, r in rows} <= {x / 2 for x in range(1, 11)}
    for counts in (Counter(u for u, _, _ in rows), Counter(m for _, m, _ in rows)):
        top = sorted(counts.values(), reverse=True)[: len(counts) // 10]
        assert sum(top) > 0.2 * 20_000  # the busiest tenth holds over twice its share: a long tail
    movies = movielens.load_movies(sc, layout)
    assert len(movies) == info["movies"] and any(", The" in m.title for m in movies.values())
    assert all(m.genres for m in movies.values())


def test_synthetic_is_reproducible(tmp_path):
    synthetic.generate(3_000, tmp_path / "a", seed=9)
    synthetic.generate(3_000, tmp_path / "b", seed=9)
    assert (tmp_path / "a" / "ratings.csv").read_bytes() == (tmp_path / "b" / "ratings.csv").read_bytes()


def test_progress_prints_plain_lines_when_not_a_terminal():
    out = io.StringIO()
    progress = Progress("work", 100, " items", stream=out)
    for done in range(0, 101, 5):
        progress.update(done)
    progress.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 11 and lines[-1].startswith("work: 100% (100 of 100 items")


class _Terminal(io.StringIO):
    """A stream that says it is a terminal and tells when something was written to it."""

    def __init__(self):
        super().__init__()
        self.wrote = threading.Event()

    def isatty(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.wrote.set()
        return super().write(text)


def test_ticker_shows_a_running_phase_on_a_terminal_and_clears_its_line():
    terminal = _Terminal()
    ticker = Ticker("rating model: ALS", stream=terminal, every=0.01)
    assert terminal.wrote.wait(10)  # it ticks without being asked
    ticker.close()
    shown = terminal.getvalue()
    assert shown.startswith("\rrating model: ALS ") and " s\033[K" in shown
    assert shown.endswith("\r\033[K")  # the phase's log line takes the cleared line
    quiet = io.StringIO()  # not a terminal: nothing at all
    with Ticker("rating model: ALS", stream=quiet, every=0.01):
        pass
    assert quiet.getvalue() == ""
