"""pyspark's Python worker daemon with two changes, run on local masters (see spark/context.py's create_context).

Speed: before every task pyspark's worker calls ``importlib.invalidate_caches()``,
and on Python 3.11 that makes each zipimporter on the path re-read its whole
archive directory: about ten importers into pyspark.zip (7 ms each) and two
into the spark-core jar (29 ms each), some 100 ms of CPU per task, which is
most of a small job's cost.  The archives Spark puts on a worker's path do not
change while the worker lives (addPyFile refuses a changed file under an old
name, and a new file gets a new path entry and a new importer), so their
importers keep the directory they read.

Quiet: when a job is cancelled (a retrain stopped at shutdown) the JVM closes
the task's socket, and the worker's last flush fails with BrokenPipeError,
which pyspark prints as a traceback on the service's terminal.  The worker
just ends, as it would have after the traceback.
"""

from __future__ import annotations

import zipimport


def _keep_directory(self) -> None:
    """An archive on a worker's path never changes: keep the directory read when it was opened."""


def keep_directories() -> None:
    """Make every zipimporter keep its archive's directory across ``importlib.invalidate_caches()``."""
    zipimport.zipimporter.invalidate_caches = _keep_directory


def quiet_on_closed_socket(worker):
    """Wrap pyspark's per-connection ``daemon.worker``: a closed socket ends the worker without a traceback."""
    def run(sock, authenticated):
        try:
            return worker(sock, authenticated)
        except BrokenPipeError:  # the JVM went away from this task: nobody is left to tell
            return 1  # non-zero: the daemon's child stops serving this connection and exits
    return run


if __name__ == "__main__":
    from spark.internals import run_daemon

    keep_directories()
    run_daemon(quiet_on_closed_socket)
