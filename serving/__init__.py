"""The serving side: a published model version in memory, answering queries with NumPy (API processes;
never imports pyspark)."""
