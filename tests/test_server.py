"""server.py as a real process (role all: the API here, the trainer as a child process): start-up, clean
shutdown, restarts and kills lose no acknowledged rating."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, free_port
from fixtures import write_dataset
from processes import ServerProcess, java_command_lines, request, until

from server import descendants


def test_sigterm_during_a_fit_stops_cleanly_and_restart_keeps_ratings(servers, csv_fixture, tmp_path):
    first = servers(tmp_path / "m", "--heap", "512m")
    first.wait_for("checkpoints in", 120)
    java = java_command_lines(first.proc.pid)
    assert len(java) == 1 and "-Xmx512m" in java[0] and "-Xms512m" in java[0]  # --heap reached the JVM
    assert "log4j2.configurationFile" in java[0]
    # Once a version serves, the trainer and its JVM keep off one core: requests always have one of their own.
    usable = sorted(os.sched_getaffinity(0))
    if len(usable) > 1:
        def confined() -> bool:
            cpus = []
            for pid in descendants(first.proc.pid):  # the trainer, its JVM, Spark's Python workers
                try:
                    cpus.append(os.sched_getaffinity(pid))
                except OSError:  # it ended meanwhile
                    pass
            return bool(cpus) and all(c == set(usable[1:]) for c in cpus)

        until(confined, 30, "the trainer's processes to be confined")
        assert os.sched_getaffinity(first.proc.pid) == set(usable)  # the API process keeps every core
    work = Path(re.search(r"checkpoints in (\S+)\)", first.output()).group(1)).parent
    assert work.is_dir()
    assert first.post(31337, "1,4.5\n2,1\n")[0] == 201
    assert request(first.port, "POST", "/admin/retrain")[0] == 202
    first.wait_until_training()  # stop the service in the middle of the fit
    assert first.stop(signal.SIGTERM) == 0
    out = first.output()
    assert "Bus EXITED" in out and "trainer stopped during a fit; the version in service stays" in out
    assert not work.exists()  # checkpoints and the shipped modules go with the trainer
    assert work.parent == first.tmp and list(first.tmp.iterdir()) == []  # Spark's scratch went with them
    assert not re.search(r"Traceback|WARN|FutureWarning|ERROR", out)
    assert not descendants(first.proc.pid)
    given = tmp_path / "checkpoints"  # SPARK_CHECKPOINT_DIR: the trainer removes only its own sub-folder
    second = servers(tmp_path / "m", env={"SPARK_CHECKPOINT_DIR": str(given)})
    status, body = second.get("/31337/ratings")
    assert status == 200 and [(r["movieId"], r["rating"]) for r in body["ratings"]] == [(1, 4.5), (2, 1.0)]
    assert "model version 1 in service" in second.output()  # the stopped fit published nothing
    until(lambda: given.exists() and len(list(given.iterdir())) == 1, 120, "the trainer's checkpoint folder")
    assert second.stop(signal.SIGTERM) == 0
    assert list(given.iterdir()) == []


def test_sigkill_after_201s_during_a_fit_loses_nothing_and_keeps_the_old_model(servers, csv_fixture, tmp_path):
    first = servers(tmp_path / "m")
    acknowledged = []
    for user in range(900, 905):
        status, _ = first.post(user, f"{user % 40 + 1},3.5\n{(user + 7) % 40 + 1},4.5\n")
        assert status == 201
        acknowledged += [(user, user % 40 + 1, 3.5), (user, (user + 7) % 40 + 1, 4.5)]
    assert request(first.port, "POST", "/admin/retrain")[0] == 202
    first.wait_until_training()
    first.stop(signal.SIGKILL)  # process group: the API, the trainer and its JVM die in the middle of the fit
    second = servers(tmp_path / "m", role="api")  # an API process alone reads what was acknowledged
    health = second.get("/health")[1]
    assert health["model_version"] == 1 and health["pending_ratings"] == len(acknowledged)
    assert not list((tmp_path / "m" / "versions").glob("v000002"))  # the half-done fit published nothing
    for user, movie, rating in acknowledged:
        status, body = second.get(f"/{user}/ratings/{movie}")
        assert status == 200 and body["user_rating"] == rating


def test_process_group_sigterm_during_a_fit_stops_the_trainer_in_one_line(tmp_path):
    # systemd's default stop (and `kill -- -PGID`) signals the trainer and its JVM at once; the JVM may go
    # first, and the py4j calls of the fit, of the cancel and of Spark's stop then fail: all expected.
    dataset = write_dataset(tmp_path / "ml-fixture", "csv").path
    trainer = ServerProcess(tmp_path / "m", "--no-tune", role="trainer", dataset=dataset)
    try:
        trainer.wait_for("fitting: no model is published yet", 120)
        assert trainer.stop(signal.SIGTERM, group=True) == 0
    finally:
        if trainer.proc.poll() is None:
            trainer.stop(signal.SIGKILL)
    out = trainer.output()
    assert "Traceback" not in out and "Answer from Java side is empty" not in out
    assert not re.search(r"ERROR|WARN|Exception", out), out
    after = out[out.index("fitting: no model is published yet"):].splitlines()[1:]
    assert len(after) == 1 and "trainer stopped during a fit; the version in service stays" in after[0], after
    assert not (tmp_path / "m" / "versions").exists() or not list((tmp_path / "m" / "versions").glob("v*"))
    assert list(trainer.tmp.iterdir()) == []  # Spark's scratch and checkpoints went with it


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
