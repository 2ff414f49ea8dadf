"""Helpers shared by the benchmarks: start a server, keep-alive clients, percentiles, memory."""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATASET = str(ROOT / "datasets" / "ml-latest-small")


class Client:
    """One keep-alive HTTP connection that times each call."""

    def __init__(self, host: str, port: int):
        self.conn = http.client.HTTPConnection(host, port, timeout=60)

    def call(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
             check: bool = True) -> tuple[float, int, bytes]:
        start = time.perf_counter()
        self.conn.request(method, path, body=body, headers=headers or {})
        response = self.conn.getresponse()
        data = response.read()
        elapsed = (time.perf_counter() - start) * 1000
        if check and response.status >= 400:
            raise RuntimeError(f"{method} {path} -> {response.status}: {data[:200]!r}")
        return elapsed, response.status, data


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))], 3)


def summary(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    return {"n": len(values), "p50_ms": percentile(values, 50), "p99_ms": percentile(values, 99),
            "max_ms": round(max(values), 3)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(dataset: str, model_dir: str, *extra: str, timeout: float = 900,
                 env: dict | None = None, log: str | None = None) -> tuple[subprocess.Popen, int]:
    """Start server.py on a free loopback port with its own model folder; wait until it serves.

    ``env`` adds to (or overrides) this process's environment for the server; its
    output (the access log included) goes to ``log``, by default server.out in the model folder.
    """
    port = free_port()
    out = Path(log or Path(model_dir) / "server.out")
    proc = subprocess.Popen([sys.executable, str(ROOT / "server.py"), "--dataset", dataset, "--port", str(port),
                             "--model-dir", model_dir, *extra],
                            cwd=ROOT, stdout=open(out, "w"), stderr=subprocess.STDOUT,
                            env={**os.environ, **(env or {})})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"bench: server exited: {out.read_text()[-2000:]}")
        if "serving on http://" in out.read_text():
            return proc, port
        time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"bench: server did not start within {timeout:.0f} s")


def tree_rss_mb(pid: int) -> dict:
    """Resident memory of a process and of its children (the Spark JVM), in MB, from /proc."""
    def rss(p: int) -> float:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return 0.0

    children = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            children += [int(c) for c in (task / "children").read_text().split()]
    except OSError:
        pass
    kids = sum(rss(c) for c in children)
    return {"driver_mb": round(rss(pid), 1), "children_mb": round(kids, 1), "total_mb": round(rss(pid) + kids, 1)}
