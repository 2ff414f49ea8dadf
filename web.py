"""The web page for people: search, rate, and see recommendations, on top of the JSON API.

A blueprint of its own; the page is static HTML and JavaScript served by the
app (no external CDN), and everything it shows comes from the JSON API.
"""

from __future__ import annotations

from flask import Blueprint, current_app, render_template, send_from_directory
from markupsafe import escape

from datasets.movielens import dataset_name
from serving.errors import Unavailable

web_bp = Blueprint("web", __name__, template_folder="templates", static_folder="static",
                   static_url_path="/static")

STARTING = ("<!doctype html><meta charset=utf-8><meta http-equiv=refresh content=5><title>Movie recommender</title>"
            "<p>The recommender is starting: {}. This page reloads itself.</p>")


@web_bp.get("/")
def index():
    try:
        served = current_app.extensions["recommender"].current()
    except Unavailable as exc:
        return STARTING.format(escape(exc.message)), 503, {"Content-Type": "text/html; charset=utf-8"}
    return render_template("index.html", genres=served.catalogue.genre_names, scale=served.scale,
                           years=title_years(served.catalogue.years),
                           dataset=dataset_name(served.version.meta.get("dataset", "")))


def title_years(years) -> tuple[int, int]:
    """The first and last year in the catalogue's titles (0, a title without a year, left out), for the
    page's year inputs; this century when no title has one."""
    dated = years[years > 0]
    return (int(dated.min()), int(dated.max())) if len(dated) else (1900, 2100)


@web_bp.get("/status")
def status():
    """The operators' page: it draws /status.json (asking for the admin token when the service has one)."""
    return render_template("status.html")


@web_bp.get("/favicon.ico")
def favicon():
    """Browsers ask for /favicon.ico on their own; answer with the page's icon instead of a 404."""
    return send_from_directory(web_bp.static_folder, "favicon.svg", mimetype="image/svg+xml")
