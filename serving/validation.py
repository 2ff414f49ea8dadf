"""What a batch of posted ratings must be before anything is stored: known movies, on the scale, each once."""

from __future__ import annotations

from model import Scale
from serving.errors import InputError
from storage.catalogue import Catalogue

MAX_ID = 2**31 - 1  # pyspark.mllib keeps ids as 32-bit ints
MAX_POST_RATINGS = 1000  # ratings one request may post by default (server.py --max-post-ratings)


def check_user(user: int) -> None:
    if not 0 <= user <= MAX_ID:
        raise InputError(f"user id {user} is outside 0..{MAX_ID}")


def check_ratings(catalogue: Catalogue, scale: Scale, pairs: list[tuple[int, float]],
                  labels: list[str] | None = None) -> list[int]:
    """Reject a batch that names an unknown movie, an off-scale rating, or one movie twice; return the
    movies' catalogue rows.

    ``labels`` name each pair in messages (such as "line 3"); by default "rating N".
    """
    if not pairs:
        raise InputError("no ratings given")
    labels = labels or [f"rating {i}" for i in range(1, len(pairs) + 1)]
    seen: set[int] = set()
    rows = []
    off_scale = [(label, rating) for label, (_, rating) in zip(labels, pairs, strict=True) if not scale.allows(rating)]
    for label, (movie, _) in zip(labels, pairs, strict=True):
        row = catalogue.row(movie)
        if row is None:
            raise InputError(f"{label}: unknown movie id {movie}")
        rows.append(row)
        if movie in seen:
            raise InputError(f"{label}: movie {movie} is rated twice in one request")
        seen.add(movie)
    if off_scale:
        raise InputError(scale_message(scale, off_scale, [r for _, r in pairs]))
    return rows


def scale_message(scale: Scale, off_scale: list[tuple[str, float]], ratings: list[float]) -> str:
    """Say which ratings are off the scale, how many, and whether the batch looks like a 1-10 scale."""
    label, rating = off_scale[0]
    message = f"{label}: {rating:g} is not on the scale {scale.describe()}"
    if len(off_scale) > 1:
        message += f" ({len(off_scale)} of {len(ratings)} ratings are off the scale)"
    if scale.high < 10 and all(1 <= r <= 10 and r == int(r) for r in ratings):
        message += (f"; this looks like a 1-10 scale (the Spark tutorial's user_ratings file uses one): "
                    f"this dataset uses {scale.low:g}-{scale.high:g}")
        if all(scale.allows(r / 2) for r in ratings):
            message += ", so halve the ratings"
    return message
