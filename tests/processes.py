"""server.py as real processes for the tests: start one in any role, talk to it, watch it, stop or kill it."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
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
        self.proc = subprocess.Popen(
            [*command, *extra], cwd=ROOT, stdout=self.out, stderr=subprocess.STDOUT, start_new_session=True,
            # Its own checkpoint folder, as in production; a trainer's JVM runs C1 only, like the tests' own.
            env={**{k: v for k, v in os.environ.items() if k != "SPARK_CHECKPOINT_DIR"},
                 "SPARK_SUBMIT_OPTS": C1_ONLY, "TMPDIR": str(self.tmp), **(env or {})})
        if role != "trainer":
            until(lambda: self._serving(), 180, f"{role} on port {self.port}")
            if ready:
                until(lambda: self.get("/health")[0] == 200, 180, "a published version")

    def _serving(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"server exited with {self.proc.returncode}: {self.output()[-3000:]}")
        return "serving on http://" in self.output()  # printed once CherryPy's bus has started

    def output(self) -> str:
        with open(self.out.name) as fh:
            return fh.read()

    def post(self, user: int, text: str):
        return request(self.port, "POST", f"/{user}/ratings", text.encode(),
                       {"Content-Type": "application/x-www-form-urlencoded"})

    def get(self, path: str):
        return request(self.port, "GET", path)

    def wait_until_training(self, timeout: float = 60) -> None:
        """Return once the service says a fit runs."""
        until(lambda: self.get("/health")[1]["training"], timeout, "a fit to start")

    def stop(self, sig=signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig) if sig == signal.SIGKILL else self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
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
