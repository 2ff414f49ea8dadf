"""A real PostgreSQL server for the tests: its own data folder, loopback only, a free port (never 5432).

PostgreSQL refuses to run as root, so under root (CI) the server runs as the
unprivileged user ``nobody`` in a folder it owns.  The binaries come from
Debian's ``postgresql`` package (``make test`` installs it when missing).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

from conftest import free_port

USER, PASSWORD = "recommender", "test-" + uuid.uuid4().hex[:12]


def pg_bin(name: str) -> str:
    """A PostgreSQL program: Debian keeps them in /usr/lib/postgresql/<major>/bin, off the PATH."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]))
    path = found[-1] if found else shutil.which(name)
    if path is None:
        raise RuntimeError(f"PostgreSQL's {name} is missing: apt-get install postgresql (make test does it as root)")
    return path


class PostgresServer:
    """``start()``, ``stop()`` (fast shutdown: what is committed stays), ``url(database)``, ``create_database()``."""

    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix="recommender-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self._as = {}
        if os.geteuid() == 0:  # the server refuses root: hand its folder to nobody and run as nobody
            os.chown(self.root, 65534, 65534)
            self._as = {"user": 65534, "group": 65534, "extra_groups": []}
        pwfile = self.root / "pw"
        pwfile.write_text(PASSWORD + "\n")
        if self._as:
            os.chown(pwfile, 65534, 65534)
        self._run([pg_bin("initdb"), "-D", str(self.data), "-U", USER, f"--pwfile={pwfile}", "-A", "scram-sha-256",
                   "-E", "UTF8", "--no-sync"])
        pwfile.unlink()
        self.start()

    def _run(self, argv: list[str]) -> None:
        done = subprocess.run(argv, capture_output=True, text=True, cwd=self.root, **self._as)
        if done.returncode:
            raise RuntimeError(f"{' '.join(argv[:2])} failed: {done.stderr.strip() or done.stdout.strip()}")

    def start(self) -> None:
        options = (f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories={self.root} "
                   "-c max_connections=200 -c shared_buffers=32MB")
        self._run([pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.root / "log"), "-o", options, "-w",
                   "-t", "60", "start"])

    def stop(self) -> None:
        """Stop the server (``-m fast``: clients are cut off, committed transactions are kept)."""
        self._run([pg_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop"])

    def url(self, database: str = "postgres", password: str = PASSWORD) -> str:
        return f"postgresql://{USER}:{password}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A fresh, empty database; its URL."""
        import psycopg

        name = "t_" + uuid.uuid4().hex[:16]
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def close(self) -> None:
        try:
            self._run([pg_bin("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"])
        except RuntimeError:
            pass  # already stopped
        shutil.rmtree(self.root, ignore_errors=True)
