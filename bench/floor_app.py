"""The framework's floor: a Flask app doing nothing but answer, served as server.py serves the real one.

    .venv/bin/python bench/floor_app.py --port PORT

The same CherryPy server (``server.serve``: its thread pool and the slow-client limits) and Paste's
TransLogger access log, and two routes shaped like the service's: ``POST /<user>/ratings`` reads the JSON body
and answers ``201 {user, accepted, model_version}``, ``GET /<user>/ratings/top/<count>`` answers a list of
``count`` movies.  Benchmarks start it beside the service to give a ratio measured in one run.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flask import Flask, jsonify, request  # noqa: E402
from paste.translogger import TransLogger  # noqa: E402

from server import serve  # noqa: E402


def floor_app() -> Flask:
    app = Flask(__name__)

    @app.post("/<int:user>/ratings")
    def post(user: int):
        body = request.get_json(force=True)
        return jsonify({"user": user, "accepted": len(body), "model_version": 1}), 201

    @app.get("/<int:user>/ratings/top/<int:count>")
    def top(user: int, count: int):
        return jsonify({"user": user, "model_version": 1, "recommendations": [
            {"movieId": m, "title": f"Movie {m} (1999)", "predicted_rating": 4.0, "ratings_count": 100}
            for m in range(1, count + 1)]})

    @app.get("/health")
    def health():
        return jsonify({"status": "ok"})

    return app


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,  # the access log written as server.py writes it
                        format="%(asctime)s %(levelname)s api %(name)s: %(message)s")
    serve(TransLogger(floor_app(), setup_console_handler=False), "127.0.0.1", args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
