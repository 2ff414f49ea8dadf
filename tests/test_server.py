"""server.py as a real process: start-up, clean shutdown, restarts and kills lose no acknowledged rating."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import FAST, ROOT, copy_model, free_port


def _request(port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        conn.close()


class ServerProcess:
    def __init__(self, dataset, model_dir, *extra: str, env: dict | None = None):
        model_dir.mkdir(parents=True, exist_ok=True)
        (model_dir / "params.json").write_text(json.dumps(FAST.as_dict()))  # small and quick
        self.port = free_port()
        self.out = open(model_dir / f"server-{self.port}.out", "w")
        self.proc = subprocess.Popen(
            [sys.executable, "server.py", "--dataset", str(dataset), "--model-dir", str(model_dir),
             "--port", str(self.port), "--master", "local[2]", *extra],
            cwd=ROOT, stdout=self.out, stderr=subprocess.STDOUT, start_new_session=True,
            env={**{k: v for k, v in os.environ.items() if k != "SPARK_CHECKPOINT_DIR"},  # its own, as in production
                 **(env or {})})
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}: {self.output()[-3000:]}")
            if "serving on http://" in self.output():  # printed once CherryPy's bus has started
                assert _request(self.port, "GET", "/health")[0] == 200
                return
            time.sleep(0.3)
        raise AssertionError("server did not answer within 180 s")

    def output(self) -> str:
        with open(self.out.name) as fh:
            return fh.read()

    def post(self, user: int, text: str):
        return _request(self.port, "POST", f"/{user}/ratings", text.encode(),
                        {"Content-Type": "application/x-www-form-urlencoded"})

    def get(self, path: str):
        return _request(self.port, "GET", path)

    def wait_until_training(self, timeout: float = 60) -> None:
        """Return once the server says a retrain runs (another process: its health is all there is to watch)."""
        deadline = time.monotonic() + timeout
        while not self.get("/health")[1]["training"]:
            assert time.monotonic() < deadline, "no retrain started"
            time.sleep(0.05)

    def stop(self, sig=signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig) if sig == signal.SIGKILL else self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            self.out.close()


@pytest.fixture
def servers(csv_fixture, fixture_model):
    """Start server.py processes; one on the CSV fixture with a new model folder starts from the saved models."""
    started = []

    def start(dataset, model_dir, *args, env=None):
        if not model_dir.exists() and str(dataset) == str(csv_fixture.path):
            copy_model(fixture_model, model_dir)
        server = ServerProcess(dataset, model_dir, *args, env=env)
        started.append(server)
        return server

    yield start
    for server in started:
        if server.proc.poll() is None:
            server.stop(signal.SIGKILL)


def _java_command_lines(pid: int) -> list[str]:
    """Command lines of the java processes under ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError):
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid and "java" in cmdline:
            found.append(cmdline)
    return found


def test_sigterm_during_a_retrain_stops_cleanly_and_restart_keeps_ratings(servers, csv_fixture, tmp_path):
    first = servers(csv_fixture.path, tmp_path / "m", "--heap", "512m")
    java = _java_command_lines(first.proc.pid)
    assert len(java) == 1 and "-Xmx512m" in java[0] and "-Xms512m" in java[0]  # --heap reached the JVM
    assert "log4j2.configurationFile" in java[0]
    work = Path(re.search(r"checkpoints in (\S+)\)", first.output()).group(1)).parent
    assert work.is_dir()
    assert first.post(31337, "1,4.5\n2,1\n")[0] == 201
    first.wait_until_training()  # the POST started a retrain: stop the service in the middle of it
    assert first.stop(signal.SIGTERM) == 0
    assert "Bus EXITED" in first.output()
    assert not work.exists()  # checkpoints and the shipped modules go with the process
    assert not re.search(r"Traceback|WARN|FutureWarning", first.output())
    given = tmp_path / "checkpoints"  # SPARK_CHECKPOINT_DIR: the process removes only its own sub-folder
    second = servers(csv_fixture.path, tmp_path / "m", "--retrain", "off", env={"SPARK_CHECKPOINT_DIR": str(given)})
    status, body = second.get("/31337/ratings")
    assert status == 200 and [(r["movieId"], r["rating"]) for r in body["ratings"]] == [(1, 4.5), (2, 1.0)]
    assert "loaded saved model" in second.output()
    assert len(list(given.iterdir())) == 1
    assert second.stop(signal.SIGTERM) == 0
    assert list(given.iterdir()) == []


def test_sigkill_after_201s_during_a_retrain_loses_nothing_and_keeps_the_old_model(servers, csv_fixture, tmp_path):
    first = servers(csv_fixture.path, tmp_path / "m")
    acknowledged = []
    for user in range(900, 905):
        status, _ = first.post(user, f"{user % 40 + 1},3.5\n{(user + 7) % 40 + 1},4.5\n")
        assert status == 201
        acknowledged += [(user, user % 40 + 1, 3.5), (user, (user + 7) % 40 + 1, 4.5)]
    first.wait_until_training()
    first.stop(signal.SIGKILL)  # process group: the JVM dies too, in the middle of the retrain
    second = servers(csv_fixture.path, tmp_path / "m", "--retrain", "off")
    health = second.get("/health")[1]
    assert health["model_version"] == 1 and health["pending_ratings"] == len(acknowledged)
    assert "loaded saved model" in second.output()  # the half-done retrain replaced nothing
    for user, movie, rating in acknowledged:
        status, body = second.get(f"/{user}/ratings/{movie}")
        assert status == 200 and body["user_rating"] == rating


def test_refuses_public_host_without_token(csv_fixture, tmp_path):
    out = subprocess.run([sys.executable, "server.py", "--dataset", str(csv_fixture.path), "--host", "0.0.0.0"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "--api-token" in out.stderr


def test_port_in_use_is_a_one_line_error(csv_fixture):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = subprocess.run([sys.executable, "server.py", "--dataset", str(csv_fixture.path), "--port", str(port)],
                             cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and f"cannot listen on 127.0.0.1:{port}" in out.stderr


def test_missing_dataset_is_a_one_line_error(tmp_path):
    out = subprocess.run([sys.executable, "server.py", "--dataset", str(tmp_path / "none"),
                          "--port", str(free_port()), "--model-dir", str(tmp_path / "m")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith("server.py: no MovieLens dataset")


def test_bad_params_file_is_a_one_line_error_before_spark_starts(csv_fixture, tmp_path):
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    (model_dir / "params.json").write_text(json.dumps({"ranking": {"rnak": 64}}))
    out = subprocess.run([sys.executable, "server.py", "--dataset", str(csv_fixture.path), "--port", str(free_port()),
                          "--model-dir", str(model_dir)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "unknown parameter(s) rnak" in out.stderr
    assert "Spark" not in out.stdout + out.stderr  # refused before the JVM started
