"""Slow clients on a live server (issue 25): they cannot take every worker, and a request has a deadline."""

from __future__ import annotations

import http.client
import json
import socket
import threading

import pytest
from processes import request

HEALTH = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


# Whether /health answers at all, not how fast: long enough for a loaded CI machine, shorter than the 10 s
# per-read timeout after which plain cheroot freed a worker (so each check fails without the limits).  The
# issue's target, an answer within 1 s, is measured by bench/hostile.py (p50 1.3 ms, max 3.2 ms).
ANSWERS = 5.0


def health_within(port: int, seconds: float) -> int:
    """GET /health on a new connection; its status, or a failure if no answer came within ``seconds``."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=seconds)
    try:
        conn.request("GET", "/health")
        return conn.getresponse().status
    except TimeoutError:
        pytest.fail(f"/health did not answer within {seconds} s")
    finally:
        conn.close()


def closed_by_server(sock: socket.socket) -> bool:
    """Block until the server closes ``sock`` (True) or sends something (False); the socket's timeout bounds it."""
    try:
        return sock.recv(1024) == b""
    except ConnectionResetError:
        return True


def slow_connections(port: int, count: int) -> list[socket.socket]:
    """``count`` connections that have sent the first byte of a request and nothing more."""
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(count)]
    for sock in socks:
        sock.sendall(HEALTH[:1])
    return socks


def trickle(sock: socket.socket, stop: threading.Event) -> threading.Thread:
    """A slow loris: one more header byte every 0.2 s (well within any per-read timeout) until the server
    closes the connection or ``stop`` is set."""
    def run() -> None:
        try:
            sock.sendall(HEALTH[:-4])
            while not stop.wait(0.2):
                sock.sendall(b"x")
        except OSError:  # closed by the server
            pass

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_sixteen_slow_connections_leave_health_answering(live):
    server = live(threads=16)
    slow = slow_connections(server.port, 16)
    try:
        for _ in range(3):
            assert health_within(server.port, ANSWERS) == 200
        for sock in slow:  # each slow request moves on a byte
            sock.sendall(HEALTH[1:2])
        assert health_within(server.port, ANSWERS) == 200
        slow[0].sendall(HEALTH[2:])  # a slow request that completes is answered
        response = http.client.HTTPResponse(slow[0])
        response.begin()
        assert response.status == 200 and json.loads(response.read())["model_version"] == 1
    finally:
        for sock in slow:
            sock.close()


def test_pipelined_requests_sent_a_byte_at_a_time_are_answered_in_order(live):
    """Keep-alive and pipelining through the buffering: a POST with a body, then a GET, one byte per send."""
    server = live()
    body = json.dumps([{"movieId": 1, "rating": 4.5}]).encode()
    pipelined = (b"POST /4243/ratings HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
                 + b"GET /4243/ratings HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(len(pipelined)):
            sock.sendall(pipelined[i:i + 1])
        (posted, posted_body), (listed, listed_body) = _responses(sock, 2)
        assert posted == 201 and json.loads(posted_body)["accepted"] == 1
        assert listed == 200
        assert [(r["movieId"], r["rating"]) for r in json.loads(listed_body)["ratings"]] == [(1, 4.5)]


def _responses(sock: socket.socket, count: int) -> list[tuple[int, bytes]]:
    """``count`` responses read from one buffered reader (one HTTPResponse each would lose what the first
    read ahead of the second)."""
    fp = sock.makefile("rb")
    answers = []
    for _ in range(count):
        status = int(fp.readline().split()[1])
        length = 0
        while (line := fp.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            length = int(value) if name.strip().lower() == "content-length" else length
        answers.append((status, fp.read(length)))
    return answers


def test_a_chunked_body_still_reaches_the_app(live):
    server = live()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        chunks = iter([b'[{"movieId": 1, ', b'"rating": 3.5}]'])
        conn.request("POST", "/4244/ratings", body=chunks, encode_chunked=True,
                     headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
        response = conn.getresponse()
        assert response.status == 201 and json.loads(response.read())["accepted"] == 1
    finally:
        conn.close()


def test_a_slow_loris_is_closed_at_the_request_deadline(live):
    server = live(request_timeout=1.0)
    stop = threading.Event()
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sender = trickle(sock, stop)
        sock.settimeout(5)  # cheroot's own limit, 10 s per read, never closes a client that keeps trickling
        try:
            assert closed_by_server(sock)
        finally:
            stop.set()
            sender.join()
    assert health_within(server.port, ANSWERS) == 200


@pytest.mark.slow
def test_request_timeout_flag_bounds_a_real_server(servers, tmp_path):
    """server.py --role api with --threads 16 --request-timeout 1: /health answers past 16 slow connections,
    and a slow loris is closed."""
    api = servers(tmp_path / "m", "--threads", "16", "--request-timeout", "1", role="api")
    slow = slow_connections(api.port, 16)
    stop = threading.Event()
    try:
        assert health_within(api.port, ANSWERS) == 200
        with socket.create_connection(("127.0.0.1", api.port)) as sock:
            sender = trickle(sock, stop)
            sock.settimeout(5)
            assert closed_by_server(sock)
    finally:
        stop.set()
        for sock in slow:
            sock.close()
    sender.join()
    assert request(api.port, "GET", "/health")[0] == 200
    assert api.stop() == 0 and "Traceback" not in api.output()


def test_a_head_cheroots_parser_chokes_on_is_answered_and_the_server_goes_on(live):
    """A continuation line first (cheroot's header parser raises UnboundLocalError on it): the request gets
    an answer from a worker, not a traceback in the selector thread, and later requests are served."""
    server = live()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\n X\r\n\r\n")
        assert sock.recv(64).startswith(b"HTTP/1.1 400")
    assert health_within(server.port, ANSWERS) == 200


def test_stopping_with_a_streamed_request_in_flight_ends_cleanly(live):
    """A worker still reading a chunked body when the server stops: cheroot's forced close after its
    shutdown timeout finds the reader closable, and stop() returns without an error."""
    server = live(request_timeout=30.0)
    server.server.shutdown_timeout = 0.5
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"POST /4245/ratings HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n5\r\n[{\"mo")  # and then nothing more
        assert health_within(server.port, ANSWERS) == 200  # the streamed request holds one worker, not the server
        server.stop()
    server.thread.join(30)
    assert not server.thread.is_alive()  # serve() returned: every worker ended
