"""The trained model as NumPy arrays: predictions, one-user fold-in, saving and loading.

Spark trains the model (engine.py); everything that answers a request works on
these arrays in the driver, so no request starts a Spark job.  A prediction is
``mu + b_user + b_movie + u . v`` (the baseline plus the ALS factors trained on
its residuals), or ``u . v`` for plain ALS; a user or movie the model has not
seen falls back to the baseline, so every pair gets a prediction.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FORMAT_VERSION = 1


class ModelError(Exception):
    """A saved model is missing, damaged or does not match; the message says which."""


@dataclass(frozen=True)
class TrainParams:
    """Everything that determines a trained model, besides the data."""

    rank: int = 12
    iterations: int = 20
    reg: float = 0.15  # ALS lambda (pyspark.mllib scales it by each user's / movie's count)
    seed: int = 42
    bias: bool = True  # train ALS on the residuals of the damped-bias baseline
    user_damping: float = 5.0
    movie_damping: float = 10.0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Scale:
    """The rating scale: lowest, highest and the step between allowed values."""

    low: float
    high: float
    step: float

    def allows(self, rating: float) -> bool:
        if not (self.low <= rating <= self.high):
            return False
        steps = (rating - self.low) / self.step
        return abs(steps - round(steps)) < 1e-9

    def describe(self) -> str:
        return f"{self.low:g} to {self.high:g} in steps of {self.step:g}"

    @classmethod
    def infer(cls, ratings: np.ndarray) -> Scale:
        """Half stars when any rating is fractional (ml-latest), whole stars otherwise (ml-100k)."""
        if ratings.size == 0:
            return cls(0.5, 5.0, 0.5)
        step = 1.0 if np.all(ratings == np.round(ratings)) else 0.5
        return cls(float(ratings.min()), float(ratings.max()), step)


@dataclass
class FactorModel:
    """ALS factors and baseline biases, indexed by sorted user and movie ids."""

    mu: float
    user_ids: np.ndarray  # int64, sorted
    user_bias: np.ndarray
    user_factors: np.ndarray  # (users, rank); rows of users ALS did not see are zero
    movie_ids: np.ndarray  # int64, sorted
    movie_bias: np.ndarray
    movie_factors: np.ndarray  # (movies, rank)
    params: TrainParams
    scale: Scale
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._user_row = {int(u): i for i, u in enumerate(self.user_ids)}
        self._movie_row = {int(m): i for i, m in enumerate(self.movie_ids)}

    @property
    def rank(self) -> int:
        return int(self.movie_factors.shape[1])

    def user_row(self, user_id: int) -> int | None:
        return self._user_row.get(user_id)

    def movie_row(self, movie_id: int) -> int | None:
        return self._movie_row.get(movie_id)

    def movie_rows(self, movie_ids: np.ndarray) -> np.ndarray:
        """Rows of ``movie_ids`` in the movie arrays, -1 where the model has not seen the movie."""
        return _rows(self.movie_ids, np.asarray(movie_ids, dtype=np.int64))

    def clip(self, values):
        return np.clip(values, self.scale.low, self.scale.high)

    def _baseline(self, users, movies):
        upos = _rows(self.user_ids, np.asarray(users, dtype=np.int64))
        mpos = self.movie_rows(movies)
        bu = np.where(upos >= 0, self.user_bias[np.maximum(upos, 0)], 0.0)
        bi = np.where(mpos >= 0, self.movie_bias[np.maximum(mpos, 0)], 0.0)
        return self.mu + bu + bi, upos, mpos

    def baseline_pairs(self, users: np.ndarray, movies: np.ndarray) -> np.ndarray:
        """The biases-only prediction mu + b_user + b_movie, clipped to the scale."""
        return self.clip(self._baseline(users, movies)[0])

    def predict_pairs(self, users: np.ndarray, movies: np.ndarray) -> np.ndarray:
        """Predict many (user, movie) pairs at once; unseen ids fall back to the baseline."""
        baseline, upos, mpos = self._baseline(users, movies)
        both = (upos >= 0) & (mpos >= 0)
        dots = np.einsum("ij,ij->i", self.user_factors[np.maximum(upos, 0)],
                         self.movie_factors[np.maximum(mpos, 0)])
        return self.combine(baseline, dots, both)

    def combine(self, baseline, dots, has_factors):
        """The prediction rule, in one place: baseline plus factors (or factors alone for plain ALS);
        the baseline alone where the user or movie has no factors; clipped to the scale."""
        if self.params.bias:
            return self.clip(baseline + np.where(has_factors, dots, 0.0))
        return self.clip(np.where(has_factors, dots, baseline))

    def fold_in(self, movie_rows: np.ndarray, ratings: np.ndarray) -> tuple[float, np.ndarray]:
        """Compute one user's bias and factor vector with the movie side held fixed.

        This is the ALS least-squares step for a single user, with the same
        count-scaled regularisation pyspark.mllib uses, so a new or changed
        user is served at once without retraining.  Rows < 0 (movies the model
        has not seen) only count towards the bias.
        """
        ratings = np.asarray(ratings, dtype=np.float64)
        known = movie_rows >= 0
        bi = np.where(known, self.movie_bias[np.maximum(movie_rows, 0)], 0.0)
        bias = float(np.sum(ratings - self.mu - bi) / (len(ratings) + self.params.user_damping))
        rows = movie_rows[known]
        if rows.size == 0:
            return bias, np.zeros(self.rank)
        V = self.movie_factors[rows]
        target = ratings[known]
        if self.params.bias:
            target = target - self.mu - bias - bi[known]
        A = V.T @ V + self.params.reg * rows.size * np.eye(self.rank)
        return bias, np.linalg.solve(A, V.T @ target)

    # --- persistence -------------------------------------------------------------------

    def save(self, directory: Path, meta: dict) -> None:
        """Write arrays and metadata so that a crash at any point leaves the old model intact."""
        directory.mkdir(parents=True, exist_ok=True)
        name = f"model-{time.time_ns()}.npz"
        path = directory / name
        with open(path, "wb") as fh:
            np.savez(fh, mu=np.array(self.mu), user_ids=self.user_ids, user_bias=self.user_bias,
                     user_factors=self.user_factors, movie_ids=self.movie_ids,
                     movie_bias=self.movie_bias, movie_factors=self.movie_factors)
            fh.flush()
            os.fsync(fh.fileno())
        full_meta = {
            **meta,
            "format": FORMAT_VERSION,
            "arrays": name,
            "arrays_sha256": _sha256(path),
            "params": self.params.as_dict(),
            "scale": self.scale.__dict__,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        tmp = directory / "model.json.tmp"
        tmp.write_text(json.dumps(full_meta, indent=2, sort_keys=True))
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, directory / "model.json")
        _fsync_dir(directory)
        for old in directory.glob("model-*.npz"):
            if old.name != name:
                old.unlink(missing_ok=True)
        self.meta = full_meta

    @classmethod
    def load(cls, directory: Path) -> FactorModel:
        """Load a saved model, raising ModelError when it is absent or damaged."""
        meta_path = directory / "model.json"
        if not meta_path.exists():
            raise ModelError(f"no saved model in {directory}")
        try:
            meta = json.loads(meta_path.read_text())
            if meta.get("format") != FORMAT_VERSION:
                raise ModelError(f"{meta_path} has format {meta.get('format')}, expected {FORMAT_VERSION}")
            path = directory / meta["arrays"]
            if _sha256(path) != meta["arrays_sha256"]:
                raise ModelError(f"{path} does not match its checksum")
            with np.load(path) as data:
                arrays = {key: data[key] for key in data.files}
            model = cls(
                mu=float(arrays["mu"]), user_ids=arrays["user_ids"], user_bias=arrays["user_bias"],
                user_factors=arrays["user_factors"], movie_ids=arrays["movie_ids"],
                movie_bias=arrays["movie_bias"], movie_factors=arrays["movie_factors"],
                params=TrainParams(**meta["params"]), scale=Scale(**meta["scale"]), meta=meta,
            )
        except ModelError:
            raise
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelError(f"damaged model in {directory}: {exc}") from exc
        n_users, n_movies = len(model.user_ids), len(model.movie_ids)
        if (model.user_factors.shape[0] != n_users or model.movie_factors.shape[0] != n_movies
                or len(model.user_bias) != n_users or len(model.movie_bias) != n_movies):
            raise ModelError(f"damaged model in {directory}: array shapes disagree")
        return model


def _rows(sorted_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    if len(sorted_ids) == 0:
        return np.full(len(ids), -1)
    pos = np.minimum(np.searchsorted(sorted_ids, ids), len(sorted_ids) - 1)
    return np.where(sorted_ids[pos] == ids, pos, -1)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
