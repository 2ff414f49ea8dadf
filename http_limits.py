"""Slow clients cannot take cheroot's workers, and every request has a deadline.

cheroot hands a connection to one of its fixed pool of workers as soon as a byte
arrives, and the worker then blocks reading the rest; its only limit is a timeout
per socket read.  Sixteen clients sending a header byte every few seconds took
all sixteen workers and stopped the service.  Here the selector thread, which
waits for readable sockets anyway, reads what each connection has ready into that
connection's own buffer and hands it to a worker only once the whole request is
there: its head, and its body when ``Content-Length`` is at most ``body_limit``
(the app's 1 MiB cap).  A request whose body a worker must read from the socket
(chunked, ``Expect: 100-continue``, or over the cap, which the app answers 413
after draining) takes one of ``threads // 2`` stream slots, or waits for one, so
at least half the workers are always free for requests that arrived whole.  No
request may take longer than ``request_timeout`` seconds to arrive, head and body:
a connection still incomplete then is closed, and a worker's read past it fails
(cheroot answers 408).

Built against cheroot 11.1.2: it uses the connection manager's selector, a
private attribute.  TLS is not supported here (the service leaves it to a proxy).
"""

from __future__ import annotations

import collections
import io
import selectors
import socket
import threading
import time

import cheroot.wsgi
from cheroot.makefile import MakeFile
from cheroot.server import HTTPConnection

HEAD_LIMIT = 64 << 10  # request line and headers; cheroot answers 413 beyond it
BODY_LIMIT = 1 << 20  # app.MAX_BODY: bodies up to this are buffered before a worker sees the request
RECV_SIZE = 1 << 16
FILL_MOST = 1 << 18  # bytes the selector thread reads from one connection per turn, so none starves the others

WAIT, READY, STREAM, BAD = "wait", "ready", "stream", "bad"
BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class RequestReader:
    """A connection's ``rfile``: the bytes the selector thread buffered, then the socket.

    No read from the socket waits past ``deadline`` (a ``time.monotonic()`` value, or None between requests).
    """

    def __init__(self, sock: socket.socket, timeout: float):
        self.sock = sock
        self.timeout = timeout
        self.buffer = bytearray()
        self.bytes_read = 0
        self.deadline: float | None = None
        self.eof = False
        self.closed = False  # cheroot's forced shutdown reads it
        self.expired = False  # a read hit the deadline: the connection is closed after this answer

    def fill(self) -> None:
        """Append what the socket has ready, without waiting; ``eof`` once the client closed or broke it."""
        self.sock.settimeout(0)
        try:
            got = 0
            while got < FILL_MOST:
                data = self.sock.recv(RECV_SIZE)
                if not data:
                    self.eof = True
                    break
                self.buffer += data
                got += len(data)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self.eof = True
        finally:
            self.sock.settimeout(self.timeout)

    def _recv(self) -> bytes:
        """Block for more from the socket, up to the socket timeout and never past the deadline."""
        wait = self.timeout
        if self.deadline is not None:
            wait = min(wait, self.deadline - time.monotonic())
            if wait <= 0:
                self.expired = True
                raise TimeoutError("timed out")  # cheroot's communicate() answers 408 to this
        self.sock.settimeout(wait)
        try:
            return self.sock.recv(RECV_SIZE)
        finally:
            self.sock.settimeout(self.timeout)

    def _take(self, size: int) -> bytes:
        data = bytes(self.buffer[:size])
        del self.buffer[:size]  # O(1): a bytearray drops its head without moving the rest
        self.bytes_read += len(data)
        return data

    def read(self, size: int | None = -1) -> bytes:
        """``size`` bytes, fewer only at the end of the stream; all of it when ``size`` is None or negative."""
        whole = size is None or size < 0
        while (whole or len(self.buffer) < size) and (data := self._recv()):
            self.buffer += data
        return self._take(len(self.buffer) if whole else size)

    def readline(self, size: int | None = -1) -> bytes:
        """Up to and with the next ``\\n``, at most ``size`` bytes."""
        limit = None if size is None or size < 0 else size
        scanned = 0
        while True:
            end = self.buffer.find(b"\n", scanned, limit)
            if end >= 0:
                return self._take(end + 1)
            if limit is not None and len(self.buffer) >= limit:
                return self._take(limit)
            scanned = len(self.buffer)
            data = self._recv()
            if not data:
                return self._take(len(self.buffer))
            self.buffer += data

    def has_data(self) -> bool:
        return bool(self.buffer)

    def close(self) -> None:
        self.buffer.clear()
        self.closed = True


def request_state(buffer: bytearray, header_reader, body_limit: int) -> str:
    """What ``buffer`` holds of the next request: WAIT for more, READY (all of it, or enough for cheroot's
    own error answer), or STREAM (a whole head whose body a worker must read from the socket)."""
    start = 2 if buffer.startswith(b"\r\n") else 0  # cheroot skips one empty line before a request
    end = buffer.find(b"\r\n\r\n", start)
    if end < 0:
        if buffer.find(b"\n\n", start) >= 0 or len(buffer) > HEAD_LIMIT + 1024:
            return READY  # cheroot answers 400 (bare LF) or 413 (head too large) from what is buffered
        return WAIT
    head = bytes(buffer[start:end + 4])
    try:
        headers = header_reader(io.BytesIO(head[head.index(b"\r\n") + 2:]), {})
        length = int(headers.get(b"Content-Length", 0))
    except ValueError:
        return READY  # cheroot answers 400
    except Exception:  # noqa: BLE001 - a head cheroot's own parser breaks on (a continuation line first)
        return BAD
    if (b"Transfer-Encoding" in headers or headers.get(b"Expect", b"").lower() == b"100-continue"
            or length > body_limit):
        return STREAM
    return READY if len(buffer) >= end + 4 + length else WAIT


class BufferedConnection(HTTPConnection):
    """cheroot's connection with a ``RequestReader``; releases its stream slot when its request is done."""

    def __init__(self, server, sock, makefile=MakeFile):
        def files(sock, mode, size):
            return RequestReader(sock, server.timeout) if "r" in mode else makefile(sock, mode, size)

        super().__init__(server, sock, files)
        self.streaming = False

    def communicate(self):
        try:
            # A request whose body a read gave up on mid-way (the deadline) leaves the rest of it on the
            # socket, which would be read as the next request: close the connection instead.
            return super().communicate() and not self.rfile.expired
        finally:
            self.rfile.deadline = None  # the next request's starts when its first byte is seen
            if self.streaming:
                self.streaming = False
                self.server.release_stream_slot()


class SlowClientLimits:
    """Mixin for a cheroot HTTPServer class: requests are buffered off the workers, with a deadline."""

    ConnectionClass = BufferedConnection

    def __init__(self, *args, request_timeout: float = 10.0, body_limit: int = BODY_LIMIT, **kwargs):
        super().__init__(*args, **kwargs)
        self.request_timeout = request_timeout
        self.body_limit = body_limit
        self.max_request_header_size = HEAD_LIMIT
        self._slots = max(1, self.requests.min // 2)
        self._parked: collections.deque = collections.deque()  # whole heads waiting for a stream slot
        self._slots_lock = threading.Lock()

    def process_conn(self, conn) -> None:
        """Called for a new connection, one that became readable, or one with pipelined bytes buffered."""
        reader = conn.rfile
        if reader.deadline is None:
            reader.deadline = time.monotonic() + self.request_timeout
        state = request_state(reader.buffer, conn.RequestHandlerClass.header_reader, self.body_limit)
        if state == WAIT:  # read more only for a request still arriving: the buffer holds at most one
            reader.fill()
            state = request_state(reader.buffer, conn.RequestHandlerClass.header_reader, self.body_limit)
        if state == READY:
            super().process_conn(conn)
        elif state == BAD:  # answered here, in a few bytes the socket takes at once, and closed
            try:
                conn.socket.send(BAD_REQUEST)
            except OSError:
                pass
            conn.close()
        elif state == STREAM:
            self._stream(conn)
        elif reader.eof or time.monotonic() >= reader.deadline or not self.ready:
            conn.close()
        else:
            # Back to the selector.  cheroot's expiry closes a waiting connection once last_used is older
            # than self.timeout: date it so that happens at the request's deadline.
            conn.last_used = time.time() + (reader.deadline - time.monotonic()) - self.timeout
            self._connections._selector.register(conn.socket.fileno(), selectors.EVENT_READ, data=conn)

    def _stream(self, conn) -> None:
        with self._slots_lock:
            if not self._slots:
                self._parked.append(conn)
                return
            self._slots -= 1
        conn.streaming = True
        super().process_conn(conn)

    def release_stream_slot(self) -> None:
        """A streamed request is done: its slot goes to the longest-waiting parked one, else back."""
        with self._slots_lock:
            if not self._parked:
                self._slots += 1
                return
            conn = self._parked.popleft()
        if not self.ready:  # stopping: no worker will take it
            conn.close()
            return
        conn.streaming = True  # a parked request past its deadline fails at its first read (408)
        super().process_conn(conn)

    def stop(self) -> None:
        with self._slots_lock:
            parked, self._parked = list(self._parked), collections.deque()
        for conn in parked:
            conn.close()
        super().stop()


class Server(SlowClientLimits, cheroot.wsgi.Server):
    """cheroot's WSGI server with the limits: ``Server(bind_addr, app, numthreads, request_timeout=...)``."""


def cherrypy_server(adapter, request_timeout: float, body_limit: int = BODY_LIMIT):
    """A CherryPy HTTP server with the limits, configured from ``adapter`` (``cherrypy.server``, already
    configured): set it as ``cherrypy.server.httpserver`` before the engine starts."""
    from cherrypy._cpwsgi_server import CPWSGIServer

    class CPConnection(BufferedConnection):  # CPWSGIServer sets RequestHandlerClass on its connection class
        pass

    class CPServer(SlowClientLimits, CPWSGIServer):
        ConnectionClass = CPConnection

    return CPServer(adapter, request_timeout=request_timeout, body_limit=body_limit)
