"""What the operators' status page shows (/status.json; /status draws it): the version in service and the
published ones with their fits, offline validation figures and live figures, and the store's kind, place and size."""

from __future__ import annotations

from storage.params import tuning_summary


def public_health(health: dict) -> dict:
    """/health for callers without the admin token: status, version and counts, and no paths, pids, hosts
    or error texts (which name the store's host and user); the store is only said not to answer."""
    trainer = health["trainer"]
    public = {k: v for k, v in health.items() if k not in ("store_error", "last_retrain_error", "trainer")}
    public["trainer"] = {"state": trainer["state"], "last_fit": trainer["last_fit"]}
    if health["store_error"] is not None:
        public["store"] = "not answering"
    return public


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
    # The figures travel with each version (an API host of a database store has no tune.json of its own).
    serving = recommender.versions.describe(health["model_version"]) or {}
    tuning = serving.get("validation") or tuning_summary(recommender.model_dir)
    return {"serving": health, "versions": versions, "validation": tuning,
            "store": {**recommender.store.describe(), "last_request": recommender.store.last_seq}}
