"""The HTTP API: Flask blueprints over a Recommender (serving/), JSON everywhere.

The app calls the recommender's query and write methods, which answer from the
published model version in memory; it never talks to Spark.  The JSON shapes
are made here.  Every error is a JSON ``{"error": "..."}`` with a 4xx (or, for
a passing condition, 503) status, and a rejected request stores nothing.
"""

from __future__ import annotations

import time
from pathlib import Path

import yaml
from flask import Blueprint, Flask, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from access import LOOPBACK_NAMES, authorize, is_operator, refuse_framing, refuse_other_sites
from metrics import CONTENT_TYPE, Metrics
from model_admin import models_bp
from movie_admin import movie_admin_bp
from parsing import (
    MAX_BODY,
    bounded,
    drain_body,
    flag_arg,
    idempotency_key,
    int_arg,
    list_filters,
    number_arg,
    parse_id,
    query,
    read_ratings_body,
)
from people import people_bp
from serving.control import ModelControl
from serving.errors import InputError, NotFound, StoreUnavailable
from serving.movie_rules import MovieRules
from serving.personal import PersonalData
from serving.recommender import Ack, Movie, Recommender, Scored, route_json
from serving.status import operator_status, public_health
from serving.validation import MAX_POST_RATINGS
from storage.store import StoreError
from storage.tokens import UserTokens
from web import web_bp

OPENAPI_PATH = Path(__file__).resolve().parent / "openapi.yaml"
MAX_COUNT = 1000
DEFAULT_MIN_COUNT = 25

ratings_bp = Blueprint("ratings", __name__)
movies_bp = Blueprint("movies", __name__)
status_bp = Blueprint("status", __name__)
operator_bp = Blueprint("operator", __name__)


def _recommender() -> Recommender:
    return current_app.extensions["recommender"]


def movie_json(movie: Movie) -> dict:
    return {"movieId": movie.movie_id, "title": movie.title, "genres": list(movie.genres),
            "ratings_count": movie.ratings_count}


def because_json(scored: Scored) -> dict:
    """An explained movie's ``because``: the user's rated movies that did most for it (nothing unexplained)."""
    if scored.because is None:
        return {}
    return {"because": [{"movieId": m.movie_id, "title": m.title, "rating": r} for m, r in scored.because]}


def acknowledged(ack: Ack):
    """A write's 201 answer; a replayed one (its Idempotency-Key seen before) says so."""
    return jsonify({**ack.body, **({"replayed": True} if ack.replayed else {})}), 201


@ratings_bp.get("/<user_id>/ratings/top/<count>")
def top_ratings(user_id: str, count: str):
    user = parse_id(user_id, "user id")
    authorize(user)
    n = bounded(count, "count", 1, MAX_COUNT)
    min_count = int_arg("min_count", DEFAULT_MIN_COUNT, 0, 10**9)
    filters, explain, diversify = list_filters(), flag_arg("explain"), number_arg("diversify", 0.0, 0.0, 1.0)
    top = _recommender().recommend(user, n, min_count, filters=filters, explain=explain, diversify=diversify)
    body = {"user": user, "movies": [{**movie_json(s.movie), "predicted_rating": s.predicted_rating,
                                      "ranking_score": s.ranking_score, **because_json(s)} for s in top.movies],
            "model_version": top.version, **route_json(top.route)}
    if top.fallback:
        body["fallback"] = top.fallback
    if top.reason:
        body["reason"] = top.reason
    return jsonify({**body, "min_count": min_count, "genre": query("genre"), **filters.as_json(),
                    **({"diversify": diversify} if diversify else {})})


@ratings_bp.get("/<user_id>/ratings/<movie_id>")
def movie_rating(user_id: str, movie_id: str):
    user = parse_id(user_id, "user id")
    authorize(user)
    p = _recommender().predict(user, parse_id(movie_id, "movie id"))
    m = p.movie
    return jsonify({"user": p.user, "movieId": m.movie_id, "title": m.title, "genres": list(m.genres),
                    "predicted_rating": p.predicted_rating, "ratings_count": m.ratings_count,
                    "user_rating": p.user_rating, "model_version": p.version, **route_json(p.route)})


@ratings_bp.get("/<user_id>/ratings")
def user_ratings(user_id: str):
    user = parse_id(user_id, "user id")
    authorize(user)
    rated = [{"movieId": m.movie_id, "title": m.title, "rating": r} for m, r in _recommender().rated(user)]
    return jsonify({"user": user, "ratings": rated})


@ratings_bp.post("/users")
def new_user():
    """The next free user id, for someone new (with an admin token set, the operator hands them out)."""
    authorize(None)
    return acknowledged(_recommender().new_user(idempotency_key()))


@ratings_bp.post("/<user_id>/ratings")
def add_ratings(user_id: str):
    user = parse_id(user_id, "user id")
    authorize(user)
    key = idempotency_key()
    pairs, labels = read_ratings_body()
    ack = _recommender().add_ratings(user, pairs, labels, key)
    if not ack.replayed:
        current_app.extensions["metrics"].posted.inc(len(pairs))
    return acknowledged(ack)


@movies_bp.get("/recommend")
def recommend():
    raw_user = query("user")
    if raw_user is None:
        raise InputError("user is required: /recommend?user=<id>&n=5")
    user = parse_id(raw_user, "user")
    authorize(user)
    n = int_arg("n", 5, 1, MAX_COUNT)
    min_count = int_arg("min_count", DEFAULT_MIN_COUNT, 0, 10**9)
    top = _recommender().recommend(user, n, min_count, filters=list_filters(), explain=flag_arg("explain"),
                                   diversify=number_arg("diversify", 0.0, 0.0, 1.0))
    # The tutorial's clients read "score" (the predicted stars): kept, next to its own name.
    body = {"user": user, "recommendations": [
        {"movieId": s.movie.movie_id, "title": s.movie.title, "predicted_rating": s.predicted_rating,
         "score": s.predicted_rating, **because_json(s)} for s in top.movies], "model_version": top.version,
        **route_json(top.route)}
    if top.fallback:
        body["fallback"] = top.fallback
    if top.reason:
        body["reason"] = top.reason
    return jsonify(body)


@movies_bp.get("/movies")
def search_movies():
    text = query("q")
    if text is None:
        raise InputError("q is required: /movies?q=<part of a title>")
    limit = int_arg("limit", 20, 1, MAX_COUNT)
    return jsonify({"query": text, "movies": [movie_json(m) for m in _recommender().search(text, limit)]})


@movies_bp.get("/movies/<movie_id>")
def movie(movie_id: str):
    entry, average = _recommender().movie(parse_id(movie_id, "movie id"))
    return jsonify({**movie_json(entry), "average_rating": average})


@movies_bp.get("/movies/<movie_id>/similar")
def similar_movies(movie_id: str):
    movie = parse_id(movie_id, "movie id")
    count = int_arg("count", 10, 1, MAX_COUNT)
    min_count = int_arg("min_count", DEFAULT_MIN_COUNT, 0, 10**9)
    raw_user = query("user")  # the answer comes from the version that serves this user
    user = None if raw_user is None else parse_id(raw_user, "user")
    if user is not None:
        authorize(user)
    found, route = _recommender().similar_for(user, movie, count, min_count, list_filters())
    return jsonify({"movieId": movie, "similar": [{**movie_json(m), "similarity": s} for m, s in found],
                    "model_version": route.version, **route_json(route)})


@status_bp.get("/health")
def health():
    """Status, version and counts for anyone; the trainer's pid and errors and the store's error text only
    for operators (they also go to the log)."""
    status = _recommender().status()
    return jsonify(status if is_operator() else public_health(status))


@status_bp.get("/metrics")
def prometheus_metrics():
    """Prometheus text format; an operator endpoint (the admin token, when one is set)."""
    authorize(None)
    return Response(current_app.extensions["metrics"].exposition(), content_type=CONTENT_TYPE)


@status_bp.get("/status.json")
def operator_status_json():
    """The operators' status (an operator endpoint); /status draws it."""
    authorize(None)
    return jsonify(operator_status(_recommender(), current_app.extensions["control"]))


@status_bp.get("/openapi.json")
def openapi():
    return jsonify(current_app.config["OPENAPI"])


def _tokens():
    """The user tokens, after checking the caller is the operator; there are none without an admin token."""
    if not current_app.config.get("API_TOKEN"):
        raise InputError("user tokens need an admin token: start the service with --api-token-file", 403)
    authorize(None)
    return current_app.extensions["tokens"]


@operator_bp.post("/admin/users/<user_id>/token")
def issue_token(user_id: str):
    """Issue a user their own token (replacing any earlier one): it reads and writes that user only."""
    user = parse_id(user_id, "user id")
    return jsonify({"user": user, "token": _tokens().issue(user)}), 201


@operator_bp.delete("/admin/users/<user_id>/token")
def revoke_token(user_id: str):
    user = parse_id(user_id, "user id")
    return jsonify({"user": user, "revoked": _tokens().revoke(user)})


STARTED = "recommender.started"  # the WSGI environ key of a request's start time


def _start_clock() -> None:
    request.environ[STARTED] = time.perf_counter()


def _count(response: Response) -> Response:
    """Count every answer by route, method and status, with its latency (each proxy read once)."""
    req = request._get_current_object()
    rule = req.url_rule
    elapsed = time.perf_counter() - req.environ.get(STARTED, time.perf_counter())
    current_app.extensions["metrics"].observe(rule.rule if rule is not None else "unmatched", req.method,
                                              response.status_code, elapsed)
    return response


def _error(message: str, status: int):
    response = jsonify({"error": message})
    response.status_code = status
    return response


def create_app(recommender: Recommender, api_token: str | None = None,
               allowed_hosts: frozenset[str] | None = LOOPBACK_NAMES,
               max_post_ratings: int = MAX_POST_RATINGS) -> Flask:
    """Build the Flask app around a recommender.

    ``api_token`` is the admin token: with it, a user's ratings need it or the user's own token (issued at
    ``/admin/users/<id>/token``), and operator endpoints need it.  ``allowed_hosts`` are the host names
    requests may name besides loopback addresses (None: any, for a service on a public address, which needs
    a token anyway).  ``max_post_ratings``: the most ratings one POST may hold (more is a 413)."""
    app = Flask(__name__)
    app.debug = False  # never the interactive debugger, whatever FLASK_DEBUG says: it runs code for anyone
    app.config.update(MAX_CONTENT_LENGTH=MAX_BODY, API_TOKEN=api_token, ALLOWED_HOSTS=allowed_hosts,
                      MAX_POST_RATINGS=max_post_ratings, OPENAPI=yaml.safe_load(OPENAPI_PATH.read_text()))
    app.extensions["metrics"] = Metrics(recommender)
    app.before_request(_start_clock)
    app.after_request(_count)
    app.after_request(refuse_framing)
    app.after_request(drain_body)
    app.before_request(refuse_other_sites)
    app.json.sort_keys = False
    app.extensions["recommender"] = recommender
    app.extensions["control"] = ModelControl(recommender)
    app.extensions["personal"] = PersonalData(recommender)
    app.extensions["movie_rules"] = MovieRules(recommender)
    if api_token:
        app.extensions["tokens"] = UserTokens(recommender.store)
    for blueprint in (ratings_bp, movies_bp, status_bp, operator_bp, models_bp, people_bp, movie_admin_bp, web_bp):
        app.register_blueprint(blueprint)

    @app.errorhandler(InputError)
    def input_error(exc: InputError):
        if isinstance(exc, StoreUnavailable):
            app.extensions["metrics"].store_errors.inc()
        return _error(exc.message, exc.status)

    @app.errorhandler(StoreError)
    def store_error(exc: StoreError):  # a read the store could not answer (a token check, /users)
        app.extensions["metrics"].store_errors.inc()
        app.logger.warning("%s", exc)
        return _error("the ratings store is not answering; nothing was changed, try again later", 503)

    @app.errorhandler(NotFound)
    def not_found(exc: NotFound):
        return _error(str(exc.args[0]), 404)

    @app.errorhandler(413)
    def too_large(exc: HTTPException):
        return _error(f"the body is larger than {MAX_BODY} bytes", 413)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        messages = {404: "no such route", 405: f"method {request.method} is not allowed here"}
        return _error(messages.get(exc.code, exc.description or exc.name), exc.code or 500)

    @app.errorhandler(Exception)
    def internal_error(exc: Exception):
        app.logger.exception("unhandled error on %s %s", request.method, request.path)
        return _error("internal error", 500)

    return app
