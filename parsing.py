"""What clients send, read strictly: ids, numbers in paths and query strings, the Idempotency-Key header
and rating bodies (the tutorial's lines or JSON), each within a stated limit.

Every mistake is an InputError whose message names what was wrong and the limit (a 400, or a 413 for a
body or a batch over its cap), raised before anything is stored.
"""

from __future__ import annotations

import json
import math

import numpy as np
from flask import Response, current_app, request
from werkzeug.exceptions import RequestEntityTooLarge

from serving.errors import InputError
from serving.lists import ListFilters
from serving.validation import MAX_ID, MAX_POST_RATINGS

MAX_BODY = 1 << 20  # 1 MiB
DRAIN_LIMIT = 16 << 20  # an over-size body up to this is read and dropped so its 413 reaches the client
MAX_JSON_DEPTH = 8  # a body of ratings nests 2 deep; json.loads recurses once per level (RecursionError)


def bounded(text: str, name: str, low: int, high: int) -> int:
    """A whole number written in ASCII digits, within [low, high]; anything else is a 400 naming ``name``."""
    if not (text.isascii() and text.isdigit()) or len(text) > 12 or not low <= int(text) <= high:
        raise InputError(f"{name} must be a whole number from {low} to {high}, not {text[:40]!r}")
    return int(text)


def parse_id(text: str, what: str) -> int:
    """A user or movie id: 0..2**31-1, as pyspark.mllib stores ids."""
    return bounded(text, what, 0, MAX_ID)


def query(name: str) -> str | None:
    """A query argument's first value, or None when absent.  (``request.args.get`` builds and catches a
    werkzeug BadRequestKeyError for every absent name: a few µs each, several on every list.)"""
    args = request.args
    return args.get(name) if name in args else None


def list_filters() -> ListFilters:
    """A list's filters from the query: exclude, genre, exclude_genre and year (serving/lists.py)."""
    return ListFilters.parse(query("exclude"), query("genre"), query("exclude_genre"), query("year"))


def flag_arg(name: str) -> bool:
    """A 0/1 (or false/true) query flag, false when absent; InputError for anything else."""
    value = query(name)
    if value is None:
        return False
    if value.lower() not in ("0", "1", "true", "false"):
        raise InputError(f"{name} must be 1 or 0, not {value!r}")
    return value.lower() in ("1", "true")


def number_arg(name: str, default: float, low: float, high: float) -> float:
    """A number query argument between ``low`` and ``high``; InputError naming it otherwise."""
    value = query(name)
    if value is None:
        return default
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not low <= number <= high:  # NaN too
        raise InputError(f"{name} must be a number from {low:g} to {high:g}, not {value!r}")
    return number


def int_arg(name: str, default: int, low: int, high: int) -> int:
    """An integer query parameter within [low, high], or ``default`` when absent."""
    raw = query(name)
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
_NOT_BRACKETS = bytes(b for b in range(256) if not _BRACKET_STEPS[b])  # what json_depth deletes before counting


def json_depth(raw: bytes) -> int:
    """How deep ``[`` and ``{`` nest in ``raw``, brackets inside strings included (a body of ratings has none)."""
    brackets = raw.translate(None, delete=_NOT_BRACKETS)
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


def json_body():
    """An operator's JSON body (an object), or None when the request has none."""
    data = json_value()
    if data is not None and not isinstance(data, dict):
        raise InputError("the body must be a JSON object")
    return data


def json_value():
    """A request's JSON body (any JSON value), or None when the request has none."""
    if request.mimetype not in ("application/json", "application/x-www-form-urlencoded", ""):
        raise InputError(f"unsupported content type {request.mimetype!r}: send application/json", 415)
    raw = request.get_data(cache=False)
    if request.content_length is None and len(raw) >= MAX_BODY and request.environ["wsgi.input"].read(1):
        raise RequestEntityTooLarge()
    if not raw.strip():
        return None
    if json_depth(raw) > MAX_JSON_DEPTH:
        raise InputError(f"the body nests more than {MAX_JSON_DEPTH} deep")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"the body is not valid JSON: {exc}") from None
    return data


MAX_KEY = 255


def idempotency_key() -> str | None:
    """The request's ``Idempotency-Key`` header (1 to 255 visible ASCII characters), or None."""
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not 1 <= len(key) <= MAX_KEY or not all("!" <= c <= "~" for c in key):
        raise InputError(f"Idempotency-Key must be 1 to {MAX_KEY} visible ASCII characters (such as a UUID)")
    return key


def drain_body(response: Response) -> Response:
    """Read and drop what is left of the body (up to DRAIN_LIMIT) before answering, where CherryPy does not:
    after a 413 (it closes the connection) and for a chunked body (it never reads one on).  A client that
    sends its whole body first, as curl and most libraries do, would otherwise get a reset, not the answer."""
    length = request.content_length
    if response.status_code == 413 or length is None:
        stream, left = request.environ["wsgi.input"], min(DRAIN_LIMIT if length is None else length, DRAIN_LIMIT)
        while left > 0 and (chunk := stream.read(min(left, 1 << 16))):
            left -= len(chunk)
    return response
