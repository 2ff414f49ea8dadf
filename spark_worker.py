"""pyspark's Python worker daemon, minus a per-task cost: run on local masters (see sparkctx.create_context).

Before every task pyspark's worker calls ``importlib.invalidate_caches()``,
and on Python 3.11 that makes each zipimporter on the path re-read its whole
archive directory: about ten importers into pyspark.zip (7 ms each) and two
into the spark-core jar (29 ms each), some 100 ms of CPU per task, which is
most of a small job's cost.  The archives Spark puts on a worker's path do not
change while the worker lives (addPyFile refuses a changed file under an old
name, and a new file gets a new path entry and a new importer), so their
importers skip the re-read.  Everything else is pyspark's own daemon.
"""

import zipimport


def _keep_directory(self) -> None:
    """An archive on a worker's path never changes: keep the directory read when it was opened."""


zipimport.zipimporter.invalidate_caches = _keep_directory

if __name__ == "__main__":
    from pyspark import daemon

    daemon.manager()
