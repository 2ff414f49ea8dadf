"""The trainer's side: Spark jobs that fit, tune and evaluate the models (runs only in the Spark driver and
its executors; API processes never import it)."""
