"""The web page in a real headless Chromium against a live server on ml-latest-small."""

from __future__ import annotations

import shutil

import pytest
from conftest import ROOT, copy_model, serving

OUTPUT = ROOT / "test-output" / "browser"
CHROMIUM_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def page_server(real_model, tmp_path_factory):
    model_dir = copy_model(real_model, tmp_path_factory.mktemp("page") / "model")
    with serving(model_dir) as server:
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


def _open(page, port: int, user: int | None = 1) -> None:
    """Open the page as a browser that remembers ``user`` (None: a first visit, on the start screen)."""
    if user is not None:
        page.add_init_script(f"localStorage.setItem('recommender-user', '{user}')")
    page.goto(f"http://127.0.0.1:{port}/")


def _rate_all_results(page, query: str, limit: int) -> list[int]:
    page.fill("#search", query)
    page.click("#search-form button[type=submit]")
    page.wait_for_selector(f'#results[data-query="{query}"] li[data-movie-id]')  # this search's results
    rated = []
    for item in page.query_selector_all("#results li[data-movie-id]")[:limit]:
        item.query_selector('.stars .star[data-value="4.5"]').click()  # the left half of the fifth star
        item.wait_for_selector(".saved")
        rated.append(int(item.get_attribute("data-movie-id")))
    return rated


def _shown(page) -> list[tuple[int, int]]:
    return [(int(li.get_attribute("data-movie-id")), int(li.get_attribute("data-ratings-count")))
            for li in page.query_selector_all("#recommendations li")]


def test_rate_five_movies_and_get_recommendations(page_server, browser):
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    _open(page, page_server.port, user=None)
    assert page.is_visible("#start") and page.is_hidden("main")  # no default user: who are you?
    page.click("#new-user")
    page.wait_for_selector("#fallback:not([hidden])")  # a brand-new user starts with popular movies
    user = int(page.input_value("#user"))
    assert user > int(page_server.recommender.current().histories.users.max())  # the next free id
    assert page.evaluate("localStorage.getItem('recommender-user')") == str(user) and page.is_hidden("#start")

    rated = _rate_all_results(page, "Toy Story", 3)
    rated += _rate_all_results(page, "Shrek", 2)
    assert len(rated) == 5 and 1 in rated  # Toy Story (1995) is movie 1
    assert sorted(m.movie_id for m, _ in page_server.recommender.rated(user)) == sorted(rated)

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
    assert not page.is_visible("#empty-reason")

    page.fill("#min-count", "100000")  # above every movie's count: the page says why the list is empty
    page.dispatch_event("#min-count", "change")
    page.wait_for_selector('#recommendations[data-min-count="100000"]', state="attached")
    assert _shown(page) == [] and "the most-rated has 329" in page.inner_text("#empty-reason")
    page.fill("#min-count", "150")
    page.dispatch_event("#min-count", "change")
    page.wait_for_selector('#recommendations[data-min-count="150"] li')

    _check_layout(page)
    page.wait_for_function("() => document.querySelector('#status').textContent.startsWith('Model version')")
    OUTPUT.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(OUTPUT / "recommendations-1280.png"))

    page.click("#recommendations li:first-child .movie-link")
    page.wait_for_selector("#detail[open] #similar li")
    assert "Predicted for you" in page.inner_text("#detail-info")
    _check_in_view(page, "#detail")
    page.screenshot(path=str(OUTPUT / "detail-1280.png"))
    page.click("#detail-close")
    page.wait_for_selector("#detail:not([open])", state="attached")

    page.set_viewport_size({"width": 390, "height": 844})  # a phone
    _check_layout(page)
    page.screenshot(path=str(OUTPUT / "recommendations-phone.png"), full_page=True)
    page.click("#recommendations li:nth-child(3) .movie-link")
    page.wait_for_selector("#detail[open] #similar li")
    _check_in_view(page, "#detail")
    page.screenshot(path=str(OUTPUT / "detail-phone.png"))
    page.close()


def _check_layout(page) -> None:
    """Nothing wider than the screen; each result's stars on one line, beside its title."""
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    for item in page.query_selector_all("#results li[data-movie-id]"):
        title, stars = (item.query_selector(s).bounding_box() for s in (".title", ".stars"))
        first, last = (item.query_selector(f".star:{s}-child").bounding_box() for s in ("first", "last"))
        assert abs(first["y"] - last["y"]) < 3 and stars["x"] >= title["x"] + title["width"] - 1
    label, genre = page.query_selector("#genre").evaluate_handle("e => e.parentElement"), page.query_selector("#genre")
    assert abs(label.bounding_box()["y"] - genre.bounding_box()["y"]) < 12  # "Genre" beside its dropdown


def _check_in_view(page, selector: str) -> None:
    box, view = page.query_selector(selector).bounding_box(), page.viewport_size
    assert box["y"] >= 0 and box["y"] + box["height"] <= view["height"] and box["x"] >= 0
    assert box["x"] + box["width"] <= view["width"]


def test_counts_are_singular_or_plural_and_the_favicon_is_served(page_server, browser):
    served = page_server.recommender.current()
    once = next(t for t, c in zip(served.catalogue.titles, served.counts) if c == 1 and "(" in t)
    page = browser.new_page()
    missing = []
    page.on("response", lambda r: missing.append(r.url) if r.status == 404 else None)
    _open(page, page_server.port)
    page.fill("#search", once)
    page.click("#search-form button[type=submit]")
    page.wait_for_selector("#results li[data-movie-id]")
    text = page.inner_text("#results")
    assert "(1 rating)" in text and "(1 ratings)" not in text
    assert page.evaluate("fetch('/favicon.ico').then(r => r.status)") == 200
    assert missing == []
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


def test_the_page_asks_for_the_users_token_once_and_sends_it(page_server, browser):
    """A visitor gives their own token (issued by the operator), not the admin token."""
    from conftest import LiveServer

    guarded = LiveServer(page_server.recommender, api_token="s3cret")
    try:
        token = guarded.call("POST", "/admin/users/1/token", headers={"Authorization": "Bearer s3cret"})[1]["token"]
        page = browser.new_page()
        prompts = []

        def answer(dialog):
            prompts.append(dialog.message)
            dialog.accept(token)

        page.on("dialog", answer)
        _open(page, guarded.port)
        page.wait_for_selector("#recommendations li")  # the user's list loads once the token is given
        rated = _rate_all_results(page, "Heat", 1)
        assert len(prompts) == 1 and "your user token" in prompts[0]
        assert rated[0] in {m.movie_id for m, _ in page_server.recommender.rated(1)}
        page.close()
    finally:
        guarded.stop()


def test_the_status_page_draws_versions_and_live_rmse(page_server, browser):
    assert page_server.post_json("/6500/ratings", [{"movieId": 1, "rating": 4.0}])[0] == 201
    page = browser.new_page()
    page.goto(f"http://127.0.0.1:{page_server.port}/status")
    page.wait_for_selector("#versions tbody tr.serving")
    roles = page.inner_text("#versions tbody tr.serving .roles")
    assert "newest" in roles and "loaded here" in roles and "pinned" not in roles
    assert page.locator("#live-chart rect.bar.serving").count() == 1
    serving = page.inner_text("#serving")
    assert serving.startswith("Serving version 1, the newest, to everyone.") and "Version 1, trained" in serving
    assert "No experiment yet" in page.inner_text("#experiments") and page.is_hidden("#error")
    page.close()


def _js_fixed(x: float, digits: int, sign: bool = False) -> str:
    """What the page shows for ``x``: toFixed, with a + before a positive difference."""
    return ("+" if sign and x > 0 else "") + f"{x:.{digits}f}"


def _with_interval(x: float, interval: list[float], digits: int = 4, sign: bool = False) -> str:
    low, high = (_js_fixed(v, digits, sign) for v in interval)
    return f"{_js_fixed(x, digits, sign)} [{low}, {high}]"


def test_the_status_page_shows_an_experiment_arm_by_arm_and_what_its_stop_promoted(page_server, browser):
    """While an experiment runs the page says which arm serves which version to how many users, marks the
    version's arms, and puts the arms side by side (control first) with their figures, intervals and
    differences from the control, as the API reports them; once stopped it says when and what was promoted.
    The fixture keeps one version, so both arms serve it."""
    name, pair = "browser-ab", ("control", "candidate")
    body = {"name": name, "arms": {arm: {"version": 1} for arm in pair}, "traffic": {arm: 50 for arm in pair}}
    status, report, _ = page_server.post_json("/admin/experiments", body)
    assert status == 201, report
    try:
        for user in range(6700, 6740):  # each user: a rating, a list, a rating it may have been shown
            assert page_server.post_json(f"/{user}/ratings", [{"movieId": 1, "rating": 3.0}])[0] == 201
            assert page_server.get(f"/{user}/ratings/top/10")[0] == 200
            assert page_server.post_json(f"/{user}/ratings", [{"movieId": 50, "rating": 4.5}])[0] == 201
        report = page_server.get(f"/admin/experiments/{name}")[1]
        assert all(report["arms"][arm]["posted"] >= 4 for arm in pair)  # figures with intervals in both arms

        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(f"http://127.0.0.1:{page_server.port}/status")
        block = page.locator(f'#experiments .experiment.running[data-name="{name}"]')
        block.locator("table.arms tbody tr").first.wait_for(timeout=10_000)
        assert page.inner_text("#serving").startswith(
            f"Serving experiment {name} (arm candidate: version 1 to 50% of users; arm control: version 1 to 50% "
            "of users); answers for no user in particular from version 1, the newest.")
        roles = page.inner_text('#versions tr[data-version="1"] .roles')
        assert all(role in roles for role in (f"{name}: arm candidate", f"{name}: arm control", "newest",
                                              "loaded here"))
        assert page.locator("#live-chart rect.bar.serving").count() == 1

        assert block.locator("h3").inner_text() == f"{name} (running)"
        assert f"Running since {report['started_at']}; control arm control." in block.inner_text()
        assert block.locator("thead th").all_inner_texts() == ["arm", "control (control)", "candidate"]

        def cells(figure: str) -> list[str]:
            return block.locator(f'tbody tr[data-figure="{figure}"] td').all_inner_texts()

        arms = [report["arms"][arm] for arm in pair]
        assert cells("version") == ["1", "1"] and cells("traffic") == ["50%", "50%"]
        for figure in ("users", "lists", "posted"):
            assert cells(figure) == [str(a[figure]) for a in arms], figure
        assert cells("rmse") == [_with_interval(a["rmse"], a["rmse_interval"]) for a in arms]
        assert cells("mae") == [_with_interval(a["mae"], a["mae_interval"]) for a in arms]
        assert cells("hit_rate") == [_with_interval(a["hit_rate"], a["hit_rate_interval"], 3) +
                                     f" ({a['hits']} of {a['liked']})" for a in arms]
        difference = report["difference"]["candidate"]
        for figure, digits in (("rmse", 4), ("mae", 4), ("hit_rate", 3)):
            assert cells(f"{figure}_difference") == [
                "(control)", _with_interval(difference[figure], difference[f"{figure}_interval"], digits, True)]
        OUTPUT.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(OUTPUT / "status-experiment-1280.png"), full_page=True)
        page.set_viewport_size({"width": 390, "height": 844})  # a phone: wide tables scroll in their box
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        page.screenshot(path=str(OUTPUT / "status-experiment-phone.png"), full_page=True)
        page.set_viewport_size({"width": 1280, "height": 1000})

        status, stopped, _ = page_server.post_json(f"/admin/experiments/{name}/stop", {"promote": "candidate"})
        assert status == 200 and stopped["outcome"] == {"promoted": "candidate", "pinned": 1}, stopped
        page.reload()
        block = page.locator(f'#experiments .experiment[data-name="{name}"]:not(.running)')
        block.locator("table.arms").wait_for(timeout=10_000)
        assert block.locator(".when").inner_text() == (
            f"Stopped {stopped['stopped_at']} (started {stopped['started_at']}); promoted arm candidate: "
            "version 1 pinned, its parameters the dataset's.")
        assert block.locator("h3").inner_text() == name and page.locator(".experiment.running").count() == 0
        assert page.inner_text("#serving").startswith("Serving version 1, pinned (also the newest), to everyone.")
        assert "pinned" in page.inner_text('#versions tr[data-version="1"] .roles')
        assert "arm" not in page.inner_text('#versions tr[data-version="1"] .roles')
        assert page.is_hidden("#error")
        page.close()
    finally:  # the later tests serve the newest to everyone again
        page_server.post_json(f"/admin/experiments/{name}/stop", {})  # 409 once stopped
        assert page_server.post_json("/admin/serve", {"version": "newest"})[0] == 200


@pytest.mark.parametrize("width,height", [(375, 667), (1280, 800)])
def test_the_recommendations_are_in_the_first_screen_and_a_bad_user_clears_the_lists(page_server, browser,
                                                                                      width, height):
    """On a phone and on a desktop: the recommendations are visible without scrolling, the user's own
    ratings collapse to five with "show all", and a bad user id shows its error with nobody's lists."""
    page = browser.new_page(viewport={"width": width, "height": height})
    _open(page, page_server.port)
    page.wait_for_selector("#recommendations li")
    page.wait_for_selector("#rated-more:not([hidden])")
    first = page.locator("#recommendations li").first.bounding_box()
    assert first is not None and first["y"] + first["height"] <= height  # in the first viewport
    n_rated = len(page_server.recommender.rated(1))
    assert page.locator("#rated li:visible").count() == 5
    assert page.inner_text("#rated-more") == f"show all {n_rated}"
    OUTPUT.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(OUTPUT / f"first-screen-{width}x{height}.png"))
    page.click("#rated-more")
    page.wait_for_function(f"() => document.querySelectorAll('#rated li:not([hidden])').length === {n_rated}")
    page.fill("#user", "-1")
    page.dispatch_event("#user", "change")
    page.wait_for_selector("#error:not([hidden])")
    page.wait_for_function("() => !document.querySelector('#recommendations li, #rated li')")
    assert "user id" in page.inner_text("#error")
    page.close()


def test_the_status_page_asks_for_the_admin_token_and_the_peoples_page_never_gets_it(page_server, browser):
    from conftest import LiveServer

    guarded = LiveServer(page_server.recommender, api_token="admin-s3cret")
    try:
        page = browser.new_page()
        prompts = []

        def answer(dialog):
            prompts.append(dialog.message)
            dialog.accept("admin-s3cret" if "admin token" in dialog.message else "")

        page.on("dialog", answer)
        page.goto(f"http://127.0.0.1:{guarded.port}/status")
        page.wait_for_selector("#versions tbody tr.serving")
        page.add_init_script("localStorage.setItem('recommender-user', '1')")
        page.goto(f"http://127.0.0.1:{guarded.port}/")  # the same tab: its user token is asked for, not reused
        page.wait_for_selector("#error:not([hidden])")
        assert "admin token" in prompts[0] and len(prompts) >= 2
        assert all("your user token" in p for p in prompts[1:])  # the admin token was not sent from here
        page.close()
    finally:
        guarded.stop()


def test_stars_work_from_the_keyboard_lists_say_they_are_loading_and_every_title_opens_similar_movies(
        page_server, browser):
    """A person who rates with the keyboard sees where the focus is and which rating the stars show;
    a list that is loading says so; every title on the page opens the movie with its similar movies."""
    user = 6602
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    held = []
    page.route("**/ratings/top/**", lambda route: held.append(route))  # the list's answer waits here
    with page.expect_request("**/ratings/top/**"):
        _open(page, page_server.port, user=user)
    assert page.evaluate("getComputedStyle(document.querySelector('#recommendations'), '::before').content") \
        == '"Loading…"' and page.get_attribute("#recommendations", "aria-busy") == "true"
    held[0].continue_()
    page.unroute("**/ratings/top/**")
    page.wait_for_selector('#recommendations[aria-busy="false"] li')

    page.fill("#search", "Heat")
    page.press("#search", "Enter")
    page.wait_for_selector('#results[data-query="Heat"] li[data-movie-id]')
    item = page.locator("#results li[data-movie-id]").first
    movie = int(item.get_attribute("data-movie-id"))
    page.focus("#search")
    page.keyboard.press("Tab")  # the search button
    page.keyboard.press("Tab")  # the first result's title
    page.keyboard.press("Tab")  # its stars: one stop for the row, on 4 stars
    assert page.evaluate("document.activeElement.dataset.value") == "4"
    outline = page.evaluate("(s => [s.outlineStyle, s.outlineWidth])(getComputedStyle(document.activeElement))")
    assert outline[0] != "none" and outline[1] == "3px"  # where the keyboard is shows
    for key in ("ArrowRight", "ArrowLeft", "ArrowLeft"):
        page.keyboard.press(key)
    assert page.evaluate("document.activeElement.dataset.value") == "3.5"
    assert item.locator(".star.on").count() == 7  # 0.5 to 3.5: seven half stars lit
    page.keyboard.press("Enter")
    item.locator(".saved").wait_for()
    assert [r for m, r in page_server.recommender.rated(user) if m.movie_id == movie] == [3.5]
    assert item.locator(".stars").get_attribute("data-rating") == "3.5"

    page.wait_for_selector(f'#rated li[data-movie-id="{movie}"]')
    assert page.evaluate("[...document.querySelectorAll('#results li[data-movie-id], #rated li, "
                         "#recommendations li')].every(li => li.querySelector('button.movie-link'))")
    page.click(f'#rated li[data-movie-id="{movie}"] .movie-link')  # a title among the user's own ratings
    page.wait_for_selector("#detail[open] #similar li")
    assert "you rated it 3.5" in page.inner_text("#detail-info")
    assert page.evaluate("[...document.querySelectorAll('#similar li')].every(li => li.querySelector('.movie-link'))")
    neighbour = page.inner_text("#similar li:first-child .movie-link")
    page.click("#similar li:first-child .movie-link")  # and on from a similar movie to its own neighbours
    page.wait_for_function("t => document.querySelector('#detail-title').textContent === t", arg=neighbour)
    page.close()
