"""Which version answers which user: arms by a hash of (experiment name, user id), pins, the newest."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import ROOT

from serving.plan import EXPERIMENT, NEWEST, PINNED, Experiment, Plan


@pytest.mark.parametrize("traffic", [{"control": 50, "candidate": 50}, {"control": 90, "candidate": 10},
                                     {"a": 33, "b": 33, "c": 34}, {"control": 99, "candidate": 1}])
@pytest.mark.parametrize("first", [1, 57, 123_456_789])
def test_every_run_of_10000_consecutive_users_gets_each_arm_within_a_point(traffic, first):
    for name in ("rank-16", "reg", "x"):
        experiment = Experiment(name, {arm: i + 1 for i, arm in enumerate(traffic)}, traffic, sorted(traffic)[0])
        arms = [experiment.arm(u) for u in range(first, first + 10_000)]
        for arm, share in traffic.items():
            assert abs(100 * arms.count(arm) / 10_000 - share) <= 0.5, (name, arm)


def test_an_arm_is_the_same_in_another_process_and_differs_between_experiments():
    """The same (name, user) gives the same arm in a fresh interpreter (no per-process hash seed); two
    experiments split users independently (not the same halves again)."""
    traffic = {"control": 50, "candidate": 50}
    here = [Experiment("rank-16", {"control": 1, "candidate": 2}, traffic, "control").arm(u) for u in range(500)]
    code = ("import json; from serving.plan import Experiment; e = Experiment('rank-16', {'control': 1, "
            "'candidate': 2}, {'control': 50, 'candidate': 50}, 'control'); "
            "print(json.dumps([e.arm(u) for u in range(500)]))")
    there = json.loads(subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                                      env={"PYTHONHASHSEED": "123"}, check=True).stdout)
    assert here == there
    other = [Experiment("reg-0.1", {"control": 1, "candidate": 2}, traffic, "control").arm(u) for u in range(500)]
    same = sum(a == b for a, b in zip(here, other))
    assert 200 < same < 300  # independent halves agree about half the time


def test_routes_say_which_version_and_why():
    experiment = Experiment("e", {"control": 3, "candidate": 4}, {"control": 50, "candidate": 50}, "control")
    assert Plan().route(7, newest=5).version == 5 and Plan().route(7, newest=5).reason == NEWEST
    pinned = Plan(pinned=3)
    assert pinned.route(7, 5).version == 3 and pinned.route(7, 5).reason == PINNED and pinned.versions(5) == {3}
    running = Plan(pinned=3, experiment=experiment)
    route = running.route(7, 5)
    assert route.reason == EXPERIMENT and route.experiment == "e"
    assert route.version == experiment.arms[route.arm] == experiment.arms[experiment.arm(7)]
    assert running.route(None, 5).version == 3  # no user: outside the experiment
    assert running.versions(5) == {3, 4} and running.named() == {3, 4}
    assert Plan(experiment=experiment).versions(5) == {3, 4, 5}
    assert Plan.from_json(json.loads(json.dumps(running.as_json()))) == running
