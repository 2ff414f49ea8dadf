"""Prometheus metrics of one API process, served at /metrics (Prometheus scrapes each process).

Counted as requests pass: requests per endpoint (the route's rule, so the
label set stays small), method (one of HTTP's, else ``other``: a client
makes up method tokens at will) and status, with their latency; ratings
posted; store errors.  Read when scraped, from the recommender: the version in
service, its age, how long its fit took per model, the ratings it has not
seen, what serves and why (newest, pinned, an experiment's arms), and the
trainer's state.  Each app gets its own registry (no globals).
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE", "CONNECT"})
TRAINER_STATES = ("fitting", "tuning", "idle", "failed", "stopped", "not running", "unknown")


class Metrics:
    """The counters an app updates per request, and the registry /metrics exposes."""

    def __init__(self, recommender):
        self.registry = CollectorRegistry(auto_describe=False)
        self.requests = Counter("recommender_http_requests", "HTTP requests answered",
                                ["endpoint", "method", "status"], registry=self.registry)
        self.latency = Histogram("recommender_http_request_seconds", "Time to answer a request, by endpoint",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.posted = Counter("recommender_posted_ratings", "Ratings accepted and stored", registry=self.registry)
        self.store_errors = Counter("recommender_store_errors", "Writes the ratings store could not take",
                                    registry=self.registry)
        self.registry.register(ServingCollector(recommender))
        self._children: dict[tuple, tuple] = {}

    def observe(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        """Count one answer; ``endpoint`` is a route's rule (or ``unmatched``), never the client's path."""
        key = (endpoint, method if method in METHODS else "other", status)
        children = self._children.get(key)
        if children is None:  # labels() validates and locks: done once per label set, not per request
            children = self._children[key] = (self.requests.labels(key[0], key[1], str(status)),
                                              self.latency.labels(endpoint))
        children[0].inc()
        children[1].observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class ServingCollector:
    """What the recommender knows, read at each scrape."""

    def __init__(self, recommender):
        self.recommender = recommender

    def collect(self):
        try:
            served = self.recommender.current()
            status = self.recommender.status()
        except Exception:  # no version yet, or the store is down: only the per-request metrics
            return
        meta = served.version.meta
        yield GaugeMetricFamily("recommender_model_version", "Number of the model version in service",
                                value=served.number)
        if meta.get("created"):
            yield GaugeMetricFamily("recommender_model_age_seconds", "Seconds since the version in service was "
                                    "published", value=max(0.0, time.time() - float(meta["created"])))
        fits = GaugeMetricFamily("recommender_fit_seconds", "How long the version in service took to fit, "
                                 "per model", labels=["model"])
        for model, seconds in (meta.get("fit_seconds") or {}).items():
            fits.add_metric([model], float(seconds))
        yield fits
        yield GaugeMetricFamily("recommender_trained_ratings", "Ratings the version in service knows, posted "
                                "ones folded in", value=status["n_ratings"])
        if status["pending_ratings"] is not None:  # None: the store is not answering
            yield GaugeMetricFamily("recommender_pending_ratings", "Ratings posted since the version in service "
                                    "was trained (folded in, not yet fitted)", value=status["pending_ratings"])
        group = self.recommender.store.group
        yield CounterMetricFamily("recommender_store_commits", "Write transactions of ratings requests this "
                                  "process committed or tried (concurrent requests share one)", value=group.groups)
        yield CounterMetricFamily("recommender_store_grouped_requests", "Ratings requests those transactions "
                                  "carried (per commit: this over recommender_store_commits)", value=group.requests)
        yield GaugeMetricFamily("recommender_store_up", "1 when the ratings store answers, 0 when it does not",
                                value=0 if status["store_error"] else 1)
        live = {name: GaugeMetricFamily(f"recommender_live_{name}", text, labels=["version"]) for name, text in (
            ("rmse", "RMSE of each version's predictions of its last posted ratings, made before they were stored"),
            ("mae", "MAE of the same"), ("ratings", "Posted ratings those figures cover"),
            ("hit_rate", "Share of liked (>= 4) posted ratings whose movie was in the user's last served list"))}
        for row in status.get("live_quality", []):
            for name, family in live.items():
                if row[name] is not None:
                    family.add_metric([str(row["version"])], float(row[name]))
        yield from live.values()
        serving = GaugeMetricFamily("recommender_serving_version", "The version that answers, and why: reason "
                                    "newest or pinned for users outside an experiment, experiment per arm",
                                    labels=["reason", "experiment", "arm"])
        plan = status["serving"]
        serving.add_metric([plan["reason"], "", ""], float(plan["version"]))
        if plan["experiment"]:
            for arm, version in plan["experiment"]["arms"].items():
                serving.add_metric(["experiment", plan["experiment"]["name"], arm], float(version))
        yield serving
        state = GaugeMetricFamily("recommender_trainer_state", "1 for the trainer's state", labels=["state"])
        current = status["trainer"]["state"]
        for name in TRAINER_STATES if current in TRAINER_STATES else (*TRAINER_STATES, current):
            state.add_metric([name], 1.0 if name == current else 0.0)
        yield state
