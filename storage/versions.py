"""Published model versions in a folder that the trainer and every API process share.

    <model dir>/versions/
        CURRENT              the number of the version in service, replaced atomically
        v000007/             one immutable version
            version.json     what it is (data, the posted request it covers, parameters, fit times)
                             and the SHA-256 of each file below
            model-*.npy      the rating, ranking and neighbourhood models' arrays
            histories-*.npy  every user's ratings as of the version, and each movie's count and sum
            layout-*.npy     the arrays API processes serve from, in catalogue order (serving/snapshot.py)
            catalogue.json   movie ids, titles and genres

Arrays are plain ``.npy`` files that API processes map read-only (``mmap``): a
process starts without copying them, and the processes on one host share
their pages.

A version is written into a temporary folder (each file fsync'd), renamed whole
into place, and only then named in CURRENT (temporary file, fsync, rename), so a
trainer that dies at any point leaves the version in service as it was.  A writer
holds an exclusive ``flock`` on its temporary folder while it writes, and removes
the folder at once when the write fails (a full disk); the next trainer removes
only the folders nobody holds (a dead writer's).  An API process holds a shared ``flock`` on the
``version.json`` of the version it serves (released when it swaps or exits, also
on SIGKILL); pruning keeps the newest ``keep`` versions, the current one, the
versions the serving plan names (a pin, an experiment's arms: storage/steering.py)
and any version a process holds.  A candidate (published with ``serve`` False)
is a version CURRENT does not name: it serves only when pinned or in an experiment.

With a database store, versions published on another host arrive through
:meth:`ModelVersions.install` (storage/shipping.py): streamed into a temporary
folder, checked against ``version.json``'s checksums, then renamed and named in
CURRENT the same way, under ``install.lock`` (processes of one host install once).
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from model import (
    ModelError,
    ModelParams,
    Models,
    NeighbourModel,
    RankingModel,
    RatingModel,
    Scale,
    TransientModelError,
)
from storage.catalogue import Catalogue, Histories
from storage.files import fsync_dir, replace_durably, sha256, write_file

log = logging.getLogger(__name__)

FORMAT_VERSION = 5  # 4: a version folder with the catalogue and the users' ratings; 5: one .npy file an array
KEEP = 3
# Read errors that say nothing about the version (the process, the kernel or the disk is short of something
# for now): loading it again later may well work.
TRANSIENT_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.EIO, errno.ENOMEM, errno.EAGAIN, errno.EINTR,
                              errno.EBUSY, errno.ENOBUFS, errno.ETIMEDOUT, errno.ESTALE})


@dataclass
class Version:
    """One published version: the models, the catalogue and users' ratings they were trained on, and
    ``meta`` (version.json: ``version``, ``seq``, ``dataset``, ``params``, ``scale``, ``fit_seconds``...)."""

    models: Models
    catalogue: Catalogue
    histories: Histories
    meta: dict
    layout: dict = field(default_factory=dict)  # the serving layouts (serving/snapshot.py), mapped; {} if none

    @property
    def number(self) -> int:
        return int(self.meta["version"])

    @property
    def seq(self) -> int:
        """The last posted request the version was trained on."""
        return int(self.meta["seq"])


class Lease:
    """A process's hold on a version (a shared flock): pruning leaves the version alone while it lasts."""

    def __init__(self, fd: int, number: int):
        self._fd: int | None = fd
        self.number = number

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = None


class ModelVersions:
    """The versions folder: the trainer publishes and prunes, API processes read the pointer and load."""

    def __init__(self, model_dir: Path, keep: int = KEEP, protect: Callable[[], set[int]] | None = None):
        """``protect()``: versions pruning must keep whatever their age (the serving plan's pin and experiment
        arms, read from the ratings store); when it fails, nothing is pruned that time."""
        self.root = Path(model_dir) / "versions"
        self.keep = max(1, keep)
        self.protect = protect
        self._described: dict[int, dict] = {}  # a published version never changes: read once

    def path(self, number: int) -> Path:
        return self.root / f"v{number:06d}"

    def current(self) -> int | None:
        """The number of the version in service, or None before the first is published."""
        try:
            text = (self.root / "CURRENT").read_text().strip()
        except FileNotFoundError:
            return None
        if not text.isdigit():
            raise ModelError(f"{self.root / 'CURRENT'} holds {text[:40]!r}, not a version number")
        return int(text)

    def describe(self, number: int) -> dict | None:
        """A version's version.json without its arrays or checksums (None when unreadable): what it was
        fitted on, when, how long each model took."""
        if number not in self._described:
            try:
                meta = json.loads((self.path(number) / "version.json").read_text())
            except (OSError, ValueError):
                return None
            meta.pop("files", None)
            self._described[number] = meta
        return self._described[number]

    def numbers(self) -> list[int]:
        """Every complete version in the folder, oldest first."""
        if not self.root.is_dir():
            return []
        found = [int(p.name[1:]) for p in self.root.iterdir() if p.name.startswith("v") and p.name[1:].isdigit()]
        return sorted(found)

    # --- publishing (the trainer) ------------------------------------------------------------

    def publish(self, models: Models, catalogue: Catalogue, histories: Histories, meta: dict,
                after: int = 0, announce: Callable[[int], None] | None = None, serve: bool = True,
                layout: dict[str, np.ndarray] | None = None) -> int:
        """Write a new version and switch CURRENT to it (not with ``serve`` False: a candidate, served only
        when pinned or in an experiment); return its number (above ``after`` too: the newest a shared store
        holds, when this folder is one host's copy).  ``announce(number)`` runs once the files are written,
        before any process can see the version (the trainer records it in the ratings store).  ``layout``:
        the arrays API processes serve from, in catalogue order (``layout-*.npy``), so that they map them
        instead of each building a copy."""
        number = max([after, self.current() or 0, *self.numbers()]) + 1
        with self._scratch(number) as tmp:  # a failure (a full disk) takes the partial folder with it
            arrays = {**{f"model-{k}": v for k, v in _model_arrays(models).items()},
                      **{f"histories-{k}": getattr(histories, k) for k in Histories.FIELDS},
                      **{f"layout-{k}": v for k, v in (layout or {}).items()}}
            for name, array in arrays.items():
                with open(tmp / f"{name}.npy", "wb") as fh:  # a Fortran-ordered layout stays so
                    np.save(fh, array if array.flags.f_contiguous and array.ndim > 1 else np.ascontiguousarray(array),
                            allow_pickle=False)
                    fh.flush()
                    os.fsync(fh.fileno())
            write_file(tmp / "catalogue.json", json.dumps(catalogue.as_json()).encode())
            now = time.time()
            full = {**meta, "format": FORMAT_VERSION, "version": number, "params": models.params.as_dict(),
                    "scale": models.scale.__dict__, "created": now,
                    "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
                    "files": {name: sha256(tmp / name)
                              for name in [*(f"{a}.npy" for a in arrays), "catalogue.json"]}}
            write_file(tmp / "version.json", (json.dumps(full, indent=2, sort_keys=True) + "\n").encode())
            if announce is not None:
                announce(number)
            self._commit(tmp, number, serve)
        models.meta = full
        return number

    @contextmanager
    def _install_lock(self) -> Iterator[None]:
        """The folder's lock for renaming versions in, moving CURRENT and pruning: the API processes of a
        host may install at once, and any process may prune."""
        with open(self.root / "install.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _commit(self, tmp: Path, number: int, point: bool = True) -> None:
        """Rename a complete version folder into place and (``point``) name it in CURRENT unless a newer one
        is there already, then prune.  When that fails, a version it put in place that CURRENT does not
        name is removed again (its space back at once); a failed prune is only logged, as the version is
        out by then."""
        fsync_dir(tmp)
        with self._install_lock():
            placed = False
            try:
                if self.path(number).exists():  # another process of this host installed it first
                    shutil.rmtree(tmp, ignore_errors=True)
                else:
                    os.rename(tmp, self.path(number))
                    placed = True
                    fsync_dir(self.root)
                if point and (self.current() or 0) < number:
                    replace_durably(self.root / "CURRENT", f"{number}\n".encode())
            except BaseException:
                if placed and not self._named(number):
                    self._remove(number)
                raise
            try:
                self._prune(spare={number})  # an old version copied in to be pinned is not taken at once
            except (OSError, ModelError) as exc:
                log.warning("could not prune old model versions: %s", exc)

    def install(self, number: int, files: dict[str, Iterator[bytes]], point: bool = True) -> None:
        """Put a version published elsewhere (its files, streamed: ``version.json`` and those it names)
        into this folder and (``point``: it is the store's newest) switch to it, as :meth:`publish` does.
        Raises ModelError when a file does
        not match its checksum or is missing, TransientModelError when this host could not write it (a
        full disk: the version itself may be fine); either way the partial folder is gone."""
        with self._scratch(number) as tmp:
            try:
                for name, chunks in files.items():
                    if "/" in name or name.startswith("."):
                        raise ModelError(f"model version {number} names a file {name!r} outside its folder")
                    with open(tmp / name, "wb") as fh:
                        for chunk in chunks:
                            fh.write(chunk)
                        fh.flush()
                        os.fsync(fh.fileno())
                meta = json.loads((tmp / "version.json").read_text())
                for name, digest in meta["files"].items():
                    if not (tmp / name).exists() or sha256(tmp / name) != digest:
                        raise ModelError(f"model version {number}'s {name} does not match its checksum")
                self._commit(tmp, number, point)
            except OSError as exc:
                raise TransientModelError(f"could not install model version {number}: {exc}") from exc
            except (ValueError, KeyError) as exc:
                raise ModelError(f"could not install model version {number}: {exc}") from exc

    @contextmanager
    def _scratch(self, number: int) -> Iterator[Path]:
        """An empty temporary folder for version ``number``, held (an exclusive flock on the folder) while
        the block writes and commits it, so that :meth:`clean_partial` leaves it alone; removed at once
        when the block fails."""
        self.root.mkdir(parents=True, exist_ok=True)
        for _ in range(10):  # a clean_partial may take a folder between its mkdir and our flock
            tmp = self.root / f".publishing-v{number:06d}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            tmp.mkdir()
            try:
                fd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY)
            except FileNotFoundError:
                continue
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                if os.stat(tmp).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        else:
            raise TransientModelError(f"could not hold a temporary folder in {self.root}")
        try:
            yield tmp
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)  # nothing there once it was renamed into place
            raise
        finally:
            os.close(fd)  # drops the hold

    def _named(self, number: int) -> bool:
        """Whether CURRENT names ``number``, or cannot be read (then nothing is removed on its account)."""
        try:
            return self.current() == number
        except (OSError, ModelError):
            return True

    def _remove(self, number: int) -> bool:
        """Remove a version folder (renamed away first, so that no half-removed version shows); False
        when it was gone already (another process removed it) or could not be renamed."""
        path = self.path(number)
        grave = self.root / f".removing-{path.name}"
        shutil.rmtree(grave, ignore_errors=True)  # a dead pruner's, of a number used again since
        try:
            os.rename(path, grave)
        except FileNotFoundError:
            return False
        except OSError as exc:
            log.warning("could not remove model version %d: %s", number, exc)
            return False
        shutil.rmtree(grave, ignore_errors=True)
        return True

    def prune(self) -> list[int]:
        """Remove versions beyond the newest ``keep`` that are not current, not protected (pinned or in an
        experiment) and that no process holds."""
        if not self.root.is_dir():
            return []
        with self._install_lock():
            return self._prune()

    def _prune(self, spare: set[int] | frozenset[int] = frozenset()) -> list[int]:
        """:meth:`prune`, with the install lock held, leaving ``spare`` too; a version another process removed
        meanwhile is skipped."""
        current = self.current()
        old = [n for n in self.numbers()[:-self.keep] if n != current and n not in spare]
        if not old:
            return []
        try:
            protected = self.protect() if self.protect is not None else set()
        except Exception as exc:  # the store is away: which versions the plan names is unknown
            log.warning("not pruning model versions: could not read which ones serve (%s)", exc)
            return []
        removed = []
        for number in old:
            if number in protected:
                continue
            path = self.path(number)
            try:
                fd = os.open(path / "version.json", os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)  # a process serves it: leave it for a later prune
                continue
            try:
                if self._remove(number):
                    removed.append(number)
            finally:
                os.close(fd)
        if removed:
            log.info("removed old model version(s) %s", ", ".join(map(str, removed)))
        return removed

    def clean_partial(self) -> None:
        """Remove what a publisher, installer or pruner that died left behind (a temporary folder that a
        live process holds is its work in progress, and stays), and the single model files of the layout
        before versions (``model.json``, ``model-*.npz``); call with the trainer lock held."""
        if self.root.is_dir():
            for entry in self.root.iterdir():
                if entry.name.startswith(".removing-"):
                    shutil.rmtree(entry, ignore_errors=True)
                elif not (entry.name.startswith(".publishing-") and _remove_unheld(entry)):
                    continue
                log.info("removed %s, left by a process that stopped mid-publish", entry.name)
        for old in [self.root.parent / "model.json", *self.root.parent.glob("model-*.npz")]:
            if old.exists():
                old.unlink()
                log.info("removed %s, a model file of the layout before versions", old.name)

    # --- loading (API processes) ---------------------------------------------------------------

    def load(self, number: int | None = None) -> tuple[Version, Lease]:
        """The version ``number`` (default: the current one), verified against its checksums, and a lease
        on it.  Raises ModelError when there is none or it is damaged."""
        for _ in range(10):  # CURRENT moved on and the version was pruned between reading and locking
            wanted = number if number is not None else self.current()
            if wanted is None:
                raise ModelError(f"no model version has been published in {self.root} yet")
            path = self.path(wanted)
            try:
                fd = os.open(path / "version.json", os.O_RDONLY)
            except FileNotFoundError:
                if number is not None:  # not here yet (a copy from a database store may bring it): not damage
                    raise TransientModelError(f"model version {number} is not in {self.root}") from None
                continue
            except OSError as exc:
                raise _unreadable(path, exc) from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_SH)
            except OSError as exc:
                os.close(fd)
                raise _unreadable(path, exc) from exc
            try:
                still_there = os.stat(path / "version.json").st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                still_there = False
            if not still_there:
                os.close(fd)
                continue
            try:
                version = _read(path)
                version.meta["version"] = wanted  # the folder's number is the version's, whatever the file says
                return version, Lease(fd, wanted)
            except BaseException:
                os.close(fd)
                raise
        raise ModelError(f"could not pin a model version in {self.root}: versions are being replaced too fast")


def _remove_unheld(folder: Path) -> bool:
    """Remove a temporary folder unless its writer holds it (see ``ModelVersions._scratch``); whether it
    was removed."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:  # gone (its writer finished) or not a folder
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False  # a live process is writing it
    try:
        shutil.rmtree(folder, ignore_errors=True)  # by name: a folder renamed into place meanwhile is not it
        return True
    finally:
        os.close(fd)


def _unreadable(path: Path, exc: OSError) -> ModelError:
    """The ModelError for a version that could not be read: transient when the error says nothing about
    the version (too many open files, an I/O error, no memory for a mapping), else damaged."""
    if exc.errno in TRANSIENT_ERRNOS:
        return TransientModelError(f"could not read the model version in {path} for now: {exc}")
    return ModelError(f"damaged model version in {path}: {exc}")


def _read(path: Path) -> Version:
    meta_path = path / "version.json"
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != FORMAT_VERSION:
            raise ModelError(f"{meta_path} has format {meta.get('format')}, expected {FORMAT_VERSION}")
        for name, digest in meta["files"].items():
            if sha256(path / name) != digest:
                raise ModelError(f"{path / name} does not match its checksum")
        # Mapped read-only; viewed as plain arrays, whose indexing skips np.memmap's Python-level __getitem__.
        arrays = {name[:-4]: np.load(path / name, mmap_mode="r", allow_pickle=False).view(np.ndarray)
                  for name in meta["files"] if name.endswith(".npy")}
        histories = Histories(**{k: arrays[f"histories-{k}"] for k in Histories.FIELDS})
        layout = {k[len("layout-"):]: v for k, v in arrays.items() if k.startswith("layout-")}
        catalogue = _catalogue(path / "catalogue.json", meta["files"]["catalogue.json"])
        models = _models({k[len("model-"):]: v for k, v in arrays.items() if k.startswith("model-")},
                         ModelParams.from_dict(meta["params"], str(meta_path)), Scale(**meta["scale"]), meta)
    except ModelError:
        raise
    except OSError as exc:
        raise _unreadable(path, exc) from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"damaged model version in {path}: {exc}") from exc
    if not (_shapes_agree(models.rating) and _shapes_agree(models.ranking)
            and models.neighbours.neighbours.shape == models.neighbours.similarity.shape
            and len(models.neighbours.neighbours) == len(models.rating.movie_ids)
            and len(histories.starts) == len(histories.users) + 1 and len(histories.rows) == len(histories.values)
            and len(histories.counts) == len(histories.sums) == len(catalogue)
            and (not len(histories.rows) or int(histories.rows.max()) < len(catalogue))
            and all(len(a) == len(catalogue) for a in layout.values())):
        raise ModelError(f"damaged model version in {path}: array shapes disagree")
    return Version(models, catalogue, histories, meta, layout)


_catalogues: dict[str, Catalogue] = {}  # by checksum: the last few loaded


def _catalogue(path: Path, digest: str) -> Catalogue:
    """The catalogue in ``path`` (checked against ``digest`` already).  Versions of one dataset share it, so
    a swap reuses the one loaded before instead of parsing 10,000 titles again: that Python work held the
    GIL for about 30 ms in the middle of requests on ml-latest-small."""
    catalogue = _catalogues.get(digest)
    if catalogue is None:
        catalogue = Catalogue.from_json(json.loads(path.read_text()))
        while len(_catalogues) >= 2:
            _catalogues.pop(next(iter(_catalogues)))
        _catalogues[digest] = catalogue
    return catalogue


def _model_arrays(models: Models) -> dict[str, np.ndarray]:
    r, k, n = models.rating, models.ranking, models.neighbours
    return {"mu": np.array([r.mu]), "user_ids": r.user_ids, "user_bias": r.user_bias, "user_factors": r.user_factors,
            "movie_ids": r.movie_ids, "movie_bias": r.movie_bias, "movie_factors": r.movie_factors,
            "rank_user_ids": k.user_ids, "rank_user_factors": k.user_factors, "rank_movie_ids": k.movie_ids,
            "rank_movie_factors": k.movie_factors, "neighbours": n.neighbours, "similarity": n.similarity}


def _models(a: dict, params: ModelParams, scale: Scale, meta: dict) -> Models:
    rating = RatingModel(mu=float(a["mu"][0]), user_ids=a["user_ids"], user_bias=a["user_bias"],
                         user_factors=a["user_factors"], movie_ids=a["movie_ids"], movie_bias=a["movie_bias"],
                         movie_factors=a["movie_factors"], params=params.rating, scale=scale)
    ranking = RankingModel(user_ids=a["rank_user_ids"], user_factors=a["rank_user_factors"],
                           movie_ids=a["rank_movie_ids"], movie_factors=a["rank_movie_factors"], params=params.ranking)
    return Models(rating, ranking, NeighbourModel(a["neighbours"], a["similarity"], params.neighbours), meta)


def _shapes_agree(model) -> bool:
    n_users, n_movies = len(model.user_ids), len(model.movie_ids)
    ok = model.user_factors.shape[0] == n_users and model.movie_factors.shape[0] == n_movies
    if isinstance(model, RatingModel):
        ok = ok and len(model.user_bias) == n_users and len(model.movie_bias) == n_movies
    return ok and model.user_factors.shape[1] == model.movie_factors.shape[1]
