"""The figures of an A/B experiment, from the per-arm totals the store keeps, each with a 95% interval.

Each user is in one arm.  For every rating posted in an experiment the store keeps the prediction served
just before it, and per arm it returns only sums (of e**2, e**4 and |e|, with e = predicted - actual) and
counts, never the raw errors.  Those sums are enough to give each arm its RMSE, MAE and live hit rate
(see serving/quality.py) with a 95% interval, and each arm's difference from the control arm with one, so
an operator can tell a real change from noise.

The RMSE interval is the MSE's normal interval, square-rooted; the MAE's is normal; the hit rate's is
Wilson's.  A difference's interval is normal, with the arms independent (they hold different users) and,
for the RMSE, the delta method's standard error.  All of them treat ratings as independent, but the
ratings of one user are correlated, so the intervals are somewhat too narrow: read a difference whose
interval barely misses zero as "maybe", not "yes".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

Z = 1.959964  # two-sided 95% of the standard normal


@dataclass(frozen=True)
class ArmTotals:
    users: int  # distinct users of the arm seen (shown a list or posted)
    lists: int  # top-N lists served
    posted: int  # ratings posted, each with the prediction made just before it (errors e = predicted - actual)
    sum_e2: float  # sum of e**2
    sum_e4: float  # sum of e**4
    sum_abs: float  # sum of |e|
    liked: int  # posted ratings >= 4 by users who had been shown a list
    hits: int  # of those, for a movie in the last list shown to that user


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 4) + 0.0  # + 0.0: no -0.0 in the JSON


def _interval(low: float, high: float) -> list[float]:
    return [_round(low), _round(high)]


def _mean_se(n: int, total: float, total_sq: float) -> tuple[float | None, float | None]:
    """The mean of n values from their sum and sum of squares, and its standard error (None below 2 values)."""
    if n == 0:
        return None, None
    mean = total / n
    if n < 2:
        return mean, None
    variance = max(0.0, (total_sq - total * total / n) / (n - 1))  # clipped: rounding can dip below 0
    return mean, math.sqrt(variance / n)


def _mse(t: ArmTotals) -> tuple[float | None, float | None]:
    return _mean_se(t.posted, t.sum_e2, t.sum_e4)


def _mae(t: ArmTotals) -> tuple[float | None, float | None]:
    return _mean_se(t.posted, t.sum_abs, t.sum_e2)  # |e|**2 = e**2


def _rmse(t: ArmTotals) -> tuple[float | None, float | None]:
    """RMSE and its delta-method standard error SE_MSE / (2 RMSE) (None at RMSE 0)."""
    mse, se = _mse(t)
    if mse is None:
        return None, None
    rmse = math.sqrt(mse)
    return rmse, se / (2 * rmse) if se is not None and rmse > 0 else None


def _hit_rate(t: ArmTotals) -> tuple[float | None, float | None]:
    if t.liked == 0:
        return None, None
    p = t.hits / t.liked
    return p, math.sqrt(max(0.0, p * (1 - p) / t.liked))


def _wilson(hits: int, n: int) -> list[float]:
    p, z2 = hits / n, Z * Z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z / (1 + z2 / n) * math.sqrt(max(0.0, p * (1 - p) / n + z2 / (4 * n * n)))
    return _interval(max(0.0, centre - half), min(1.0, centre + half))


def arm_figures(t: ArmTotals) -> dict:
    """An arm's counts, RMSE, MAE and hit rate, each figure with its 95% interval (None without data)."""
    mse, mse_se = _mse(t)
    mae, mae_se = _mae(t)
    hit_rate, _ = _hit_rate(t)
    return {
        "users": t.users, "lists": t.lists, "posted": t.posted,
        "rmse": _round(math.sqrt(mse)) if mse is not None else None,
        "rmse_interval": _interval(math.sqrt(max(0.0, mse - Z * mse_se)), math.sqrt(mse + Z * mse_se))
        if mse_se is not None else None,
        "mae": _round(mae),
        "mae_interval": _interval(max(0.0, mae - Z * mae_se), mae + Z * mae_se) if mae_se is not None else None,
        "hit_rate": _round(hit_rate),
        "hit_rate_interval": _wilson(t.hits, t.liked) if t.liked else None,
        "liked": t.liked, "hits": t.hits,
    }


def difference(arm: ArmTotals, control: ArmTotals) -> dict:
    """``arm`` minus ``control`` for RMSE, MAE and hit rate, with normal 95% intervals (None without data)."""
    result = {}
    for name, figure in (("rmse", _rmse), ("mae", _mae), ("hit_rate", _hit_rate)):
        (a, a_se), (c, c_se) = figure(arm), figure(control)
        d = a - c if a is not None and c is not None else None
        se = math.sqrt(a_se * a_se + c_se * c_se) if a_se is not None and c_se is not None else None
        result[name] = _round(d)
        result[f"{name}_interval"] = _interval(d - Z * se, d + Z * se) if d is not None and se is not None else None
    return result


def experiment_figures(totals: dict[str, ArmTotals], control: str) -> tuple[dict, dict]:
    """Every arm's figures, and every arm but ``control``'s difference from it."""
    if control not in totals:
        raise ValueError(f"no totals for the control arm {control!r}")
    arms = {name: arm_figures(t) for name, t in totals.items()}
    return arms, {name: difference(t, totals[control]) for name, t in totals.items() if name != control}
