"""Fetch a MovieLens dataset into ``datasets/<name>/``, verifying its checksum.

The zip comes from the directory named by ``MOVIELENS_MIRROR`` when that is set,
otherwise from GroupLens.  Its checksum must match a known SHA-256, or the MD5
that GroupLens (or the mirror) publishes beside the zip as ``<name>.zip.md5``.

    python -m datasets.fetch ml-latest-small
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path

from progress import Progress

GROUPLENS = "https://files.grouplens.org/datasets/movielens/"
DATASETS_DIR = Path(__file__).resolve().parent
NAMES = ("ml-latest-small", "ml-latest", "ml-100k", "ml-1m", "ml-10m", "ml-20m", "ml-25m", "ml-32m")
# Checksums we have verified ourselves; others come from the published .md5 files.
KNOWN_SHA256 = {
    "ml-latest-small": "859da233c6929ebc9202e9516cdefa8a3c695aef67d1878249d6036c3513c023",
}
# The folder each zip unpacks to, when it differs from the name.
UNPACKS_TO = {"ml-10m": "ml-10M100K"}


class FetchError(Exception):
    """The dataset could not be fetched or verified; the message says why."""


def _digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _copy_with_progress(src, dst, total: int | None, label: str) -> None:
    """Copy a stream, showing a progress bar on a terminal and plain lines otherwise."""
    progress = Progress(label, total, " bytes")
    done = 0
    while block := src.read(1 << 20):
        dst.write(block)
        done += len(block)
        progress.update(done)
    progress.close()


def _open_source(name: str, mirror: str | None, suffix: str):
    """Open ``<name><suffix>`` in the mirror or at GroupLens; None if it is not there."""
    if mirror:
        path = Path(mirror) / f"{name}{suffix}"
        return (open(path, "rb"), path.stat().st_size) if path.exists() else None
    try:
        response = urllib.request.urlopen(GROUPLENS + name + suffix, timeout=60)
    except OSError:
        if suffix == ".zip":
            raise
        return None
    length = response.headers.get("Content-Length")
    return response, int(length) if length else None


def _expected_checksum(name: str, mirror: str | None) -> tuple[str, str]:
    if name in KNOWN_SHA256:
        return "sha256", KNOWN_SHA256[name]
    source = _open_source(name, mirror, ".zip.md5")
    if source is None:
        raise FetchError(f"no checksum known for {name}: place {name}.zip.md5 beside the zip")
    with source[0] as fh:
        text = fh.read().decode("ascii", "replace").split()
    md5 = next((word for word in text if len(word) == 32), None)
    if md5 is None:
        raise FetchError(f"unreadable checksum file for {name}")
    return "md5", md5.lower()


def fetch(name: str, dest: Path = DATASETS_DIR, mirror: str | None = None) -> Path:
    """Make sure ``dest/<name>`` holds the unpacked dataset; return that folder."""
    if name not in NAMES:
        raise FetchError(f"unknown dataset {name!r}; known: {', '.join(NAMES)}")
    target = dest / name
    if (target / ".verified").exists():
        return target
    mirror = mirror if mirror is not None else os.environ.get("MOVIELENS_MIRROR") or None
    algorithm, expected = _expected_checksum(name, mirror)
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        zip_path = Path(tmp) / f"{name}.zip"
        try:
            source = _open_source(name, mirror, ".zip")
        except OSError as exc:
            raise FetchError(f"cannot download {name} from GroupLens ({exc}); "
                             "set MOVIELENS_MIRROR to a folder holding the zip") from exc
        if source is None:
            raise FetchError(f"{name}.zip is not in the mirror {mirror}")
        with source[0] as src, open(zip_path, "wb") as dst:
            _copy_with_progress(src, dst, source[1], f"fetching {name}")
        actual = _digest(zip_path, algorithm)
        if actual != expected:
            raise FetchError(f"{name}.zip {algorithm} is {actual}, expected {expected}: refusing it")
        with zipfile.ZipFile(zip_path) as zf:
            zf.extractall(tmp)
        unpacked = Path(tmp) / UNPACKS_TO.get(name, name)
        if not unpacked.is_dir():
            raise FetchError(f"{name}.zip does not hold a {unpacked.name}/ folder")
        (unpacked / ".verified").write_text(f"{algorithm} {expected}\n")
        if target.exists():
            shutil.rmtree(target)
        unpacked.rename(target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", default=["ml-latest-small"], help="dataset names")
    parser.add_argument("--dest", type=Path, default=DATASETS_DIR, help="where to unpack")
    parser.add_argument("--mirror", default=None,
                        help="folder holding the zips (default: $MOVIELENS_MIRROR, else GroupLens)")
    args = parser.parse_args(argv)
    try:
        for name in args.names:
            print(fetch(name, args.dest, args.mirror))
    except (FetchError, OSError, zipfile.BadZipFile) as exc:
        print(f"datasets.fetch: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
