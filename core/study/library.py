"""The study library: case studies saved on the server for everyone who uses it, opened again later.

Layout of the library's folder::

    library.sqlite3     the index: one row per study in the table ``studies`` (title, note, model,
                        image set, metrics, size, when it was saved); SQLite in WAL mode, so
                        ``library.sqlite3-wal`` and ``-shm`` sit beside it while it is open
    <id>.zip            a study's result bundle, exactly the bytes that were saved; its id is their
                        sha256 (64 lowercase hex characters), so one study saved twice is one study
    .headscope-save-<random>.tmp
                        a save under way, or one that a crash interrupted

The folder is ``$HEADSCOPE_LIBRARY`` (``off`` turns the library off), else the user's data folder
(``~/.local/share/headscope/library`` on Linux); the first save creates it, and nothing else
touches the disk before that.

Atomicity: a save writes the bytes to a temporary file in the folder and syncs it; then, holding
the index's write lock, it renames the file to ``<id>.zip``, syncs the folder and inserts the row,
and commits. A crash therefore leaves at worst a temporary file or a ``<id>.zip`` without a row,
which no listing shows; never a row without its file. A later save removes the library's own
temporary files once they are an hour old (a younger one may be another process's save under
way) and nothing else in the folder: a ``<id>.zip`` without a row stays (saving that study again
reuses it), and a folder that holds other files keeps them. A removal deletes the row in one
transaction, then the file in a second one, unless a session saved the same study again between
the two.

Concurrency: each call opens its own connection to the index, so the dashboard's sessions and the
command line read while one of them writes, and writers wait for each other (up to 30 s). Whether
a study is there already and whether it fits the quota are decided under the write lock, so two
sessions saving at once neither store one study twice nor take the library past its quota. The
folder must be on a local disk: SQLite's WAL mode shares memory between the processes that use it,
which network file systems do not provide.

Trust: a study's bytes are checked against their id each time they are read, then opened with
``load_bundle`` like any upload; listing compares only each file's size with its row. Ids and
search texts come from users: an id names a file only once it is 64 hex characters, searches
are matched in Python, and every SQL statement takes its values as parameters.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import sqlite3
import time
from dataclasses import astuple, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator, Mapping

import platformdirs

from core.errors import (
    BundleRejected,
    InvalidSetting,
    LibraryFull,
    LibraryUnavailable,
    StudyDamaged,
    StudyNotFound,
    human_size,
)
from core.settings import DEFAULT_LIBRARY_MB, DEFAULT_STUDY_MB
from core.study.bundle import _shown, _synced_temporary, load_bundle
from core.study.casestudy import CaseStudy

__all__ = [
    "ENV_LIBRARY",
    "ENV_LIBRARY_MB",
    "INDEX",
    "MAX_NOTE_CHARS",
    "MAX_TITLE_CHARS",
    "OFF",
    "Library",
    "LibraryEntry",
    "default_folder",
    "library_from_environment",
    "study_id",
]

ENV_LIBRARY = "HEADSCOPE_LIBRARY"  # folder of the library; "off" (any case) turns it off
ENV_LIBRARY_MB = "HEADSCOPE_LIBRARY_MB"  # quota of the whole library in MB
OFF = "off"
INDEX = "library.sqlite3"
MAX_TITLE_CHARS = 200
MAX_NOTE_CHARS = 2000

_SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS studies (
    id TEXT PRIMARY KEY,
    title TEXT NOT NULL,
    note TEXT NOT NULL,
    model_name TEXT NOT NULL,
    model_key TEXT NOT NULL,
    image_set_title TEXT NOT NULL,
    images INTEGER NOT NULL,
    metrics TEXT NOT NULL,  -- a JSON list of names
    format_version INTEGER NOT NULL,
    size INTEGER NOT NULL,
    saved TEXT NOT NULL
)
"""
# In the order of LibraryEntry's fields, without ``damaged`` (found on disk, not stored).
_COLUMNS = "id, title, note, model_name, model_key, image_set_title, images, metrics, format_version, size, saved"
_INSERT = f"INSERT INTO studies ({_COLUMNS}) VALUES ({', '.join('?' for _ in _COLUMNS.split(','))})"
_USAGE = "SELECT COALESCE(SUM(size), 0), COUNT(*) FROM studies"
_ID = re.compile(r"[0-9a-f]{64}")
_PREFIX = re.compile(r"[0-9a-f]{8,64}")
_MIN_PREFIX = 8
# A leftover younger than this may be a save under way in another process: it is left alone.
_LEFTOVER_SECONDS = 3600
_TEMPORARY_PREFIX = ".headscope-save-"  # the only files of the folder a save may delete
_WAIT_SECONDS = 30  # how long a writer waits for another one's lock
_MISSING = "The file of this study is missing from the library folder."
_CHANGED = "The file of this study changed on disk since it was saved."


def _no_pause() -> None:
    """Nothing. Tests put a pause here to stop a process between a save's rename and its commit."""


_before_commit: Callable[[], None] = _no_pause


@dataclass(frozen=True)
class LibraryEntry:
    """One study of the library, as its index row describes it.

    Attributes:
        id: sha256 of the bundle's bytes (64 lowercase hex characters); the file is ``<id>.zip``.
        title: the title it was saved under (stripped).
        note: the saver's note, as given.
        model_name: ``manifest["model"]["name"]``.
        model_key: ``manifest["model"]["key"]``.
        image_set_title: ``manifest["image_set"]["title"]``.
        images: images in the image set.
        metrics: the importance metrics the study holds (``CaseStudy.metrics``).
        format_version: the bundle's format version.
        size: bytes of the bundle file.
        saved: when it was saved: ISO 8601 UTC to the second, ``2026-12-07T04:31:02+00:00``.
        damaged: one sentence when the file is missing or its size differs from ``size``, else None.
    """

    id: str
    title: str
    note: str
    model_name: str
    model_key: str
    image_set_title: str
    images: int
    metrics: tuple[str, ...]
    format_version: int
    size: int
    saved: str
    damaged: str | None = None


def study_id(data: bytes) -> str:
    """The id a bundle's bytes have in the library: their sha256 in hex."""
    return hashlib.sha256(data).hexdigest()


def default_folder() -> Path:
    """The library's folder when ``HEADSCOPE_LIBRARY`` is unset: ``library`` in the user's data folder."""
    return platformdirs.user_data_path("headscope") / "library"


def library_from_environment(
    environ: Mapping[str, str] | None = None, *, max_study_bytes: int | None = None
) -> Library | None:
    """The library the environment asks for (``os.environ`` when ``environ`` is None); nothing is read on disk.

    Args:
        environ: ``HEADSCOPE_LIBRARY``: its folder, or ``off`` for none (unset: ``default_folder()``);
            ``HEADSCOPE_LIBRARY_MB``: its quota in MB (unset: ``DEFAULT_LIBRARY_MB``).
        max_study_bytes: cap on one study (None: ``DEFAULT_STUDY_MB``).

    Returns:
        The library, or None when it is off.

    Raises:
        InvalidSetting: ``HEADSCOPE_LIBRARY_MB`` is not a positive whole number.
    """
    environ = os.environ if environ is None else environ
    folder = environ.get(ENV_LIBRARY, "").strip()
    if folder.lower() == OFF:
        return None
    quota = environ.get(ENV_LIBRARY_MB, "").strip() or str(DEFAULT_LIBRARY_MB)
    if not (quota.isascii() and quota.isdecimal()) or int(quota) < 1:
        raise InvalidSetting(
            f"{ENV_LIBRARY_MB} must be a whole number of megabytes such as {DEFAULT_LIBRARY_MB}, not '{_shown(quota)}'."
        )
    return Library(
        Path(folder).expanduser() if folder else default_folder(),
        quota_bytes=int(quota) * 2**20,
        max_study_bytes=DEFAULT_STUDY_MB * 2**20 if max_study_bytes is None else max_study_bytes,
    )


class Library:
    """The studies saved in one folder on the server, shared by every session and the command line.

    Attributes:
        folder: the library's folder (absolute).
        quota_bytes: the most the studies together may take.
        max_study_bytes: the most one study may take.
    """

    def __init__(
        self,
        folder: str | os.PathLike[str],
        *,
        quota_bytes: int = DEFAULT_LIBRARY_MB * 2**20,
        max_study_bytes: int = DEFAULT_STUDY_MB * 2**20,
    ) -> None:
        self.folder = Path(folder).absolute()
        self.quota_bytes = quota_bytes
        self.max_study_bytes = max_study_bytes

    # --- saving and removing ------------------------------------------------------------------

    def add(self, data: bytes, *, title: str, note: str = "") -> LibraryEntry:
        """Save a bundle under a title; when the library holds these bytes already, the study saved then.

        Saving the same bytes again also restores the study's file if it went missing or changed size.

        Raises:
            InvalidSetting: the title is empty, or the title or the note is too long or not text.
            LibraryFull: the bundle is larger than ``max_study_bytes`` (checked before it is read), or
                it would take the library past ``quota_bytes``.
            BundleRejected: the bytes are no bundle HeadScope opens; nothing is written.
            LibraryUnavailable: the folder or its index cannot be created or written.
        """
        title = _checked_text(title, note)
        if len(data) > self.max_study_bytes:
            raise LibraryFull(
                f"This study is {human_size(len(data))}; a study in the library is at most "
                f"{human_size(self.max_study_bytes)}."
            )
        entry = _described(data, title, note)
        known = self._known(entry.id)
        if known is not None and known.damaged is None:
            return known
        if known is None:  # before writing anything; decided again under the write lock
            self._check_room(entry.size, *self.usage())
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with self._connection(write=True) as connection:
                self._sweep(connection)
                return self._commit(connection, self._temporary(data), entry)
        except OSError as err:
            raise self._unavailable("written", err) from None

    def remove(self, study_id: str) -> None:
        """Delete a study: its row, then its file (also when the file is damaged or missing).

        Raises:
            StudyNotFound: no study has this id.
            LibraryUnavailable: the index cannot be written.
        """
        if not _is_id(study_id) or not self._has_index():
            raise self._not_found(study_id)
        with self._connection(write=True) as connection:
            with _write_lock(connection):
                deleted = connection.execute("DELETE FROM studies WHERE id = ?", (study_id,)).rowcount
            if not deleted:
                raise self._not_found(study_id)
            with _write_lock(connection):
                # a session that saved the same study again meanwhile owns the file now
                if self._row(connection, study_id) is None:
                    # the row is gone, so the study is removed; a file that stays is swept by a later save
                    with contextlib.suppress(OSError):
                        self._file(study_id).unlink(missing_ok=True)

    # --- listing ------------------------------------------------------------------------------

    def entries(self, text: str = "", model: str | None = None) -> list[LibraryEntry]:
        """The studies, newest first (then by id), each with ``damaged`` filled from its file's size.

        Args:
            text: kept when its title, note, model name or image-set title holds this text
                (stripped, any case; matched literally).
            model: kept when its model name is exactly this.
        """
        needle = text.strip().casefold()
        rows = self._query(f"SELECT {_COLUMNS} FROM studies ORDER BY saved DESC, id")
        found = [self._entry(row) for row in rows]
        return [
            self._inspected(entry)
            for entry in found
            if (model is None or entry.model_name == model) and _matches(entry, needle)
        ]

    def models(self) -> list[str]:
        """The names of the models the studies were computed with, sorted, each once."""
        return sorted(row[0] for row in self._query("SELECT DISTINCT model_name FROM studies"))

    def usage(self) -> tuple[int, int]:
        """Bytes taken by the studies in the index, and how many there are."""
        rows = self._query(_USAGE)
        return (int(rows[0][0]), int(rows[0][1])) if rows else (0, 0)

    def get(self, study_id: str) -> LibraryEntry:
        """The study with this id (any string: one that is no id is not found).

        Raises:
            StudyNotFound: no study has this id.
        """
        known = self._known(study_id) if _is_id(study_id) else None
        if known is None:
            raise self._not_found(study_id)
        return known

    def find(self, prefix: str) -> LibraryEntry:
        """The one study whose id starts with ``prefix``: at least 8 hex characters, any case (for the command line).

        Raises:
            StudyNotFound: the prefix is too short or not hex, or it matches no study or several.
        """
        wanted = prefix.strip().lower()
        if not _PREFIX.fullmatch(wanted):
            raise StudyNotFound(
                f"The study id '{_shown(prefix)}' is too short or not hex: give at least {_MIN_PREFIX} of the hex "
                "characters (0-9, a-f) the id starts with."
            )
        rows = self._query(
            f"SELECT {_COLUMNS} FROM studies WHERE substr(id, 1, ?) = ? ORDER BY id LIMIT 2", (len(wanted), wanted)
        )
        if not rows:
            raise StudyNotFound(f"No study in the library has an id starting with '{wanted}'.")
        if len(rows) > 1:
            raise StudyNotFound(f"Several studies in the library have ids starting with '{wanted}'; give more of the id.")
        return self._inspected(self._entry(rows[0]))

    # --- reading ------------------------------------------------------------------------------

    def read(self, study_id: str) -> bytes:
        """The study's bundle bytes, checked against its id.

        Raises:
            StudyNotFound: no study has this id.
            StudyDamaged: its file is missing, larger than ``max_study_bytes`` or not the bytes saved.
        """
        return self._bytes(self.get(study_id))

    def open(self, study_id: str, *, model_key: str | None = None, model_name: str | None = None) -> CaseStudy:
        """The study, opened with ``load_bundle`` (``model_key`` and ``model_name`` as there).

        Raises:
            StudyNotFound: no study has this id.
            StudyDamaged: its file is damaged (see :meth:`read`), or its bytes no longer open as a bundle.
            BundleRejected: the study was computed with a model other than ``model_key``.
        """
        entry = self.get(study_id)
        data = self._bytes(entry)
        try:
            return load_bundle(data, model_key=model_key, model_name=model_name)
        except BundleRejected as err:
            if model_key is not None and model_key != entry.model_key:
                raise  # not damage: its sentence says which model to load
            raise StudyDamaged(f"The study '{_shown(entry.title)}' in the library no longer opens: {err}") from None

    # --- the folder ---------------------------------------------------------------------------

    @property
    def _index(self) -> Path:
        return self.folder / INDEX

    def _file(self, study_id: str) -> Path:
        return self.folder / f"{study_id}.zip"

    def _has_index(self) -> bool:
        try:
            return self._index.is_file()
        except OSError as err:
            raise self._unavailable("read", err) from None

    def _bytes(self, entry: LibraryEntry) -> bytes:
        """The bytes of the study's file once they are the ones saved under its id."""
        shown = _shown(entry.title)
        if entry.size > self.max_study_bytes:  # saved when the cap on one study was higher
            raise StudyDamaged(
                f"The study '{shown}' is {human_size(entry.size)}; this server opens studies of at most "
                f"{human_size(self.max_study_bytes)}, so it is not opened."
            )
        try:
            with self._file(entry.id).open("rb") as file:
                data = file.read(entry.size + 1)  # a byte more shows a file that grew
        except FileNotFoundError:
            self.get(entry.id)  # removed meanwhile: not found, not damaged
            raise StudyDamaged(f"The file of study '{shown}' is missing from the library folder, so it is not opened.") from None
        except OSError as err:
            raise StudyDamaged(f"The file of study '{shown}' cannot be read ({_shown(err.strerror or err)}).") from None
        if len(data) != entry.size or study_id(data) != entry.id:
            raise StudyDamaged(f"The file of study '{shown}' changed on disk since it was saved, so it is not opened.")
        return data

    def _inspected(self, entry: LibraryEntry) -> LibraryEntry:
        """The entry with ``damaged`` said when its file is missing or not the size saved (nothing is hashed)."""
        try:
            size = self._file(entry.id).stat().st_size
        except OSError:
            return replace(entry, damaged=_MISSING)
        return entry if size == entry.size else replace(entry, damaged=_CHANGED)

    def _temporary(self, data: bytes) -> Path:
        """A new file in the folder holding ``data``, synced to disk and readable by all."""
        return _synced_temporary(data, self.folder, _TEMPORARY_PREFIX)

    def _commit(self, connection: sqlite3.Connection, temporary: Path, entry: LibraryEntry) -> LibraryEntry:
        """Rename the written file to its study's and insert its row, in one transaction under the write lock.

        Returns:
            The entry saved, or the one already there (whose file the rename restores).
        """
        target = self._file(entry.id)
        try:
            with _write_lock(connection):
                known = self._row(connection, entry.id)
                if known is None:
                    self._check_room(entry.size, *connection.execute(_USAGE).fetchone())
                    entry = replace(entry, saved=_now())
                os.replace(temporary, target)
                try:
                    _sync_folder(self.folder)  # the rename reaches the disk before the row does
                    if known is None:
                        connection.execute(_INSERT, _values(entry))
                    _before_commit()
                except BaseException:
                    if known is None:  # still under the lock: no other save of this study can own the file yet
                        target.unlink(missing_ok=True)
                    raise
            return known or entry
        finally:
            temporary.unlink(missing_ok=True)

    def _sweep(self, connection: sqlite3.Connection) -> None:
        """Delete the temporary files crashed saves left, an hour old or more; nothing else in the folder."""
        cutoff = time.time() - _LEFTOVER_SECONDS
        with _write_lock(connection):
            for path in self.folder.glob(f"{_TEMPORARY_PREFIX}*.tmp"):
                if _modified(path) < cutoff:
                    with contextlib.suppress(OSError):  # removed by its owner meanwhile, or not a file
                        path.unlink()

    def _check_room(self, size: int, used: int, count: int) -> None:
        if used + size > self.quota_bytes:
            raise LibraryFull(
                f"Saving this study ({human_size(size)}) would take the library past its limit of "
                f"{human_size(self.quota_bytes)}: {human_size(used)} is used by {_studies(count)}. Delete studies on "
                f"the Library page (or with python -m core library remove) or raise {ENV_LIBRARY_MB}."
            )

    # --- the index ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _connection(self, *, write: bool) -> Iterator[sqlite3.Connection]:
        """A connection to the index, closed after use; a writer's creates the index and its table if missing.

        Any SQLite error inside it becomes :class:`LibraryUnavailable`.
        """
        uri = f"{self._index.as_uri()}?mode={'rwc' if write else 'rw'}"
        try:
            connection = sqlite3.connect(uri, uri=True, timeout=_WAIT_SECONDS, isolation_level=None)
            with contextlib.closing(connection):
                connection.execute(f"PRAGMA busy_timeout = {_WAIT_SECONDS * 1000}")
                # readers go on while one session writes, and a crash mid-write leaves the index whole
                connection.execute("PRAGMA journal_mode = WAL")
                if write:
                    self._create_schema(connection)
                yield connection
        except sqlite3.Error as err:
            raise self._unavailable("written" if write else "read", err) from None

    def _create_schema(self, connection: sqlite3.Connection) -> None:
        if self._schema_version(connection) == 0:
            with _write_lock(connection):
                if self._schema_version(connection) == 0:  # not made by another process meanwhile
                    connection.execute(_SCHEMA)
                    connection.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")

    def _schema_version(self, connection: sqlite3.Connection) -> int:
        """The index's version: 0 before its table is made."""
        version = connection.execute("PRAGMA user_version").fetchone()[0]
        if version > _SCHEMA_VERSION:
            raise LibraryUnavailable(
                f"The study library at {_shown(self.folder)} was written by a newer HeadScope; update HeadScope, "
                f"or set {ENV_LIBRARY} to another folder."
            )
        return version

    def _query(self, sql: str, parameters: tuple[object, ...] = ()) -> list[tuple]:
        """The rows of a read-only query; none while nothing was ever saved (the folder is not created)."""
        if not self._has_index():
            return []
        with self._connection(write=False) as connection:
            if self._schema_version(connection) == 0:
                return []
            return connection.execute(sql, parameters).fetchall()

    def _known(self, study_id: str) -> LibraryEntry | None:
        """The study with this (well-formed) id and its file's state, or None."""
        rows = self._query(f"SELECT {_COLUMNS} FROM studies WHERE id = ?", (study_id,))
        return self._inspected(self._entry(rows[0])) if rows else None

    def _row(self, connection: sqlite3.Connection, study_id: str) -> LibraryEntry | None:
        row = connection.execute(f"SELECT {_COLUMNS} FROM studies WHERE id = ?", (study_id,)).fetchone()
        return None if row is None else self._entry(row)

    def _entry(self, row: tuple) -> LibraryEntry:
        try:
            metrics = json.loads(row[7])
            return LibraryEntry(*row[:7], tuple(str(name) for name in metrics), *row[8:])
        except (ValueError, TypeError):
            raise LibraryUnavailable(
                f"The study library's index at {_shown(self._index)} is damaged; set {ENV_LIBRARY} to another folder, "
                "or restore the index from a backup."
            ) from None

    def _unavailable(self, action: str, err: BaseException) -> LibraryUnavailable:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        able = "writable" if action == "written" else "readable"
        return LibraryUnavailable(
            f"The study library at {_shown(self.folder)} cannot be {action} ({_shown(reason)}); HeadScope works "
            f"without it. Set {ENV_LIBRARY} to a {able} folder, or to {OFF}."
        )

    def _not_found(self, study_id: object) -> StudyNotFound:
        return StudyNotFound(f"No study in the library has the id '{_shown(study_id)}'; it may have been deleted.")


@contextlib.contextmanager
def _write_lock(connection: sqlite3.Connection) -> Iterator[None]:
    """One write transaction: other writers wait until it ends, and readers see all of it or none."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")


def _checked_text(title: str, note: str) -> str:
    """The title, stripped, once it and the note are fit to save.

    Raises:
        InvalidSetting: the title is empty, either is too long, or holds what is not text.
    """
    title = title.strip()
    if not title:
        raise InvalidSetting("Give the study a title to save it in the library.")
    for name, text, most in (("title", title, MAX_TITLE_CHARS), ("note", note, MAX_NOTE_CHARS)):
        if len(text) > most:
            raise InvalidSetting(f"A study's {name} is at most {most:,} characters; this one has {len(text):,}.")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # bytes the terminal could not decode, carried as lone surrogates
            raise InvalidSetting(f"The study's {name} holds bytes that are not text; type it again.") from None
    return title


def _described(data: bytes, title: str, note: str) -> LibraryEntry:
    """The entry of a bundle opened with any model (``saved`` is set when it is committed).

    Raises:
        BundleRejected: the bytes are no bundle HeadScope opens.
    """
    study = load_bundle(data)
    manifest = study.manifest
    return LibraryEntry(
        id=study_id(data),
        title=title,
        note=note,
        model_name=str(manifest["model"]["name"]),
        model_key=str(manifest["model"]["key"]),
        image_set_title=str(manifest["image_set"]["title"]),
        images=len(manifest["image_set"]["images"]),
        metrics=tuple(study.metrics),
        format_version=int(manifest["format_version"]),
        size=len(data),
        saved="",
    )


def _values(entry: LibraryEntry) -> tuple[object, ...]:
    """The entry's row, in the order of ``_COLUMNS``."""
    values = astuple(entry)[:-1]  # without ``damaged``
    return (*values[:7], json.dumps(list(entry.metrics)), *values[8:])


def _matches(entry: LibraryEntry, needle: str) -> bool:
    texts = (entry.title, entry.note, entry.model_name, entry.image_set_title)
    return not needle or any(needle in text.casefold() for text in texts)


def _is_id(study_id: object) -> bool:
    return isinstance(study_id, str) and _ID.fullmatch(study_id) is not None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _modified(path: Path) -> float:
    """When the file was last written; infinitely late when it cannot be told (it is left alone)."""
    try:
        return path.lstat().st_mtime
    except OSError:
        return float("inf")


def _sync_folder(folder: Path) -> None:
    """Flush the folder's entries (a rename) to disk."""
    handle = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def _studies(count: int) -> str:
    return f"{count} study" if count == 1 else f"{count} studies"
