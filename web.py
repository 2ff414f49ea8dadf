"""The web page for people: search, rate, and see recommendations, on top of the JSON API.

A blueprint of its own; the page is static HTML and JavaScript served by the
app (no external CDN), and everything it shows comes from the JSON API.
"""

from __future__ import annotations

from flask import Blueprint, current_app, render_template, send_from_directory

from datasets.movielens import dataset_name

web_bp = Blueprint("web", __name__, template_folder="templates", static_folder="static",
                   static_url_path="/static")


@web_bp.get("/")
def index():
    engine = current_app.extensions["recommender"]
    return render_template("index.html", genres=engine.genre_names, scale=engine.scale,
                           dataset=dataset_name(engine.dataset))


@web_bp.get("/favicon.ico")
def favicon():
    """Browsers ask for /favicon.ico on their own; answer with the page's icon instead of a 404."""
    return send_from_directory(web_bp.static_folder, "favicon.svg", mimetype="image/svg+xml")
