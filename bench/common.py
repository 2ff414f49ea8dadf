"""Helpers shared by the benchmarks: start a server, keep-alive clients, percentiles, memory."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the project's modules, for the benchmarks that use them
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


def _spawn(what: str, command: list[str], out: Path, port: int, ready, timeout: float, cwd: Path = ROOT,
           env: dict | None = None) -> tuple[subprocess.Popen, int]:
    """Run ``command`` with its output in ``out`` and wait until ``ready()``; stop with ``what`` when it exits
    first or does not get ready within ``timeout`` seconds."""
    out.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(command, cwd=cwd, stdout=open(out, "w"), stderr=subprocess.STDOUT,
                            env={**os.environ, **(env or {})})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"bench: {what} exited: {out.read_text()[-2000:]}")
        if ready():
            return proc, port
        time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"bench: {what} did not start within {timeout:.0f} s")


def start_server(model_dir: str, *extra: str, dataset: str | None = None, role: str = "all",
                 timeout: float = 900, env: dict | None = None, log: str | None = None,
                 wait_for_model: bool = True, code: Path = ROOT) -> tuple[subprocess.Popen, int]:
    """Start ``server.py --role ROLE`` on a free loopback port with its own model folder; wait until it
    serves (and, with ``wait_for_model``, until /health answers 200: a version is loaded).

    ``env`` adds to (or overrides) this process's environment for the server; its
    output (the access log included) goes to ``log``, by default <role>-<port>.out in the model folder.
    ``code``: the checkout whose ``server.py`` runs (another one for a before/after comparison).
    """
    port = free_port()
    out = Path(log or Path(model_dir) / f"{role}-{port}.out")
    Path(model_dir).mkdir(parents=True, exist_ok=True)
    command = [sys.executable, str(Path(code) / "server.py"), "--role", role, "--port", str(port),
               "--model-dir", model_dir, *(["--dataset", dataset] if dataset is not None else []), *extra]
    return _spawn("server", command, out, port, lambda: "serving on http://" in out.read_text()
                  and (not wait_for_model or health_ok(port)), timeout, cwd=code, env=env)


def start_published(model_dir: str, dataset: str) -> tuple[subprocess.Popen, int]:
    """``server.py`` (role all, ``--no-tune``, the folder's own SQLite whatever RECOMMENDER_STORE says) on
    ``dataset``, once its first version serves and its trainer is idle: nothing fits while a benchmark times."""
    proc, port = start_server(model_dir, "--no-tune", dataset=dataset, env={"RECOMMENDER_STORE": ""})
    client = Client("127.0.0.1", port)
    while json.loads(client.call("GET", "/health")[2])["training"]:
        time.sleep(0.5)
    return proc, port


def start_floor(folder: str, timeout: float = 60) -> tuple[subprocess.Popen, int]:
    """Start ``bench/floor_app.py`` (the framework alone, served as server.py serves) on a free loopback port;
    its output goes to floor-<port>.out in ``folder``."""
    port = free_port()
    command = [sys.executable, str(ROOT / "bench" / "floor_app.py"), "--port", str(port)]
    return _spawn("the floor app", command, Path(folder) / f"floor-{port}.out", port, lambda: health_ok(port),
                  timeout)


def health_ok(port: int) -> bool:
    try:
        return Client("127.0.0.1", port).call("GET", "/health", check=False)[1] == 200
    except OSError:
        return False


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """Resident memory of one process, in MB, from /proc (0 when it is gone); ``field`` "VmHWM" for its peak."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return 0.0


def tree_rss_mb(pid: int) -> dict:
    """Resident memory of a process and of everything under it (role all: the trainer and its JVM), in MB."""
    from server import descendants

    kids = sum(rss_mb(c) for c in descendants(pid))
    return {"driver_mb": rss_mb(pid), "children_mb": round(kids, 1), "total_mb": round(rss_mb(pid) + kids, 1)}


def wait_until(what: str, test, timeout: float, procs=()) -> None:
    """Poll ``test`` every 0.2 s until true; stop with ``what`` after ``timeout`` or when a process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc, log in procs:
            if proc.poll() is not None:
                raise SystemExit(f"bench: a process exited ({proc.returncode}) while waiting for {what}: "
                                 f"{Path(log).read_text()[-2000:]}")
        try:
            if test():
                return
        except (OSError, ValueError, KeyError, RuntimeError):  # /health is a 503 before the first version
            pass
        time.sleep(0.2)
    raise SystemExit(f"bench: no {what} within {timeout:.0f} s")


def stop_all(procs) -> None:
    """SIGTERM every process still running, then wait up to 120 s for each (SIGKILL past that)."""
    procs = list(procs)
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
