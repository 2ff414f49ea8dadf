"""The HTTP API: Flask blueprints over a Recommender (serving/), JSON everywhere.

The app calls the recommender's query and write methods, which answer from the
published model version in memory; it never talks to Spark.  The JSON shapes
are made here.  Every error is a JSON ``{"error": "..."}`` with a 4xx (or, for
a passing condition, 503) status, and a rejected request stores nothing.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import math
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import yaml
from flask import Blueprint, Flask, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from metrics import CONTENT_TYPE, Metrics
from serving.errors import InputError, NotFound, StoreUnavailable
from serving.recommender import Ack, Movie, Recommender
from serving.status import operator_status, public_health
from serving.validation import MAX_ID, MAX_POST_RATINGS
from storage.store import StoreError
from storage.tokens import UserTokens
from web import web_bp

MAX_BODY = 1 << 20  # 1 MiB
DRAIN_LIMIT = 16 << 20  # an over-size body up to this is read and dropped so its 413 reaches the client
OPENAPI_PATH = Path(__file__).resolve().parent / "openapi.yaml"
MAX_COUNT = 1000
DEFAULT_MIN_COUNT = 25
MAX_JSON_DEPTH = 8  # a body of ratings nests 2 deep; json.loads recurses once per level (RecursionError)

ratings_bp = Blueprint("ratings", __name__)
movies_bp = Blueprint("movies", __name__)
status_bp = Blueprint("status", __name__)
operator_bp = Blueprint("operator", __name__)


def _recommender() -> Recommender:
    return current_app.extensions["recommender"]


def movie_json(movie: Movie) -> dict:
    return {"movieId": movie.movie_id, "title": movie.title, "genres": list(movie.genres),
            "ratings_count": movie.ratings_count}


def bounded(text: str, name: str, low: int, high: int) -> int:
    """A whole number written in ASCII digits, within [low, high]; anything else is a 400 naming ``name``."""
    if not (text.isascii() and text.isdigit()) or len(text) > 12 or not low <= int(text) <= high:
        raise InputError(f"{name} must be a whole number from {low} to {high}, not {text[:40]!r}")
    return int(text)


def parse_id(text: str, what: str) -> int:
    """A user or movie id: 0..2**31-1, as pyspark.mllib stores ids."""
    return bounded(text, what, 0, MAX_ID)


def int_arg(name: str, default: int, low: int, high: int) -> int:
    """An integer query parameter within [low, high], or ``default`` when absent."""
    raw = request.args.get(name)
    return default if raw is None else bounded(raw, name, low, high)


def _number(text: str, where: str) -> float:
    try:
        number = float(text)
    except ValueError:
        raise InputError(f"{where}: rating {text[:40]!r} is not a number") from None
    return _finite(number, where)


def _finite(number: float, where: str) -> float:
    if not math.isfinite(number):
        raise InputError(f"{where}: rating must be a finite number")
    return number


Parsed = tuple[list[tuple[int, float]], list[str]]  # (movie, rating) pairs and where each came from


def _is_header(line: str) -> bool:
    """A CSV header such as ``movieId,rating``: two fields, both words."""
    fields = [f.strip().strip('"') for f in line.split(",")]
    return len(fields) == 2 and all(f and f.replace("_", "").isalpha() for f in fields)


def too_many(cap: int) -> InputError:
    """The 413 for a request with more than ``cap`` ratings (checked while parsing, before any other work)."""
    return InputError(f"a request holds at most {cap} ratings: send the rest in further requests", 413)


def parse_text_ratings(text: str, cap: int = MAX_POST_RATINGS) -> Parsed:
    """The tutorial's format: one ``movie_id,rating`` per line; blank lines and a header line are ignored;
    more than ``cap`` ratings is a 413."""
    pairs, labels = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or (not pairs and _is_header(line)):
            continue
        if len(pairs) == cap:
            raise too_many(cap)
        where = f"line {number}"
        fields = line.split(",")
        if len(fields) != 2:
            raise InputError(f"{where}: expected 'movie_id,rating', got {line[:60]!r}")
        pairs.append((parse_id(fields[0].strip(), f"{where}: movie id"), _number(fields[1].strip(), where)))
        labels.append(where)
    return pairs, labels


def parse_json_ratings(data, cap: int = MAX_POST_RATINGS) -> Parsed:
    """A JSON list of ``{"movieId": 1, "rating": 4.5}`` objects, at most ``cap`` of them (else a 413)."""
    if not isinstance(data, list):
        raise InputError('body must be a JSON list of {"movieId": ..., "rating": ...} objects')
    if len(data) > cap:
        raise too_many(cap)
    pairs, labels = [], []
    for number, item in enumerate(data, start=1):
        where = f"item {number}"
        if not isinstance(item, dict) or set(item) != {"movieId", "rating"}:
            raise InputError(f'{where}: expected an object with exactly "movieId" and "rating"')
        movie, rating = item["movieId"], item["rating"]
        if not isinstance(movie, int) or isinstance(movie, bool) or not 0 <= movie <= MAX_ID:
            raise InputError(f"{where}: movie id must be a whole number from 0 to {MAX_ID}")
        if not isinstance(rating, (int, float)) or isinstance(rating, bool):
            raise InputError(f"{where}: rating must be a number")
        try:
            number_ = float(rating)
        except OverflowError:  # a whole number beyond any float, such as 10**400
            raise InputError(f"{where}: rating must be a finite number") from None
        pairs.append((movie, _finite(number_, where)))
        labels.append(where)
    return pairs, labels


_BRACKET_STEPS = np.zeros(256, dtype=np.int8)
_BRACKET_STEPS[[ord("["), ord("{")]] = 1
_BRACKET_STEPS[[ord("]"), ord("}")]] = -1


def json_depth(raw: bytes) -> int:
    """How deep ``[`` and ``{`` nest in ``raw``, brackets inside strings included (a body of ratings has none)."""
    brackets = raw.translate(None, delete=bytes(b for b in range(256) if not _BRACKET_STEPS[b]))
    steps = _BRACKET_STEPS[np.frombuffer(brackets, dtype=np.uint8)]
    return int(np.cumsum(steps, dtype=np.int32).max()) if len(steps) else 0


def read_ratings_body() -> Parsed:
    """Parse a POST body as JSON (a body starting with ``[`` or ``{``, whatever the content type says:
    ``curl --data`` sends form encoding) or as the tutorial's text lines, at most the app's
    ``MAX_POST_RATINGS`` ratings."""
    mimetype = request.mimetype
    if mimetype not in ("application/json", "text/plain", "application/x-www-form-urlencoded", ""):
        raise InputError(f"unsupported content type {mimetype!r}: send application/json or text/plain", 415)
    raw = request.get_data(cache=False)
    if request.content_length is None and len(raw) >= MAX_BODY and request.environ["wsgi.input"].read(1):
        raise RequestEntityTooLarge()  # chunked: werkzeug stops reading at the cap without saying so
    if not raw.strip():
        raise InputError("the body is empty: send ratings as JSON or as 'movie_id,rating' lines")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError("the body is not valid UTF-8") from None
    cap = current_app.config["MAX_POST_RATINGS"]
    if mimetype == "application/json" or text.lstrip().startswith(("[", "{")):
        if json_depth(raw) > MAX_JSON_DEPTH:
            raise InputError(f"the body is not valid JSON for ratings: it nests more than {MAX_JSON_DEPTH} deep")
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise InputError(f"the body is not valid JSON: {exc}") from None
        return parse_json_ratings(data, cap)
    return parse_text_ratings(text, cap)


LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def allowed_host(name: str | None, hosts: frozenset[str]) -> bool:
    """A host name a loopback service answers: one of ``hosts``, or a loopback address (127.0.0.0/8, ::1),
    which DNS rebinding cannot name (a browser sends an address literal as it is)."""
    if name in hosts:
        return True
    try:
        return name is not None and ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def refuse_other_sites() -> None:
    """Refuse what a web page elsewhere could make a visitor's browser send here: a write whose ``Origin`` is
    not this service (a form or ``text/plain`` fetch posted from another site), and, where the app knows its
    host names (``ALLOWED_HOSTS``: a service bound to loopback), a request for any other host name, which
    is how DNS rebinding reaches a service on 127.0.0.1.  Clients that are not browsers send no ``Origin``."""
    hosts = current_app.config.get("ALLOWED_HOSTS")
    if hosts is not None and not allowed_host(urlsplit("//" + request.host).hostname, hosts):
        raise InputError(f"requests for host {request.host[:80]!r} are refused: this service answers "
                         f"{', '.join(sorted(hosts))} and loopback addresses", 403)
    origin = request.headers.get("Origin")
    if request.method not in SAFE_METHODS and origin is not None and urlsplit(origin).netloc != request.host:
        raise InputError(f"a write from another site ({origin[:80]}) is refused: post from this service's own "
                         "page, or without an Origin header as curl and scripts do", 403)


def is_operator() -> bool:
    """Whether the caller may see operators' details (paths, pids, hosts, errors): the admin token, or any
    caller when no admin token is set (a service on loopback)."""
    admin = current_app.config.get("API_TOKEN")
    if not admin:
        return True
    value = bearer()
    return value is not None and hmac.compare_digest(value.encode(), admin.encode())


def bearer() -> str | None:
    """The request's ``Authorization: Bearer <token>`` token, or None."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    value = value.strip()
    return value if scheme.lower() == "bearer" and value else None


MAX_KEY = 255


def idempotency_key() -> str | None:
    """The request's ``Idempotency-Key`` header (1 to 255 visible ASCII characters), or None."""
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not 1 <= len(key) <= MAX_KEY or not all("!" <= c <= "~" for c in key):
        raise InputError(f"Idempotency-Key must be 1 to {MAX_KEY} visible ASCII characters (such as a UUID)")
    return key


def acknowledged(ack: Ack):
    """A write's 201 answer; a replayed one (its Idempotency-Key seen before) says so."""
    return jsonify({**ack.body, **({"replayed": True} if ack.replayed else {})}), 201


def authorize(user: int | None) -> None:
    """With an admin token configured, a user's ratings and recommendations (``user``) need
    ``Authorization: Bearer <token>`` with the admin token or that user's own token; operator
    endpoints (``user`` None) need the admin token.  Without one, everything is open (loopback)."""
    admin = current_app.config.get("API_TOKEN")
    if not admin:
        return
    value = bearer()
    if value is None:
        raise InputError("a valid 'Authorization: Bearer <token>' header is required for a user's ratings", 401)
    if hmac.compare_digest(value.encode(), admin.encode()):
        return
    owner = current_app.extensions["tokens"].owner(value)
    if owner is None:
        raise InputError("a valid 'Authorization: Bearer <token>' header is required for a user's ratings", 401)
    if user is None:
        raise InputError("this needs the admin token; a user's token reads and writes that user only", 403)
    if owner != user:
        raise InputError(f"this token is user {owner}'s: it cannot read or write user {user}", 403)


@ratings_bp.get("/<user_id>/ratings/top/<count>")
def top_ratings(user_id: str, count: str):
    user = parse_id(user_id, "user id")
    authorize(user)
    n = bounded(count, "count", 1, MAX_COUNT)
    min_count = int_arg("min_count", DEFAULT_MIN_COUNT, 0, 10**9)
    genre = request.args.get("genre")
    top = _recommender().recommend(user, n, min_count, genre)
    body = {"user": user, "movies": [{**movie_json(s.movie), "predicted_rating": s.predicted_rating,
                                      "ranking_score": s.ranking_score} for s in top.movies],
            "model_version": top.version}
    if top.fallback:
        body["fallback"] = top.fallback
    if top.reason:
        body["reason"] = top.reason
    return jsonify({**body, "min_count": min_count, "genre": genre})


@ratings_bp.get("/<user_id>/ratings/<movie_id>")
def movie_rating(user_id: str, movie_id: str):
    user = parse_id(user_id, "user id")
    authorize(user)
    p = _recommender().predict(user, parse_id(movie_id, "movie id"))
    m = p.movie
    return jsonify({"user": p.user, "movieId": m.movie_id, "title": m.title, "genres": list(m.genres),
                    "predicted_rating": p.predicted_rating, "ratings_count": m.ratings_count,
                    "user_rating": p.user_rating, "model_version": p.version})


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
    raw_user = request.args.get("user")
    if raw_user is None:
        raise InputError("user is required: /recommend?user=<id>&n=5")
    user = parse_id(raw_user, "user")
    authorize(user)
    n = int_arg("n", 5, 1, MAX_COUNT)
    min_count = int_arg("min_count", DEFAULT_MIN_COUNT, 0, 10**9)
    top = _recommender().recommend(user, n, min_count, request.args.get("genre"))
    # The tutorial's clients read "score" (the predicted stars): kept, next to its own name.
    body = {"user": user, "recommendations": [
        {"movieId": s.movie.movie_id, "title": s.movie.title, "predicted_rating": s.predicted_rating,
         "score": s.predicted_rating} for s in top.movies]}
    if top.fallback:
        body["fallback"] = top.fallback
    if top.reason:
        body["reason"] = top.reason
    return jsonify(body)


@movies_bp.get("/movies")
def search_movies():
    query = request.args.get("q")
    if query is None:
        raise InputError("q is required: /movies?q=<part of a title>")
    limit = int_arg("limit", 20, 1, MAX_COUNT)
    return jsonify({"query": query, "movies": [movie_json(m) for m in _recommender().search(query, limit)]})


@movies_bp.get("/movies/<movie_id>")
def movie(movie_id: str):
    entry, average = _recommender().movie(parse_id(movie_id, "movie id"))
    return jsonify({**movie_json(entry), "average_rating": average})


@movies_bp.get("/movies/<movie_id>/similar")
def similar_movies(movie_id: str):
    movie = parse_id(movie_id, "movie id")
    count = int_arg("count", 10, 1, MAX_COUNT)
    min_count = int_arg("min_count", DEFAULT_MIN_COUNT, 0, 10**9)
    similar = [{**movie_json(m), "similarity": s} for m, s in _recommender().similar(movie, count, min_count)]
    return jsonify({"movieId": movie, "similar": similar})


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
    return jsonify(operator_status(_recommender()))


@status_bp.get("/openapi.json")
def openapi():
    return jsonify(current_app.config["OPENAPI"])


@operator_bp.post("/admin/retrain")
def retrain():
    """Ask the trainer for a fit on every stored rating now (it starts within a second unless one runs)."""
    authorize(None)
    recommender = _recommender()
    asked = recommender.request_retrain()
    return jsonify({"requested_at": asked, "model_version": recommender.version}), 202


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


def _drain_body(response: Response) -> Response:
    """Read and drop what is left of the body (up to DRAIN_LIMIT) before answering, where CherryPy does not:
    after a 413 (it closes the connection) and for a chunked body (it never reads one on).  A client that
    sends its whole body first, as curl and most libraries do, would otherwise get a reset, not the answer."""
    length = request.content_length
    if response.status_code == 413 or length is None:
        stream, left = request.environ["wsgi.input"], min(DRAIN_LIMIT if length is None else length, DRAIN_LIMIT)
        while left > 0 and (chunk := stream.read(min(left, 1 << 16))):
            left -= len(chunk)
    return response


def _refuse_framing(response: Response) -> Response:
    """No page of another site may frame an answer (a framed page can be clicked through, star by star):
    ``X-Frame-Options`` for old browsers and CSP ``frame-ancestors``, added to any policy already set."""
    response.headers["X-Frame-Options"] = "DENY"
    policy = response.headers.get("Content-Security-Policy", "").strip().rstrip(";")
    if "frame-ancestors" not in policy:
        policy = f"{policy}; frame-ancestors 'none'" if policy else "frame-ancestors 'none'"
    response.headers["Content-Security-Policy"] = policy
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
    app.after_request(_refuse_framing)
    app.after_request(_drain_body)
    app.before_request(refuse_other_sites)
    app.json.sort_keys = False
    app.extensions["recommender"] = recommender
    if api_token:
        app.extensions["tokens"] = UserTokens(recommender.store)
    for blueprint in (ratings_bp, movies_bp, status_bp, operator_bp, web_bp):
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
