"""The web page in a real headless Chromium against a live server on ml-latest-small."""

from __future__ import annotations

import shutil

import pytest
from conftest import ROOT, copy_model, serving

from model import ModelParams

OUTPUT = ROOT / "test-output" / "browser"
CHROMIUM_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def page_server(sc, real_dataset, real_model, tmp_path_factory):
    model_dir = copy_model(real_model, tmp_path_factory.mktemp("page") / "model")
    with serving(sc, real_dataset, model_dir, ModelParams()) as server:
        assert server.engine.model_source == "loaded"
        yield server


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        pytest.fail("the browser test needs Chromium: apt-get install chromium (make test does it as root)")
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


def _rate_all_results(page, query: str, limit: int) -> list[int]:
    page.fill("#search", query)
    page.click("#search-form button[type=submit]")
    page.wait_for_selector(f'#results[data-query="{query}"] li[data-movie-id]')  # this search's results
    rated = []
    for item in page.query_selector_all("#results li[data-movie-id]")[:limit]:
        item.query_selector("select.stars").select_option("4.5")
        item.query_selector("button.rate").click()
        item.wait_for_selector(".saved")
        rated.append(int(item.get_attribute("data-movie-id")))
    return rated


def _shown(page) -> list[tuple[int, int]]:
    return [(int(li.get_attribute("data-movie-id")), int(li.get_attribute("data-ratings-count")))
            for li in page.query_selector_all("#recommendations li")]


def test_rate_five_movies_and_get_recommendations(page_server, browser):
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.goto(f"http://127.0.0.1:{page_server.port}/")
    page.click("#new-user")
    user = int(page.input_value("#user"))
    page.wait_for_selector("#fallback:not([hidden])")  # a brand-new user starts with popular movies

    rated = _rate_all_results(page, "Toy Story", 3)
    rated += _rate_all_results(page, "Shrek", 2)
    assert len(rated) == 5 and 1 in rated  # Toy Story (1995) is movie 1
    assert sorted(r["movieId"] for r in page_server.engine.rated(user)) == sorted(rated)

    page.wait_for_selector("#fallback[hidden]", state="attached")
    # Each rating refreshes the list; wait for the refresh that follows the last one.
    page.wait_for_function("rated => { const ids = [...document.querySelectorAll('#recommendations li')]"
                           ".map(li => Number(li.dataset.movieId)); "
                           "return ids.length === 10 && !ids.some(id => rated.includes(id)); }", arg=rated)
    shown = _shown(page)
    assert len(shown) == 10 and not {m for m, _ in shown} & set(rated)
    assert all(count >= 25 for _, count in shown)

    page.fill("#min-count", "150")
    page.dispatch_event("#min-count", "change")
    page.wait_for_selector('#recommendations[data-min-count="150"] li')
    shown = _shown(page)
    assert len(shown) == 10 and all(count >= 150 for _, count in shown)
    assert not {m for m, _ in shown} & set(rated)

    page.click("#recommendations li:first-child .movie-link")
    page.wait_for_selector("#detail:not([hidden]) #similar li")
    assert "Predicted for you" in page.inner_text("#detail-info")

    OUTPUT.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(OUTPUT / "recommendations.png"), full_page=True)
    assert (OUTPUT / "recommendations.png").stat().st_size > 10_000
    page.close()


def test_api_errors_are_shown_to_the_person(page_server, browser):
    page = browser.new_page()
    page.goto(f"http://127.0.0.1:{page_server.port}/")
    page.fill("#user", "-5")
    page.dispatch_event("#user", "change")
    page.wait_for_selector("#error:not([hidden])")
    assert "user id must be a whole number" in page.inner_text("#error")
    page.fill("#user", "1")
    page.fill("#min-count", "")
    page.dispatch_event("#min-count", "change")
    page.wait_for_function("() => document.querySelector('#error').textContent.includes('min_count must be')")
    page.close()
