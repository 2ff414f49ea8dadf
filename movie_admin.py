"""The operators' API for movie rules: hide a movie from every list, or show it only between two dates.

Operator endpoints (the admin token when one is set; open on loopback without one); serving/movie_rules.py
does the work.  See README's "Hidden and expiring movies".
"""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify

from access import authorize
from parsing import json_body, parse_id

movie_admin_bp = Blueprint("movie_admin", __name__)


def _rules():
    authorize(None)
    return current_app.extensions["movie_rules"]


@movie_admin_bp.get("/admin/movies")
def rules():
    return jsonify(_rules().list())


@movie_admin_bp.put("/admin/movies/<movie_id>")
def put_rule(movie_id: str):
    """``{"hidden": true}`` or ``{"available_from": "2026-12-24", "available_until": "2027-01-07"}``."""
    rules = _rules()
    return jsonify(rules.put(parse_id(movie_id, "movie id"), json_body()))


@movie_admin_bp.delete("/admin/movies/<movie_id>")
def clear_rule(movie_id: str):
    rules = _rules()
    return jsonify(rules.delete(parse_id(movie_id, "movie id")))
