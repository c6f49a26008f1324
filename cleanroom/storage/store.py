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

Collaboration files are opened on first use. Whoever needs to check a file before anyone uses it (charging
reservations a stop left open) registers an `on_open` hook: it runs once per file and run, before the file is
handed to any other thread.

Open files are capped (`MAX_OPEN_FILES`, or `StorageLimits.max_open`). An open file is a DuckDB instance: its
threads (`COLLABORATION_THREADS`), about 4 MB and 2 file descriptors. Members can create collaborations at the
creation rate and touch each; uncapped, threads, memory and descriptors grew with every collaboration touched
since the start until the server could serve no one. Beyond the cap, `of` parks (`Database.park`) files that no
one uses right now, outside the registry's lock, without waiting for any: the least recently used of whoever
holds most open files (each file is held by the principal whose request reached it last, `acting_for`), and never
a file of someone holding fewer than the caller. Plain LRU let a member looping over its own collaborations close
a victim's file between any two of its calls, so every victim call paid a reopen (tens of milliseconds).

At the cap with every open file in use, a file is opened anyway: over the cap, never waiting. Each file in use
beyond the cap is held by a request in flight (a live cursor or transaction), and requests are themselves capped
(`max_concurrent_rpcs`, streams per principal and collaboration), so the excess is bounded by them and goes at the
next `of` after they finish. Waiting instead would make one collaboration's request wait on others' work.

A parked file reopens at its next use (`Database.cursor`) exactly as it was: everything of a collaboration is in
its file, and what is kept in memory about it (the audit chain's checks, its transparency tree, budget limits) is
keyed by the collaboration and read from the file, not from the instance. The `on_open` hooks do not run again:
they check for what an earlier run left, and a reservation seen at a reopen belongs to a query still running in
this one (it is settled by that query, never charged as interrupted). While parked, a file is closed like any
file of a stopped server; another process is still kept out of the data directory by the catalogue's lock.

A data directory in the single-file layout of earlier releases (`cleanroom.duckdb`) is refused with a message
saying so; it is not converted (see docs/scale.md).
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextvars import ContextVar
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

#: Collaboration files open at once, by default; the least recently used idle ones beyond it are closed.
MAX_OPEN_FILES = 64
#: DuckDB's threads per collaboration file by default (the caller's and one worker): an open file's share of the
#: machine's threads stays small, and one collaboration's join still runs on two cores.
COLLABORATION_THREADS = 2


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
        self.max_open = self.limits.max_open or MAX_OPEN_FILES
        self.catalog = Database(data_dir / CATALOG_FILE, CATALOG_SCHEMA, self._limits("catalog", collaboration=False))
        #: Every collaboration file opened in this run, open now or parked.
        self._open: dict[str, Database] = {}
        #: Those whose DuckDB instance is open now (kept by each file's `on_state`).
        self._live: dict[str, Database] = {}
        self._opening: dict[str, Database] = {}
        #: Whose request reached each file last (`acting_for`): past the cap, the heaviest holder's files go first.
        self._holder: dict[str, str] = {}
        self._locks: dict[str, threading.RLock] = {}
        self._mutex = threading.Lock()
        self._parking = threading.Lock()
        self._hooks: list[OpenHook] = []
        self._stopping = False

    def _limits(self, name: str, collaboration: bool = True) -> StorageLimits:
        """Each file spills to a directory of its own (DuckDB names its spill files the same in every instance).

        A collaboration's file runs `COLLABORATION_THREADS` unless the operator chose `threads`.
        """
        limits = self.limits
        if collaboration and limits.threads is None:
            limits = replace(limits, threads=COLLABORATION_THREADS)
        if limits.temp_directory is None:
            return limits
        return replace(limits, temp_directory=limits.temp_directory / name)

    def _state(self, collaboration_id: str) -> Callable[[Database, bool], None]:
        def note(db: Database, is_open: bool) -> None:
            with self._mutex:
                if is_open:
                    self._live[collaboration_id] = db
                elif self._live.get(collaboration_id) is db:
                    del self._live[collaboration_id]

        return note

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
        """The open file of an existing collaboration (NotFoundError when it has none); parks others beyond the cap.

        The file is open and the most recently used when this returns; should it be parked before its next use
        (only if the cap is reached again meanwhile and it is unused), that use reopens it.
        """
        db = self._open.get(collaboration_id)
        if db is None:
            db = self._open_file(collaboration_id, create=False)
        db.open()
        self._hold(collaboration_id)
        return db

    def create(self, collaboration_id: str) -> Database:
        """A new, empty file for a collaboration, replacing any left by a creation that never reached the index."""
        with self._lock(collaboration_id):
            self.discard(collaboration_id)
            db = self._open_file(collaboration_id, create=True)
        self._hold(collaboration_id)
        return db

    def _hold(self, collaboration_id: str) -> None:
        """Count the file as held by the caller (`acting_for`), then park files beyond the cap on its behalf."""
        caller = _ACTING_FOR.get()
        with self._mutex:
            self._holder[collaboration_id] = caller
        self._park_beyond_cap(caller)

    def _park_beyond_cap(self, caller: str) -> None:
        """Park idle files until at most `max_open` are open: the least recently used of whoever holds most first.

        Fair rather than plain LRU: with plain LRU a member cycling through its own collaborations made every file
        it touched more recent than a victim's, so the victim's file was closed between any two of its calls and
        each victim call paid a reopen. Here `caller` parks only files of holders holding at least as many open
        files as it does (itself included), the heaviest first; a member's loop therefore closes its own files,
        and a holder of fewer files than the caller never loses one to it. When none of those is idle the file stays
        open over the cap (bounded by the caller's requests in flight, see the module's docstring).

        Runs in the caller's thread without the registry's lock while parking, and skips a file busy this instant
        rather than wait for it; one thread parks at a time (another finding it busy leaves the work to it).
        """
        if len(self._live) <= self.max_open or not self._parking.acquire(blocking=False):
            return
        try:
            with self._mutex:
                excess = len(self._live) - self.max_open
                by_holder: dict[str, list[Database]] = {}
                for cid, db in self._live.items():
                    by_holder.setdefault(self._holder.get(cid, ""), []).append(db)
            held = Counter({holder: len(files) for holder, files in by_holder.items()})
            for files in by_holder.values():
                files.sort(key=lambda db: db.last_used)
            while excess > 0:
                eligible = [h for h, files in by_holder.items() if files and held[h] >= held[caller]]
                if not eligible:
                    break
                holder = max(eligible, key=lambda h: (held[h], -by_holder[h][0].last_used))
                if by_holder[holder].pop(0).park():
                    excess -= 1
                    held[holder] -= 1
        finally:
            self._parking.release()

    def discard(self, collaboration_id: str) -> None:
        """Close and delete a collaboration's file (only for one that never reached the catalogue's index)."""
        with self._lock(collaboration_id):
            db = self._open.pop(collaboration_id, None)
            with self._mutex:
                self._holder.pop(collaboration_id, None)
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
            db = Database(path, COLLABORATION_SCHEMA, self._limits(collaboration_id), self._state(collaboration_id))
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

    def is_open(self, collaboration_id: str) -> bool:
        """Whether the collaboration's file is open now (using it would not reopen it)."""
        return collaboration_id in self._live

    def opened(self) -> list[str]:
        """The collaborations whose files are open now (not parked)."""
        with self._mutex:
            return sorted(self._live)

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


#: On whose behalf this thread uses storage now ('' when no request's caller is known: start-up, operator commands).
_ACTING_FOR: ContextVar[str] = ContextVar("cleanroom_storage_acting_for", default="")


@contextlib.contextmanager
def acting_for(principal: str) -> Iterator[None]:
    """Count the collaboration files this thread reaches meanwhile as `principal`'s.

    The server's front door sets it for each call, so that past the cap the files of whoever holds most are closed
    first (see `Store._park_beyond_cap`).
    """
    token = _ACTING_FOR.set(principal)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):  # a stream closed by the garbage collector in another context
            _ACTING_FOR.reset(token)
