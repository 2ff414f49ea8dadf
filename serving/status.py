"""What the operators' status page shows (/status.json; /status draws it): the version in service and the
published ones with their fits, offline validation figures and live figures, and the store's kind, place and size."""

from __future__ import annotations

import json


def operator_status(recommender) -> dict:
    """The serving status (/health's), each published version newest first with its fit and its live
    figures, the last tuning's validation figures, and the ratings store's size on disk."""
    health = recommender.status()
    live = {row["version"]: row for row in health["live_quality"]}
    versions = []
    for number in sorted(recommender.versions.numbers(), reverse=True):
        meta = recommender.versions.describe(number)
        if meta is None:
            continue
        versions.append({"version": number, "created_at": meta.get("created_at"), "seq": meta.get("seq"),
                         "n_ratings": meta.get("n_ratings"), "fit_seconds": meta.get("fit_seconds"),
                         "tuned": meta.get("tuned"), "serving": number == health["model_version"],
                         "live": live.get(number)})
    tuning = None
    try:
        report = json.loads((recommender.model_dir / "tune.json").read_text())
        tuning = {k: report.get(k) for k in ("served_valid_rmse", "default_valid_rmse", "valid_rmse", "fits",
                                             "seconds", "n_valid", "time_cap_hit")}
    except (OSError, ValueError):
        pass
    return {"serving": health, "versions": versions, "validation": tuning,
            "store": {**recommender.store.describe(), "last_request": recommender.store.last_seq}}
