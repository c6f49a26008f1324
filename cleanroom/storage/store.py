"""A data directory's files: a small catalogue and one DuckDB file per collaboration, each with its own lock.

Why: one member's work must never hold up another collaboration. With one file and one write lock for everything,
a single long statement (a range delete a member's upload made huge, a big join) blocked every write of every
collaboration, and no stop could interrupt it. Here each collaboration is its own DuckDB instance (its own buffer
pool, write-ahead log, checkpoints and write lock), so the blast radius of anything a member does is its own
collaboration: another collaboration's queries, uploads and budget reads never wait on it.

Layout of `<data_dir>` (0700; every database file and write-ahead log 0600):
- `catalog.duckdb`: who may call (principals), the index of collaborations and of their members and auditors, and
  the server's own audit chain. Small, written only by operator commands and collaboration creation. It is opened
  first and stays open, so DuckDB's lock on it keeps a second process out of the data directory.
- `collaborations/<id>.duckdb`: everything of one collaboration: its policy and approvals, upload progress, relay
  state, tags, the join, the members' tables, budget reservations, released audiences and its audit chain. An
  action and its audit entry therefore still commit in one transaction of one file.

Collaboration files are opened on first use and stay open until the server stops. Whoever needs to check a file
before anyone uses it (the audit chain's verification, charging reservations a stop left open) registers an
`on_open` hook: it runs once per file and run, before the file is handed to any other thread.

A data directory in the single-file layout of earlier releases (`cleanroom.duckdb`) is refused with a message
saying so; it is not converted (see docs/scale.md).
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from ..errors import NotFoundError, UnavailableError
from .database import CATALOG_SCHEMA, COLLABORATION_SCHEMA, DATA_DIR_MODE, Database, StorageLimits

CATALOG_FILE = "catalog.duckdb"
COLLABORATIONS_DIR = "collaborations"
#: The one file of releases before the catalogue split.
LEGACY_FILE = "cleanroom.duckdb"
#: What makes a collaboration id a plain file name (the API's ids, checked where they arrive, are a subset).
_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")

#: Runs once when a collaboration's file is first opened in a run, before any other thread may use it.
OpenHook = Callable[[str, Database], None]


class LegacyLayoutError(Exception):
    """The data directory holds the single-file layout of an earlier release."""


class Store:
    """The catalogue and the collaborations' files of one data directory."""

    def __init__(self, data_dir: Path, limits: StorageLimits | None = None) -> None:
        data_dir.mkdir(parents=True, exist_ok=True, mode=DATA_DIR_MODE)
        os.chmod(data_dir, DATA_DIR_MODE)  # also an existing directory made before this rule
        if (data_dir / LEGACY_FILE).exists() and not (data_dir / CATALOG_FILE).exists():
            raise LegacyLayoutError(
                f"{data_dir} holds {LEGACY_FILE}, the single-file layout of an earlier release; this release keeps "
                f"a catalogue ({CATALOG_FILE}) and one file per collaboration ({COLLABORATIONS_DIR}/<id>.duckdb) and "
                "does not convert it. Serve it with the earlier release, or move the file away to start empty."
            )
        self.data_dir = data_dir
        self.limits = limits or StorageLimits()
        self._rooms = data_dir / COLLABORATIONS_DIR
        self._rooms.mkdir(exist_ok=True, mode=DATA_DIR_MODE)
        os.chmod(self._rooms, DATA_DIR_MODE)
        self.catalog = Database(data_dir / CATALOG_FILE, CATALOG_SCHEMA, self._limits("catalog"))
        self._open: dict[str, Database] = {}
        self._opening: dict[str, Database] = {}
        self._locks: dict[str, threading.RLock] = {}
        self._mutex = threading.Lock()
        self._hooks: list[OpenHook] = []
        self._stopping = False

    def _limits(self, name: str) -> StorageLimits:
        """Each file spills to a directory of its own (DuckDB names its spill files the same in every instance)."""
        if self.limits.temp_directory is None:
            return self.limits
        return replace(self.limits, temp_directory=self.limits.temp_directory / name)

    def path(self, collaboration_id: str) -> Path:
        """The file of a collaboration (ValueError for an id that is not a plain, valid collaboration id)."""
        if not _ID.match(collaboration_id):
            raise ValueError(f"not a collaboration id: {collaboration_id[:80]!r}")
        return self._rooms / f"{collaboration_id}.duckdb"

    def on_open(self, hook: OpenHook) -> None:
        """Run `hook(collaboration_id, database)` for every collaboration file opened from now on."""
        self._hooks.append(hook)

    def _lock(self, collaboration_id: str) -> threading.RLock:
        with self._mutex:
            return self._locks.setdefault(collaboration_id, threading.RLock())

    def exists(self, collaboration_id: str) -> bool:
        """Whether the collaboration has a file (created, perhaps never indexed: see `Collaborations.create`)."""
        return collaboration_id in self._open or self.path(collaboration_id).exists()

    def of(self, collaboration_id: str) -> Database:
        """The open file of an existing collaboration (NotFoundError when it has none)."""
        db = self._open.get(collaboration_id)
        if db is not None:
            return db
        return self._open_file(collaboration_id, create=False)

    def create(self, collaboration_id: str) -> Database:
        """A new, empty file for a collaboration, replacing any left by a creation that never reached the index."""
        with self._lock(collaboration_id):
            self.discard(collaboration_id)
            return self._open_file(collaboration_id, create=True)

    def discard(self, collaboration_id: str) -> None:
        """Close and delete a collaboration's file (only for one that never reached the catalogue's index)."""
        with self._lock(collaboration_id):
            db = self._open.pop(collaboration_id, None)
            if db is not None:
                db.close()
            path = self.path(collaboration_id)
            for leftover in (path, path.with_name(path.name + ".wal")):
                leftover.unlink(missing_ok=True)

    def _open_file(self, collaboration_id: str, create: bool) -> Database:
        with self._lock(collaboration_id):
            db = self._open.get(collaboration_id) or self._opening.get(collaboration_id)
            if db is not None:  # opened meanwhile, or being opened by this thread (a hook reading its own file)
                return db
            if self._stopping:
                raise UnavailableError("the server is stopping; send the request again once it is back")
            path = self.path(collaboration_id)
            if not create and not path.exists():
                raise NotFoundError(f"collaborations/{collaboration_id} does not exist")
            db = Database(path, COLLABORATION_SCHEMA, self._limits(collaboration_id))
            self._opening[collaboration_id] = db
            try:
                for hook in self._hooks:
                    hook(collaboration_id, db)
            except BaseException:
                db.close()
                raise
            finally:
                del self._opening[collaboration_id]
            self._open[collaboration_id] = db
            return db

    def opened(self) -> list[str]:
        """The collaborations whose files are open now."""
        return sorted(self._open)

    def interrupt(self) -> None:
        """Refuse new work and cancel every running statement in every file (see `Database.interrupt`)."""
        self._stopping = True
        for db in [self.catalog, *list(self._open.values())]:
            db.interrupt()

    def close(self, timeout: float | None = None) -> bool:
        """Checkpoint and close every file; with `timeout`, wait at most that long in all (False if one stayed open)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        closed = True
        for db in [*list(self._open.values()), self.catalog]:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            with contextlib.suppress(Exception):
                closed = db.close(left) and closed
        return closed
