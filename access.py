"""Who may ask what, and what no other site may do with an answer: host names, origins, bearer tokens.

Run for every request (a ``before_request`` hook and each route's :func:`authorize`) and every answer
(:func:`refuse_framing`), so no endpoint can forget them.
"""

from __future__ import annotations

import hmac
import ipaddress
from urllib.parse import urlsplit

from flask import Response, current_app, request

from serving.errors import InputError

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


def refuse_framing(response: Response) -> Response:
    """No page of another site may frame an answer (a framed page can be clicked through, star by star):
    ``X-Frame-Options`` for old browsers and CSP ``frame-ancestors``, added to any policy already set."""
    response.headers["X-Frame-Options"] = "DENY"
    policy = response.headers.get("Content-Security-Policy", "").strip().rstrip(";")
    if "frame-ancestors" not in policy:
        policy = f"{policy}; frame-ancestors 'none'" if policy else "frame-ancestors 'none'"
    response.headers["Content-Security-Policy"] = policy
    return response
