"""Spark jobs: fitting, tuning and evaluating the models, the one SparkContext and the Python worker daemon
(runs in the Spark driver, the trainer or evaluate.py, and its executors; API processes never import it)."""
