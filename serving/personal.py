"""A user's own data: forget them, withdraw one rating, hide movies from their lists.

Each change is stored in one transaction (storage/people.py) and folded in before the answer, here and,
with the next request's freshness read, on every other API process and host (serving/loader.py).
"""

from __future__ import annotations

import logging

import numpy as np

from serving.errors import InputError, NotFound, stored
from serving.recommender import Movie, Recommender
from serving.validation import check_user
from storage.people import MAX_HIDDEN, NothingToChange, People, TooMany

log = logging.getLogger(__name__)

MAX_HIDE = 1000  # movies one request may hide


class PersonalData:
    """Forgetting, withdrawals and hidden movies over a recommender's store."""

    def __init__(self, recommender: Recommender):
        self.recommender = recommender
        self.people = People(recommender.store)

    def forget(self, user: int) -> dict:
        """Forget ``user`` everywhere at once; what was removed: the posted ratings deleted from the store,
        and the user's ratings from the dataset files that serving and every later fit leave out."""
        check_user(user)
        served, _ = self.recommender.routed(user)
        before = served.ratings_of(user)
        _, removed, posted = stored(lambda: self.people.forget(user), "the request to forget this user")
        self.recommender.current()  # folded in (and this process's own records dropped) before the answer
        held = set() if before is None else set(served.catalogue.movie_ids[before.rows].tolist())
        log.info("user %d forgotten: %d posted rating(s) deleted", user, removed)
        return {"user": user, "posted_removed": removed, "dataset_ratings_excluded": len(held - posted)}

    def unrate(self, user: int, movie: int) -> dict:
        """Withdraw ``user``'s rating of ``movie``; NotFound when the movie is unknown or not rated by them."""
        check_user(user)
        served, _ = self.recommender.routed(user)
        row = served.row(movie)
        rated = served.ratings_of(user)
        if rated is None or not np.any(rated.rows == row):
            raise NotFound(f"user {user} has not rated movie {movie}")
        stored(lambda: self.people.unrate(user, movie), "the withdrawal")
        self.recommender.current()
        return {"user": user, "movieId": movie, "withdrawn": True}

    def hide(self, user: int, body) -> dict:
        """Hide the movies of ``body`` (a JSON array of movie ids) from every list ``user`` is shown."""
        check_user(user)
        if not isinstance(body, list) or not body:
            raise InputError("the body must be a JSON array of movie ids, such as [296, 318]")
        if len(body) > MAX_HIDE:
            raise InputError(f"one request may hide at most {MAX_HIDE} movies, not {len(body)}", 413)
        if not all(isinstance(m, int) and not isinstance(m, bool) for m in body):
            raise InputError("the body must be a JSON array of movie ids (whole numbers), such as [296, 318]")
        served, _ = self.recommender.routed(user)
        unknown = sorted({m for m in body if served.catalogue.row(m) is None})
        if unknown:
            raise InputError(f"unknown movie id(s): {', '.join(map(str, unknown[:10]))}", 404)
        try:
            stored(lambda: self.people.hide(user, sorted(set(body))), "the hidden movies")
        except TooMany as exc:
            raise InputError(f"{exc} (MAX_HIDDEN {MAX_HIDDEN})", 409) from None
        return self.hidden(user)

    def unhide(self, user: int, movie: int) -> dict:
        """Show ``movie`` to ``user`` again; NotFound when it was not hidden."""
        check_user(user)
        try:
            stored(lambda: self.people.unhide(user, movie), "the change")
        except NothingToChange:
            raise NotFound(f"user {user} has not hidden movie {movie}") from None
        return {"user": user, "movieId": movie, "hidden": False}

    def hidden(self, user: int) -> dict:
        """The movies ``user`` hid, by id."""
        check_user(user)
        served, _ = self.recommender.routed(user)
        movies: list[Movie] = []
        for movie in self.recommender.shelf.hidden_by(user).tolist():
            row = served.catalogue.row(movie)
            if row is not None:
                movies.append(self.recommender.movie_at(served, row))
        return {"user": user, "hidden": [{"movieId": m.movie_id, "title": m.title} for m in movies]}
