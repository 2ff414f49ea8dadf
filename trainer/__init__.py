"""The trainer role: when to fit (the retrain policy, requests, failures) and the process around the engine
(the folder's lock, the SparkContext).  It drives engine.py, which drives spark/."""
