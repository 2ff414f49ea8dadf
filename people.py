"""The API for a user's own data: forget me, withdraw a rating, movies I am not interested in.

Each route takes the user's own token or the admin token (open on loopback without a token, like the
other writes: access.py); serving/personal.py does the work.  See README's "People's data".
"""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify

from access import authorize
from parsing import json_value, parse_id

people_bp = Blueprint("people", __name__)


def _personal(user_id: str):
    user = parse_id(user_id, "user id")
    authorize(user)
    return user, current_app.extensions["personal"]


@people_bp.delete("/<user_id>/ratings")
def forget(user_id: str):
    """Forget the user: every rating, hidden movie, token and record of theirs, at once and in later fits."""
    user, personal = _personal(user_id)
    return jsonify(personal.forget(user))


@people_bp.delete("/<user_id>/ratings/<movie_id>")
def withdraw(user_id: str, movie_id: str):
    user, personal = _personal(user_id)
    return jsonify(personal.unrate(user, parse_id(movie_id, "movie id")))


@people_bp.get("/<user_id>/hidden")
def hidden(user_id: str):
    user, personal = _personal(user_id)
    return jsonify(personal.hidden(user))


@people_bp.post("/<user_id>/hidden")
def hide(user_id: str):
    """Hide movies (a JSON array of ids) from every list the user is shown."""
    user, personal = _personal(user_id)
    return jsonify(personal.hide(user, json_value()))


@people_bp.delete("/<user_id>/hidden/<movie_id>")
def unhide(user_id: str, movie_id: str):
    user, personal = _personal(user_id)
    return jsonify(personal.unhide(user, parse_id(movie_id, "movie id")))
