"""Model parameters read from a params.json-shaped dict: each bad value is refused in one line naming it."""

from __future__ import annotations

import math
from dataclasses import fields

import pytest

from model import PARAM_RANGES, ModelError, ModelParams, NeighbourParams, RankingParams, RatingParams

NAN, INF = math.nan, math.inf


@pytest.mark.parametrize(("data", "named", "allowed"), [
    ({"rating": {"rank": -1}}, "rating rank", "an integer from 1 to 1000, not -1"),
    ({"rating": {"rank": 0}}, "rating rank", "from 1 to 1000"),
    ({"rating": {"rank": 1001}}, "rating rank", "from 1 to 1000"),
    ({"rating": {"rank": "abc"}}, "rating rank", 'an integer from 1 to 1000, not "abc"'),
    ({"rating": {"rank": 3.0}}, "rating rank", "an integer"),  # a float is not an int, even a whole one
    ({"rating": {"rank": True}}, "rating rank", "not true"),  # nor is a bool
    ({"rating": {"rank": None}}, "rating rank", "not null"),
    ({"rating": {"iterations": 101}}, "rating iterations", "from 1 to 100"),
    ({"rating": {"reg": 0}}, "rating reg", "above 0 and at most 1e+06"),  # a singular solve
    ({"rating": {"reg": -0.1}}, "rating reg", "above 0"),
    ({"rating": {"reg": 2e6}}, "rating reg", "at most 1e+06"),
    ({"rating": {"reg": "0.1"}}, "rating reg", 'not "0.1"'),
    ({"rating": {"seed": -1}}, "rating seed", "from 0 to 2147483647"),
    ({"rating": {"seed": 2**31}}, "rating seed", "from 0 to 2147483647"),
    ({"rating": {"bias": 1}}, "rating bias", "true or false, not 1"),  # an int is not a bool
    ({"rating": {"bias": "yes"}}, "rating bias", "true or false"),
    ({"rating": {"user_damping": -1}}, "rating user_damping", "at least 0"),
    ({"rating": {"movie_damping": INF}}, "rating movie_damping", "finite"),
    ({"rank": -1}, "rating rank", "from 1 to 1000"),  # the legacy flat file too
    ({"ranking": {"alpha": NAN}}, "ranking alpha", "not NaN"),
    ({"ranking": {"alpha": -0.5}}, "ranking alpha", "at least 0"),
    ({"ranking": {"rank": 0}}, "ranking rank", "from 1 to 1000"),
    ({"ranking": {"iterations": 0}}, "ranking iterations", "from 1 to 100"),
    ({"ranking": {"reg": -1}}, "ranking reg", "from 0 to 1e+06"),
    ({"ranking": {"seed": 1.5}}, "ranking seed", "an integer"),
    ({"ranking": {"threshold": NAN}}, "ranking threshold", "a finite number"),
    ({"ranking": {"threshold": -INF}}, "ranking threshold", "a finite number, not -Infinity"),
    ({"ranking": {"threshold": 10**400}}, "ranking threshold", "a finite number"),  # too big for a float
    ({"ranking": {"blend": -0.1}}, "ranking blend", "at least 0"),
    ({"ranking": {"blend": INF}}, "ranking blend", "finite"),
    ({"ranking": {"confidence": 1}}, "ranking confidence", "a string"),
    ({"ranking": {"confidence": "loud"}}, "ranking: confidence", "one of binary, signed"),
    ({"ranking": {"centre": "median"}}, "ranking: centre", "fixed or user"),
    ({"neighbours": {"neighbours": 0}}, "neighbours neighbours", "from 1 to 5000"),
    ({"neighbours": {"neighbours": 5001}}, "neighbours neighbours", "from 1 to 5000"),
    ({"neighbours": {"k": 0}}, "neighbours k", "from 1 to 5000"),
    ({"neighbours": {"k": 20.0}}, "neighbours k", "an integer"),
    ({"neighbours": {"shrinkage": -1}}, "neighbours shrinkage", "at least 0"),
    ({"neighbours": {"support": 0}}, "neighbours support", "above 0"),  # knn would be 0 / 0
    ({"neighbours": {"intercept": NAN}}, "neighbours intercept", "a finite number"),
    ({"neighbours": {"als_weight": INF}}, "neighbours als_weight", "a finite number"),
    ({"neighbours": {"knn_weight": "1"}}, "neighbours knn_weight", "a finite number"),
    ({"neighbours": {"enabled": 0}}, "neighbours enabled", "true or false"),
    ({"neighbours": {"candidates": "near"}}, "neighbours: neighbour candidates", "cosine or dot"),
    ({"rating": "x"}, "rating", 'a JSON object of parameters, not "x"'),
    ({"ranking": [1, 2]}, "ranking", "a JSON object"),
    ({"neighbours": None}, "neighbours", "not null"),
])
def test_a_bad_value_is_refused_naming_its_part_and_key(data, named, allowed):
    with pytest.raises(ModelError) as caught:
        ModelParams.from_dict(data)
    message = str(caught.value)
    assert message.startswith(f"params {named}") and allowed in message and "\n" not in message


def test_a_long_value_is_cut_to_keep_the_message_short():
    with pytest.raises(ModelError) as caught:
        ModelParams.from_dict({"rating": {"rank": list(range(1000))}})
    assert len(str(caught.value)) < 140 and str(caught.value).endswith("...")


@pytest.mark.parametrize(("data", "part", "key", "value"), [
    ({"rating": {"rank": 1}}, "rating", "rank", 1),
    ({"rating": {"rank": 1000}}, "rating", "rank", 1000),
    ({"rating": {"iterations": 100}}, "rating", "iterations", 100),
    ({"rating": {"reg": 1e6}}, "rating", "reg", 1e6),
    ({"rating": {"reg": 1}}, "rating", "reg", 1.0),  # an int will do for a float
    ({"rating": {"seed": 0}}, "rating", "seed", 0),
    ({"rating": {"seed": 2**31 - 1}}, "rating", "seed", 2**31 - 1),
    ({"rating": {"bias": False}}, "rating", "bias", False),
    ({"rating": {"user_damping": 0}}, "rating", "user_damping", 0.0),
    ({"ranking": {"reg": 0}}, "ranking", "reg", 0.0),
    ({"ranking": {"alpha": 0}}, "ranking", "alpha", 0.0),
    ({"ranking": {"alpha": 40}}, "ranking", "alpha", 40.0),
    ({"ranking": {"threshold": -3}}, "ranking", "threshold", -3.0),
    ({"ranking": {"blend": 0}}, "ranking", "blend", 0.0),
    ({"ranking": {"blend": 2.5}}, "ranking", "blend", 2.5),  # a weight beside the ranking model's 1, not a share
    ({"ranking": {"confidence": "binary", "centre": "user"}}, "ranking", "centre", "user"),
    ({"neighbours": {"neighbours": 5000, "k": 5000}}, "neighbours", "k", 5000),
    ({"neighbours": {"shrinkage": 0}}, "neighbours", "shrinkage", 0.0),
    ({"neighbours": {"support": 1e-3}}, "neighbours", "support", 1e-3),
    ({"neighbours": {"intercept": -1, "knn_weight": 0}}, "neighbours", "intercept", -1.0),
    ({"neighbours": {"enabled": False, "candidates": "cosine"}}, "neighbours", "candidates", "cosine"),
])
def test_a_good_value_is_taken(data, part, key, value):
    got = getattr(getattr(ModelParams.from_dict(data), part), key)
    assert got == value and type(got) is type(value)


def test_the_defaults_round_trip_and_are_in_range():
    defaults = ModelParams()
    assert ModelParams.from_dict(defaults.as_dict()) == defaults
    assert ModelParams.from_dict({}) == defaults
    assert ModelParams.from_dict({"rating": {}, "ranking": {}, "neighbours": {}}) == defaults
    for kind in (RatingParams, RankingParams, NeighbourParams):
        names = {f.name for f in fields(kind)}
        assert set(PARAM_RANGES[kind]) <= names  # no range for a field that is not there
        # every int parameter is bounded (a float one left out is any finite number)
        assert {f.name for f in fields(kind) if type(f.default) is int} <= set(PARAM_RANGES[kind])
