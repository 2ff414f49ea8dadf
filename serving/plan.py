"""Which model version answers which user: the newest, a pinned one, or an experiment's arm.

The plan is kept in the ratings store (storage/steering.py), so every API
process on every host reads the same one; each process follows it within a
poll.  With an experiment running every user is in one of its arms, picked by
a hash of (experiment name, user id): the same on every process, host and
restart.  Otherwise the pinned version serves everyone, or, with no pin, the
newest published one.

The hash is stratified so that shares hold on any run of user ids, not only
on average: the ids are cut into blocks of 100 consecutive ids, the hash
orders each block's ids, and an arm with ``traffic`` percent gets that many
places of each block.  Any 10,000 consecutive ids (99 whole blocks and two
part blocks) give each arm its share within half a point.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from functools import lru_cache

from storage.steering import named_versions

BLOCK = 100  # consecutive user ids an arm's share is exact over: percentages are whole numbers
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
NEWEST, PINNED, EXPERIMENT = "newest", "pinned", "experiment"  # why a version serves


@dataclass(frozen=True)
class Route:
    """The version that answers one user, and why (``reason``: newest, pinned or experiment).  ``stand_in``:
    the version the plan names could not be loaded here, and ``version`` stands in for it (an experiment
    does not count what it answers)."""

    version: int
    reason: str
    experiment: str | None = None
    arm: str | None = None
    stand_in: bool = False


@dataclass(frozen=True)
class Experiment:
    """A running experiment: each arm's version and its share of users (whole percentages summing to 100).
    ``control`` is the arm the others are compared with."""

    name: str
    arms: dict[str, int]
    traffic: dict[str, int]
    control: str
    started: float = 0.0
    _bounds: tuple[tuple[int, str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        bounds, total = [], 0
        for arm in sorted(self.arms):  # sorted: the same order whatever order the JSON came in
            total += self.traffic[arm]
            bounds.append((total, arm))
        object.__setattr__(self, "_bounds", tuple(bounds))

    def arm(self, user: int) -> str:
        """The arm of ``user``: its place in its block of 100 ids, by the hash, falls in that arm's share."""
        place = _places(self.name, user // BLOCK)[user % BLOCK]
        for bound, arm in self._bounds:
            if place < bound:
                return arm
        return self._bounds[-1][1]

    def as_json(self) -> dict:
        return {"name": self.name, "arms": dict(self.arms), "traffic": dict(self.traffic),
                "control": self.control, "started": self.started}

    @classmethod
    def from_json(cls, data: dict) -> Experiment:
        return cls(str(data["name"]), {k: int(v) for k, v in data["arms"].items()},
                   {k: int(v) for k, v in data["traffic"].items()}, str(data["control"]),
                   float(data.get("started", 0.0)))


@lru_cache(maxsize=8192)
def _places(name: str, block: int) -> tuple[int, ...]:
    """Each id of one block's place (0-99) in the order of the hash of (experiment name, user id)."""
    first = block * BLOCK
    keys = [hashlib.sha256(f"{name}\0{first + i}".encode()).digest()[:8] for i in range(BLOCK)]
    places = [0] * BLOCK
    for place, i in enumerate(sorted(range(BLOCK), key=keys.__getitem__)):
        places[i] = place
    return tuple(places)


@dataclass(frozen=True)
class Plan:
    """What serves: the pinned version (None: the newest) and the running experiment (None: none)."""

    pinned: int | None = None
    experiment: Experiment | None = None

    def route(self, user: int | None, newest: int) -> Route:
        """The version for ``user`` (None: an answer for no user in particular, such as a movie's neighbours
        without a user: the pinned or newest version)."""
        if self.experiment is not None and user is not None:
            arm = self.experiment.arm(user)
            return Route(self.experiment.arms[arm], EXPERIMENT, self.experiment.name, arm)
        return self.default(newest)

    def default(self, newest: int) -> Route:
        """The version for answers outside the experiment: the pinned one, else the newest."""
        return Route(self.pinned, PINNED) if self.pinned is not None else Route(newest, NEWEST)

    def versions(self, newest: int) -> set[int]:
        """Every version this plan serves."""
        return {self.default(newest).version, *(self.experiment.arms.values() if self.experiment else ())}

    def named(self) -> set[int]:
        """The versions the plan names (the pin and the arms): never pruned while it names them."""
        return named_versions(self.as_json())

    def as_json(self) -> dict:
        return {"pinned": self.pinned, "experiment": None if self.experiment is None else self.experiment.as_json()}

    @classmethod
    def from_json(cls, data: dict | None) -> Plan:
        if not data:
            return cls()
        experiment = data.get("experiment")
        return cls(None if data.get("pinned") is None else int(data["pinned"]),
                   None if not experiment else Experiment.from_json(experiment))
