"""The ratings store's errors, apart so that :mod:`storage.group` and :mod:`storage.store` share them."""

from __future__ import annotations


class StoreError(RuntimeError):
    """The store could not take or answer a request (disk full, database down); nothing of it was stored."""


class StoreBusy(StoreError):
    """The store answers but could not take this request in time (a busy pool, a statement timeout, a
    deadlock): this request failed, nothing of it was stored, and the next one may go through."""
