"""The operators' movie rules: hide a movie from every list, or show it only between two dates.

Stored in one transaction each (storage/people.py) and applied at once on every API process to every
list (serving/lists.py); a hidden movie can still be looked up, rated and predicted.
"""

from __future__ import annotations

import json
import logging

from serving.errors import NotFound, stored
from serving.recommender import Recommender
from serving.shelf import MovieRule
from serving.state import Served
from storage.people import NothingToChange, People

log = logging.getLogger(__name__)


class MovieRules:
    """Set, clear and list the movie rules over a recommender's store."""

    def __init__(self, recommender: Recommender):
        self.recommender = recommender
        self.people = People(recommender.store)

    def _entry(self, movie: int, rule: MovieRule, served: Served) -> dict:
        row = served.catalogue.row(movie)
        return {"movieId": movie, "title": None if row is None else served.catalogue.titles[row], **rule.as_json(),
                "shown_today": rule.shown_on(self.recommender.shelf.today())}

    def put(self, movie: int, body) -> dict:
        """Set the rule of a movie the catalogue has (NotFound otherwise) from a JSON body."""
        self.recommender.current().row(movie)
        rule = MovieRule.from_body(body)
        stored(lambda: self.people.set_rule(movie, json.dumps(rule.as_json())), "the rule")
        served = self.recommender.current()  # applied before the answer
        log.info("movie %d: rule set to %s", movie, rule.as_json())
        return self._entry(movie, rule, served)

    def delete(self, movie: int) -> dict:
        """Clear a movie's rule; NotFound when it has none."""
        try:
            stored(lambda: self.people.clear_rule(movie), "the rule", "cleared")
        except NothingToChange:
            raise NotFound(f"movie {movie} has no rule") from None
        self.recommender.current()
        return {"movieId": movie, "cleared": True}

    def list(self) -> dict:
        """Every rule, by movie id, and the day (UTC) the windows are judged by."""
        served = self.recommender.current()
        shelf = self.recommender.shelf
        return {"today": shelf.today().isoformat(),
                "movies": [self._entry(m, r, served) for m, r in sorted(shelf.rules.items())]}
