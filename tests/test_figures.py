"""The experiment figures from per-arm totals, checked against the same figures computed from raw errors."""

from __future__ import annotations

import math

import pytest

from serving.figures import ArmTotals, Z, arm_figures, difference, experiment_figures


def totals(errors: list[float], liked: int = 0, hits: int = 0, users: int = 2, lists: int = 3) -> ArmTotals:
    """The totals the store would return for these errors (predicted - actual)."""
    return ArmTotals(users=users, lists=lists, posted=len(errors),
                     sum_e2=sum(e ** 2 for e in errors), sum_e4=sum(e ** 4 for e in errors),
                     sum_abs=sum(abs(e) for e in errors), liked=liked, hits=hits)


def mean_and_se(values: list[float]) -> tuple[float, float]:
    """Mean and its standard error from the raw values, two-pass: sqrt(sum((v - mean)**2) / (n - 1) / n)."""
    n = len(values)
    mean = sum(values) / n
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)


def wilson(hits: int, n: int) -> tuple[float, float]:
    p = hits / n
    centre = (p + Z ** 2 / (2 * n)) / (1 + Z ** 2 / n)
    half = Z * math.sqrt(p * (1 - p) / n + Z ** 2 / (4 * n ** 2)) / (1 + Z ** 2 / n)
    return centre - half, centre + half


def test_rmse_and_mae_of_four_errors():
    errors = [1, -1, 2, 0]
    f = arm_figures(totals(errors))
    # squares 1, 1, 4, 0: MSE 1.5; their sample variance ((-.5)² + (-.5)² + 2.5² + (-1.5)²) / 3 = 3
    mse, mse_se = mean_and_se([e ** 2 for e in errors])
    assert (mse, mse_se) == (1.5, math.sqrt(3 / 4))
    assert f["rmse"] == 1.2247 == round(math.sqrt(mse), 4)
    # 1.5 - 1.96 * 0.866 < 0: the low end is clipped at 0 before the square root
    assert f["rmse_interval"] == [0.0, 1.7881] == [0.0, round(math.sqrt(mse + Z * mse_se), 4)]
    # |e| 1, 1, 2, 0: MAE 1, sample variance 2/3, SE sqrt(2/3/4)
    mae, mae_se = mean_and_se([abs(e) for e in errors])
    assert f["mae"] == 1.0 == mae
    assert f["mae_interval"] == [0.1998, 1.8002] == [round(mae - Z * mae_se, 4), round(mae + Z * mae_se, 4)]
    assert (f["users"], f["lists"], f["posted"]) == (2, 3, 4)
    # |e| 0, 0, 0, 3: MAE 0.75, SE 0.75, so 0.75 - 1.96 * 0.75 < 0 is clipped at 0
    mae, mae_se = mean_and_se([0, 0, 0, 3])
    assert arm_figures(totals([0, 0, 0, -3]))["mae_interval"] == [0.0, round(mae + Z * mae_se, 4)] == [0.0, 2.22]


def test_rmse_interval_is_the_mse_interval_square_rooted():
    errors = [0.5, -1.0, 1.5, -0.5, 1.0, 2.0, -1.5, 0.25, -0.75, 1.25]
    f = arm_figures(totals(errors))
    mse, se = mean_and_se([e ** 2 for e in errors])
    assert mse - Z * se > 0  # this time the low end is not clipped
    assert f["rmse"] == round(math.sqrt(mse), 4) == 1.1484  # sum of squares 13.1875
    assert f["rmse_interval"] == [round(math.sqrt(mse - Z * se), 4), round(math.sqrt(mse + Z * se), 4)]
    assert f["rmse_interval"][0] < f["rmse"] < f["rmse_interval"][1]
    mae, mae_se = mean_and_se([abs(e) for e in errors])
    assert f["mae"] == round(mae, 4) == 1.025
    assert f["mae_interval"] == [round(mae - Z * mae_se, 4), round(mae + Z * mae_se, 4)]


def test_hit_rate_three_of_four_has_the_wilson_interval():
    f = arm_figures(totals([1.0, -1.0], liked=4, hits=3))
    assert f["hit_rate"] == 0.75
    low, high = wilson(3, 4)
    assert f["hit_rate_interval"] == [round(low, 4), round(high, 4)] == [0.3006, 0.9544]
    assert (f["liked"], f["hits"]) == (4, 3)
    assert arm_figures(totals([], liked=5, hits=0))["hit_rate_interval"] == [0.0, round(wilson(0, 5)[1], 4)]


def test_no_data_gives_none():
    f = arm_figures(ArmTotals(users=1, lists=1, posted=0, sum_e2=0.0, sum_e4=0.0, sum_abs=0.0, liked=0, hits=0))
    assert {k: f[k] for k in ("rmse", "rmse_interval", "mae", "mae_interval", "hit_rate", "hit_rate_interval")} \
        == dict.fromkeys(("rmse", "rmse_interval", "mae", "mae_interval", "hit_rate", "hit_rate_interval"))
    assert (f["users"], f["lists"], f["posted"], f["liked"], f["hits"]) == (1, 1, 0, 0, 0)
    one = arm_figures(totals([-2.0]))  # one error: a figure, but no variance to give it an interval
    assert (one["rmse"], one["rmse_interval"], one["mae"], one["mae_interval"]) == (2.0, None, 2.0, None)


def test_a_variance_rounding_below_zero_is_taken_as_zero():
    # three errors of 1: the variance of e**2 is 0, here a hair below it as float sums can give
    t = ArmTotals(users=1, lists=0, posted=3, sum_e2=3.0, sum_e4=3.0 - 1e-12, sum_abs=3.0 + 1e-12,
                  liked=0, hits=0)
    f = arm_figures(t)
    assert (f["rmse"], f["rmse_interval"], f["mae"], f["mae_interval"]) == (1.0, [1.0, 1.0], 1.0, [1.0, 1.0])
    d = difference(t, t)
    assert (d["rmse"], d["rmse_interval"], d["mae"], d["mae_interval"]) == (0.0, [0.0, 0.0], 0.0, [0.0, 0.0])


def test_difference_of_two_arms():
    candidate_errors = [0.5, -0.5, 1.0, 0.0, -1.0, 0.5]
    control_errors = [1, -1, 2, 0]
    d = difference(totals(candidate_errors, liked=10, hits=6), totals(control_errors, liked=4, hits=3))
    # RMSE: each arm's SE by the delta method, SE_MSE / (2 RMSE)
    (mse_a, se_a), (mse_c, se_c) = mean_and_se([e ** 2 for e in candidate_errors]), mean_and_se(
        [e ** 2 for e in control_errors])
    rmse_a, rmse_c = math.sqrt(mse_a), math.sqrt(mse_c)
    diff = rmse_a - rmse_c
    se = math.sqrt((se_a / (2 * rmse_a)) ** 2 + (se_c / (2 * rmse_c)) ** 2)
    assert d["rmse"] == round(diff, 4) == -0.5477  # sqrt(2.75 / 6) - sqrt(1.5)
    assert d["rmse_interval"] == [round(diff - Z * se, 4), round(diff + Z * se, 4)]
    # MAE
    (mae_a, se_a), (mae_c, se_c) = mean_and_se([abs(e) for e in candidate_errors]), mean_and_se(
        [abs(e) for e in control_errors])
    diff, se = mae_a - mae_c, math.sqrt(se_a ** 2 + se_c ** 2)
    assert d["mae"] == round(diff, 4) == -0.4167
    assert d["mae_interval"] == [round(diff - Z * se, 4), round(diff + Z * se, 4)]
    # hit rate: 0.6 - 0.75, SE sqrt(.6 * .4 / 10 + .75 * .25 / 4)
    se = math.sqrt(0.6 * 0.4 / 10 + 0.75 * 0.25 / 4)
    assert d["hit_rate"] == -0.15
    assert d["hit_rate_interval"] == [round(-0.15 - Z * se, 4), round(-0.15 + Z * se, 4)] == [-0.6718, 0.3718]


def test_difference_is_none_where_a_side_has_no_data():
    d = difference(totals([1, -1, 2, 0], liked=4, hits=3), totals([]))
    assert d == dict.fromkeys(("rmse", "rmse_interval", "mae", "mae_interval", "hit_rate", "hit_rate_interval"))
    one = difference(totals([0.5], liked=2, hits=1), totals([1, -1, 2, 0], liked=4, hits=3))
    assert (one["rmse"], one["rmse_interval"], one["mae"], one["mae_interval"]) == (-0.7247, None, -0.5, None)
    assert one["hit_rate"] == -0.25 and one["hit_rate_interval"] is not None
    perfect = difference(totals([0.0, 0.0]), totals([1, -1, 2, 0]))  # RMSE 0: no delta-method SE
    assert (perfect["rmse"], perfect["rmse_interval"]) == (-1.2247, None)
    assert perfect["mae"] == -1.0 and perfect["mae_interval"] is not None


def test_experiment_figures_leave_the_control_out_of_the_differences():
    arms = {"control": totals([1, -1, 2, 0], liked=4, hits=3), "candidate": totals([0.5, -0.5], liked=2, hits=2),
            "other": totals([2.0, -2.0, 1.0])}
    figures, differences = experiment_figures(arms, "control")
    assert figures == {name: arm_figures(t) for name, t in arms.items()}
    assert set(differences) == {"candidate", "other"}
    assert differences["candidate"] == difference(arms["candidate"], arms["control"])
    assert differences["candidate"]["rmse"] == round(0.5 - math.sqrt(1.5), 4)
    assert differences["other"]["hit_rate"] is None
    with pytest.raises(ValueError, match="control"):
        experiment_figures(arms, "missing")
