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
    for label in page.query_selector_all("#filters > label, #filters .years > label"):  # each beside its control
        control = label.query_selector("input, select")
        assert abs(label.bounding_box()["y"] - control.bounding_box()["y"]) < 12, label.inner_text()
    assert page.is_visible("#genre summary")


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
    OUTPUT.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(OUTPUT / f"first-screen-{width}x{height}.png"))
    first = page.locator("#recommendations li").first.bounding_box()
    assert first is not None and first["y"] + first["height"] <= height  # in the first viewport
    n_rated = len(page_server.recommender.rated(1))
    assert page.locator("#rated li:visible").count() == 5
    assert page.inner_text("#rated-more") == f"show all {n_rated}"
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


WIDTHS = [(375, 667), (1280, 800)]
LOADED = '#recommendations[aria-busy="false"]'


def _no_overflow(page) -> None:
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


def _top(server, user: int, query: str = "") -> dict:
    status, body, _ = server.get(f"/{user}/ratings/top/10?min_count=25&explain=1{query}")
    assert status == 200, body
    return body


def _hidden(server, user: int) -> list[int]:
    status, body, _ = server.get(f"/{user}/hidden")
    assert status == 200, body
    return [m["movieId"] for m in body["hidden"]]


def _stars(rating: float) -> str:
    return f"{rating:g}★"  # as JavaScript writes a number: 4 and 4.5


@pytest.mark.parametrize("width,height", WIDTHS)
def test_each_recommendation_says_which_of_the_users_own_ratings_it_is_because_of(page_server, browser, width,
                                                                                 height):
    """User 1 rated many movies: each recommendation names up to three of them, with the user's ratings, as
    the API explains it, under its title and beside its "Not interested"."""
    page = browser.new_page(viewport={"width": width, "height": height})
    asked = []
    page.on("request", lambda r: asked.append(r.url) if "/ratings/top/" in r.url else None)
    _open(page, page_server.port)
    page.wait_for_selector(f"{LOADED} li")
    rated = {m.movie_id: (m.title, r) for m, r in page_server.recommender.rated(1)}
    expected = _top(page_server, 1)["movies"]
    items = page.locator("#recommendations li")
    assert items.count() == len(expected) == 10 and asked and all("explain=1" in url for url in asked)
    for i, movie in enumerate(expected):
        item = items.nth(i)
        assert int(item.get_attribute("data-movie-id")) == movie["movieId"] and movie["movieId"] not in rated
        ids = [int(m) for m in item.get_attribute("data-because").split(",")]
        assert 1 <= len(ids) <= 3 and set(ids) <= set(rated)  # the user's own ratings
        assert ids == [reason["movieId"] for reason in movie["because"]]
        reasons = ", ".join(f"{rated[m][0]} ({_stars(rated[m][1])})" for m in ids)
        assert item.locator(".because").inner_text() == f"Because you rated {reasons}"
        row, title, because, hide = (item.locator(s).bounding_box() for s in (".row", ".movie-link", ".because",
                                                                               ".not-interested"))
        assert because["y"] >= title["y"] + title["height"] - 1  # under the title
        assert hide["x"] >= title["x"] + title["width"] - 1 and abs(hide["y"] - title["y"]) < 12  # beside it,
        assert hide["x"] + hide["width"] <= row["x"] + row["width"] + 1  # at the right, above the reasons
        assert because["y"] >= hide["y"] + hide["height"] - 1 and because["width"] > row["width"] * 0.9
    assert page.is_hidden("#fallback") and page.is_hidden("#error")
    _no_overflow(page)
    OUTPUT.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(OUTPUT / f"because-{width}.png"), full_page=True)
    page.close()


@pytest.mark.parametrize("width,height,user", [(375, 667, 2), (1280, 800, 3)])
def test_not_interested_takes_a_movie_out_of_the_list_for_good_until_shown_again(page_server, browser, width,
                                                                                 height, user):
    page = browser.new_page(viewport={"width": width, "height": height})
    _open(page, page_server.port, user=user)
    page.wait_for_selector(f"{LOADED} li")
    assert page.is_hidden("#hidden-panel") and _hidden(page_server, user) == []
    before = [m for m, _ in _shown(page)]
    movie = before[1]
    page.click(f'#recommendations li[data-movie-id="{movie}"] .not-interested')
    gone = ("m => { const ids = [...document.querySelectorAll('#recommendations li')].map(li => Number(li.dataset"
            ".movieId)); return ids.length === 10 && !ids.includes(m); }")
    page.wait_for_function(gone, arg=movie)
    after = [m for m, _ in _shown(page)]
    assert [m for m in after if m in before] == [m for m in before if m != movie]  # the rest as they were
    assert _hidden(page_server, user) == [movie] and movie not in [m["movieId"] for m in _top(page_server,
                                                                                               user)["movies"]]
    assert page.inner_text("#hidden-panel summary") == "Not interested (1)"
    _no_overflow(page)
    similar = []  # a movie's similar movies leave out the hidden one too: they are asked for this user
    page.on("request", lambda r: similar.append(r.url) if "/similar" in r.url else None)
    page.click("#recommendations li:first-child .movie-link")
    page.wait_for_selector("#detail[open] #similar li")
    assert similar and all(f"user={user}" in url for url in similar)
    assert movie not in [int(m) for m in page.eval_on_selector_all(
        "#similar li .movie-link", "links => links.map(a => a.dataset.movieId)")]
    page.click("#detail-close")
    page.wait_for_selector("#detail:not([open])", state="attached")

    page.reload()  # it does not come back
    page.wait_for_selector(f'#hidden li[data-movie-id="{movie}"]', state="attached")
    page.wait_for_selector(f"{LOADED} li")
    assert movie not in [m for m, _ in _shown(page)] and len(_shown(page)) == 10
    page.click("#hidden-panel summary")
    page.wait_for_selector(f'#hidden li[data-movie-id="{movie}"] .show-again')
    assert page.inner_text(f'#hidden li[data-movie-id="{movie}"] .movie-link') == \
        page_server.recommender.movie(movie)[0].title
    _no_overflow(page)
    OUTPUT.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(OUTPUT / f"not-interested-{width}.png"), full_page=True)

    page.click(f'#hidden li[data-movie-id="{movie}"] .show-again')
    page.wait_for_selector("#hidden-panel[hidden]", state="attached")
    page.wait_for_function("m => Number(document.querySelector('#recommendations li:nth-child(2)')"
                           "?.dataset.movieId) === m", arg=movie)  # back where it was
    assert [m for m, _ in _shown(page)] == before and _hidden(page_server, user) == []
    assert page.is_hidden("#error")
    page.close()


def _check_filtered(page, server, genres: set[str], exclude: str | None, years: tuple[int, int] | None) -> None:
    """Every movie shown is of one of ``genres``, not of ``exclude``, from the first of ``years`` to the last;
    the list is the API's for those filters (fewer than 10 when fewer movies pass)."""
    catalogue = server.recommender.current().catalogue
    year = f"{years[0]}-{years[1]}" if years else ""
    query = "".join(f"&{name}={value}" for name, value in (
        ("genre", "%7C".join(sorted(genres))), ("exclude_genre", exclude or ""), ("year", year)) if value)
    first, last = years or (0, 9999)
    expected = [m["movieId"] for m in _top(server, 1, query)["movies"]]
    shown = page.locator("#recommendations li")
    assert shown.count() >= 1 and [m for m, _ in _shown(page)] == expected
    for i in range(shown.count()):
        item = shown.nth(i)
        movie = int(item.get_attribute("data-movie-id"))
        row = catalogue.row(movie)
        assert set(item.get_attribute("data-genres").split("|")) == set(catalogue.genres[row])
        assert not genres or genres & set(catalogue.genres[row]), catalogue.titles[row]
        assert exclude not in catalogue.genres[row], catalogue.titles[row]
        assert first <= catalogue.years[row] <= last, catalogue.titles[row]


def _wait_for_filters(page, genre: str = "", exclude: str = "", year: str = "") -> None:
    page.wait_for_selector(f'{LOADED}[data-genre="{genre}"][data-exclude-genre="{exclude}"][data-year="{year}"] li')


@pytest.mark.parametrize("width,height", WIDTHS)
def test_two_genres_a_genre_left_out_and_a_range_of_years_filter_every_movie_shown(page_server, browser, width,
                                                                                  height):
    page = browser.new_page(viewport={"width": width, "height": height})
    _open(page, page_server.port)
    _wait_for_filters(page)
    unfiltered = [m for m, _ in _shown(page)]
    page.click("#genre summary")
    page.check('#genre input[value="Comedy"]')
    page.check('#genre input[value="Romance"]')
    _wait_for_filters(page, "Comedy|Romance")
    assert page.inner_text("#genre-picked") == "Comedy, Romance"
    _no_overflow(page)  # the open panel too
    OUTPUT.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(OUTPUT / f"genres-{width}.png"))
    page.click("#recommend-panel h2")  # a click elsewhere closes the panel
    page.wait_for_selector("#genre:not([open])", state="attached")
    _check_filtered(page, page_server, {"Comedy", "Romance"}, None, None)
    assert len(_shown(page)) == 10

    page.select_option("#exclude-genre", "Drama")
    page.fill("#year-from", "1990")
    page.dispatch_event("#year-from", "change")
    page.fill("#year-to", "1999")
    page.dispatch_event("#year-to", "change")
    _wait_for_filters(page, "Comedy|Romance", "Drama", "1990-1999")
    _check_filtered(page, page_server, {"Comedy", "Romance"}, "Drama", (1990, 1999))
    assert len(_shown(page)) == 10 and [m for m, _ in _shown(page)] != unfiltered
    assert page.locator("#recommendations li .because").count() == 10
    _check_layout(page)
    page.screenshot(path=str(OUTPUT / f"filters-{width}.png"), full_page=True)

    page.fill("#year-to", "")  # from 1990 on
    page.dispatch_event("#year-to", "change")
    _wait_for_filters(page, "Comedy|Romance", "Drama", "1990-9999")
    _check_filtered(page, page_server, {"Comedy", "Romance"}, "Drama", (1990, 9999))
    page.fill("#year-from", "")  # up to 1985
    page.fill("#year-to", "1985")
    page.dispatch_event("#year-to", "change")
    _wait_for_filters(page, "Comedy|Romance", "Drama", "1000-1985")
    _check_filtered(page, page_server, {"Comedy", "Romance"}, "Drama", (1000, 1985))
    page.fill("#year-from", "1985")  # one year
    page.dispatch_event("#year-from", "change")
    page.select_option("#exclude-genre", "")
    _wait_for_filters(page, "Comedy|Romance", "", "1985-1985")
    _check_filtered(page, page_server, {"Comedy", "Romance"}, None, (1985, 1985))

    page.fill("#year-to", "85")
    page.dispatch_event("#year-to", "change")
    page.wait_for_selector("#error:not([hidden])")
    assert "four digits" in page.inner_text("#error") and _shown(page) == []
    page.fill("#year-from", "")
    page.fill("#year-to", "")
    page.dispatch_event("#year-to", "change")
    _wait_for_filters(page, "Comedy|Romance")
    assert page.is_hidden("#error")
    page.click("#genre summary")
    page.uncheck('#genre input[value="Comedy"]')
    page.uncheck('#genre input[value="Romance"]')
    _wait_for_filters(page)
    assert page.inner_text("#genre-picked") == "any" and [m for m, _ in _shown(page)] == unfiltered
    page.close()


@pytest.mark.parametrize("width,height", WIDTHS)
def test_forget_me_asks_first_and_then_deletes_the_users_ratings_and_hidden_movies(page_server, browser, width,
                                                                                   height):
    """A new user rates three movies and hides one; Cancel or Escape in the dialog change nothing; Forget
    empties their ratings and hidden movies, and their list is the most-rated movies again."""
    page = browser.new_page(viewport={"width": width, "height": height})
    deletes = []
    page.on("request", lambda r: deletes.append(r.url) if r.method == "DELETE" else None)
    _open(page, page_server.port, user=None)
    page.click("#new-user")
    page.wait_for_selector("#fallback:not([hidden])")
    user = int(page.input_value("#user"))
    rated = _rate_all_results(page, "Toy Story", 3)
    page.wait_for_selector("#fallback[hidden]", state="attached")
    page.wait_for_function("() => document.querySelectorAll('#rated li').length === 3")
    page.wait_for_selector(f"{LOADED} li[data-because]")
    hidden = int(page.get_attribute("#recommendations li:first-child", "data-movie-id"))
    page.click("#recommendations li:first-child .not-interested")
    page.wait_for_selector(f'#hidden li[data-movie-id="{hidden}"]', state="attached")

    def unchanged():
        page.click("#filters button[type=submit]")  # a round trip after the dialog closed
        page.wait_for_selector(f"{LOADED} li[data-because]")
        assert deletes == [] and page.inner_text("#forgotten") == ""
        assert sorted(m.movie_id for m, _ in page_server.recommender.rated(user)) == sorted(rated)
        assert _hidden(page_server, user) == [hidden] and page.locator("#rated li").count() == 3

    page.click("#forget")
    page.wait_for_selector("#forget-dialog[open]")
    assert page.inner_text("#forget-title") == f"Forget user {user}?"
    assert "All your ratings and hidden movies are deleted" in page.inner_text("#forget-text")
    assert page.evaluate("document.activeElement.id") == "forget-cancel"  # the safe answer first
    _check_in_view(page, "#forget-dialog")
    _no_overflow(page)
    OUTPUT.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(OUTPUT / f"forget-dialog-{width}.png"))
    page.click("#forget-cancel")
    page.wait_for_selector("#forget-dialog:not([open])", state="attached")
    unchanged()
    page.click("#forget")
    page.wait_for_selector("#forget-dialog[open]")
    page.keyboard.press("Escape")
    page.wait_for_selector("#forget-dialog:not([open])", state="attached")
    unchanged()

    page.click("#forget")
    page.wait_for_selector("#forget-dialog[open]")
    page.click("#forget-confirm")
    page.wait_for_function("() => document.querySelector('#forgotten').textContent !== ''")
    assert page.inner_text("#forgotten") == "Forgotten: 3 posted ratings deleted, 0 dataset ratings excluded."
    assert deletes == [f"http://127.0.0.1:{page_server.port}/{user}/ratings"]
    page.wait_for_selector("#fallback:not([hidden])")
    page.wait_for_selector("#hidden-panel[hidden]", state="attached")
    page.wait_for_function("() => !document.querySelector('#rated li')")
    assert page_server.recommender.rated(user) == [] and _hidden(page_server, user) == []
    popular = _top(page_server, user)
    assert popular["fallback"] == "popular"
    assert [m for m, _ in _shown(page)] == [m["movieId"] for m in popular["movies"]]
    assert page.locator("#recommendations li .because").count() == 0 and page.is_hidden("#error")
    _no_overflow(page)
    page.screenshot(path=str(OUTPUT / f"forgotten-{width}.png"), full_page=True)
    page.close()
