"""server.py as real processes for the tests: start one in any role, talk to it, watch it, stop or kill it."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from conftest import C1_ONLY, FAST, ROOT, free_port

from server import descendants


def request(port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        conn.close()


def post_ratings(port: int, user: int, pairs: list[tuple[int, float]]) -> tuple[int, dict]:
    """POST a user's (movie, rating) pairs as JSON; (status, body)."""
    body = json.dumps([{"movieId": m, "rating": r} for m, r in pairs]).encode()
    return request(port, "POST", f"/{user}/ratings", body, {"Content-Type": "application/json"})


def until(predicate, timeout: float, what: str):
    """Wait for another process to reach a state (its answers and files are all there is to watch)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


class ServerProcess:
    """``server.py`` in a role (all, api or trainer) on a model folder, in its own process group.

    Roles all and api are ready once they serve (``ready`` more: once /health answers 200, which needs a
    published version); a trainer is ready at once.  The trainer's parameters default to FAST.
    """

    def __init__(self, model_dir: Path, *extra: str, role: str = "all", dataset: Path | None = None,
                 env: dict | None = None, ready: bool = True, python_args: tuple[str, ...] = ()):
        model_dir.mkdir(parents=True, exist_ok=True)
        if not (model_dir / "params.json").exists():
            (model_dir / "params.json").write_text(json.dumps(FAST.as_dict()))  # small and quick
        self.role = role
        self.port = free_port()
        self.tmp = model_dir.parent / f"tmp-{role}-{self.port}"  # TMPDIR: what the process leaves is seen
        self.tmp.mkdir()
        self.out = open(model_dir / f"{role}-{self.port}.out", "w")
        command = [sys.executable, *python_args, "server.py", "--role", role, "--model-dir", str(model_dir)]
        if dataset is not None:
            command += ["--dataset", str(dataset), "--master", "local[2]"]
        if role != "trainer":
            command += ["--port", str(self.port)]
        self._printed: list[str] = []
        self._ended = False
        self._news = threading.Condition()  # notified at every line the process prints, and when it ends
        self.proc = subprocess.Popen(
            [*command, *extra], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
            # Its own checkpoint folder, as in production; a trainer's JVM runs C1 only, like the tests' own.
            env={**{k: v for k, v in os.environ.items() if k != "SPARK_CHECKPOINT_DIR"},
                 "SPARK_SUBMIT_OPTS": C1_ONLY, "TMPDIR": str(self.tmp), **(env or {})})
        threading.Thread(target=self._read, daemon=True).start()
        if role != "trainer":
            self.wait_for("serving on http://", 180)  # printed once CherryPy's bus has started
            if ready:
                self.wait_for(r"model version \d+ in service", 180)

    def _read(self) -> None:
        """Copy what the process prints to its .out file, a line at a time, and wake whoever waits for one."""
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace")
            self.out.write(line)
            self.out.flush()
            with self._news:
                self._printed.append(line)
                self._news.notify_all()
        with self._news:
            self._ended = True
            self._news.notify_all()

    def wait_for(self, pattern: str, timeout: float, count: int = 1) -> None:
        """Block until the process has printed ``count`` lines matching ``pattern`` (a regular expression);
        fail at once if it ends first."""
        found = re.compile(pattern)

        def seen() -> int:
            return sum(1 for line in self._printed if found.search(line))

        with self._news:
            self._news.wait_for(lambda: self._ended or seen() >= count, timeout)
            if seen() >= count:
                return
            ended = self._ended
        self.proc.poll()
        raise AssertionError(f"{'ended (' + str(self.proc.returncode) + ')' if ended else 'timed out'} before "
                             f"printing {pattern!r}: {self.output()[-3000:]}")

    def output(self) -> str:
        with self._news:
            return "".join(self._printed)

    def post(self, user: int, text: str):
        return request(self.port, "POST", f"/{user}/ratings", text.encode(),
                       {"Content-Type": "application/x-www-form-urlencoded"})

    def get(self, path: str):
        return request(self.port, "GET", path)

    def wait_until_training(self, requests: int = 1, timeout: float = 60) -> None:
        """Return once this process's trainer (role all or trainer) has started the fit for the
        ``requests``-th ``POST /admin/retrain``."""
        self.wait_for("fitting: a fit was requested", timeout, requests)

    def stop(self, sig=signal.SIGTERM, timeout: float = 60, group: bool = False) -> int:
        """Send ``sig`` to the process (to its whole process group, as systemd does, with ``group`` or SIGKILL)
        and wait for it to end; its exit status."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig) if group or sig == signal.SIGKILL else self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            with self._news:
                self._news.wait_for(lambda: self._ended, 30)  # the last lines are copied
            self.out.close()


def java_command_lines(pid: int) -> list[str]:
    """Command lines of the java processes under ``pid`` (the trainer's JVM is a grandchild in role all)."""
    commands = []
    for child in descendants(pid):
        try:
            commands.append(Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:  # it ended meanwhile
            pass
    return [cmd for cmd in commands if cmd.split(" ", 1)[0].endswith("java")]
