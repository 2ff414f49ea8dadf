"""The operators' API for model versions: list them, pin or roll back, fit candidates, run experiments.

Every route is an operator endpoint (the admin token when one is set; open on
loopback without one, like the other operator endpoints); serving/control.py
does the work.  See README's "Changing models safely".
"""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify

from access import authorize
from parsing import json_body

models_bp = Blueprint("models", __name__)


def _control():
    authorize(None)
    return current_app.extensions["control"]


@models_bp.get("/admin/versions")
def versions():
    return jsonify(_control().versions())


@models_bp.post("/admin/serve")
def serve():
    """Pin a kept version (``{"version": 4}``) or follow the newest again (``{"version": "newest"}``)."""
    control = _control()
    return jsonify(control.serve(json_body()))


@models_bp.post("/admin/retrain")
def retrain():
    """A fit on every stored rating now; with ``{"params": {...}, "serve": false}`` a candidate."""
    control = _control()
    return jsonify(control.retrain(json_body())), 202


@models_bp.get("/admin/experiments")
def experiments():
    return jsonify(_control().experiments())


@models_bp.post("/admin/experiments")
def start_experiment():
    control = _control()
    return jsonify(control.start(json_body())), 201


@models_bp.get("/admin/experiments/<name>")
def experiment(name: str):
    return jsonify(_control().report(name))


@models_bp.post("/admin/experiments/<name>/stop")
def stop_experiment(name: str):
    control = _control()
    return jsonify(control.stop(name, json_body()))
