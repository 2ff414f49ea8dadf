"""Durable file writes: what a crash or power cut may leave is the old file or the new one, whole."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


def fsync_dir(directory: Path) -> None:
    """Make a folder's entries (files created or renamed in it) durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(path: Path, data: bytes) -> None:
    """Write ``data`` to a new file and fsync it (the caller renames or fsyncs the folder)."""
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def replace_durably(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``: a temporary file, fsync'd, renamed over it, and the folder fsync'd."""
    tmp = path.with_name(path.name + ".tmp")
    write_file(tmp, data)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_json_durably(path: Path, data) -> None:
    """Replace ``path`` with ``data`` as JSON, durably (see :func:`replace_durably`)."""
    replace_durably(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
