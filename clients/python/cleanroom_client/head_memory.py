"""What a member's or auditor's SDK remembers of a server's audit chains: the latest verified head and every receipt.

On disk under `<state_dir>/transparency/`, one state file and one receipts file per collaboration, written
atomically, readable by the owner only, and changed under an exclusive file lock so two processes on one state
directory never lose each other's incidents (`cleanroom_client.transparency` says why any of this is kept).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from . import merkle
from .errors import CleanRoomError
from .protocol import audit_pb2 as apb
from .transparency import EVIDENCE, HistoryRewrittenError, TreeHead, canonical_json, entry_body

#: Fetches a consistency proof (collaboration, first, second) from the server.
ConsistencyFetch = Callable[[str, int, int], Sequence[bytes]]


class HeadMemory:
    """What this client verified of each chain of one server: the latest head and every receipt, on disk.

    One JSON file of state per collaboration (the head, an unacknowledged incident, acknowledged ones) and one JSON
    Lines file of receipts, under `<state_dir>/transparency/`, written atomically and readable by the owner only.

    Several SDK processes may share a state directory: every read-modify-write of a collaboration's state holds an
    exclusive lock on its `.lock` file (across processes) for the whole step, the consistency fetch included, so an
    incident one process records is never overwritten by another's older view, and a remembered head never moves
    back. A state file that cannot be parsed is an error, never read as "nothing remembered".
    """

    def __init__(self, directory: Path, server_key: Ed25519PublicKey) -> None:
        self._dir = directory
        self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._key = server_key
        self._lock = threading.Lock()

    def _file(self, collaboration: str, suffix: str) -> Path:
        return self._dir / f"{hashlib.sha256(collaboration.encode()).hexdigest()[:32]}{suffix}"

    @contextmanager
    def _locked(self, collaboration: str) -> Iterator[None]:
        """This process's threads and other processes wait while one of them changes the collaboration's files."""
        with self._lock:
            fd = os.open(self._file(collaboration, ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
            try:
                _lock_file(fd)
                yield
            finally:
                os.close(fd)  # closing the descriptor releases the lock

    def _state(self, collaboration: str) -> dict[str, Any]:
        path = self._file(collaboration, ".json")
        try:
            text = path.read_text()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise CleanRoomError(
                "FAILED_PRECONDITION", f"the transparency state {path} cannot be read: {exc}"
            ) from None
        try:
            state = json.loads(text)
            if not isinstance(state, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            raise CleanRoomError(
                "FAILED_PRECONDITION",
                f"the transparency state {path} cannot be read ({exc}); it is left as it is: restore it from a backup "
                "or move it away to start remembering afresh",
            ) from None
        return state

    def _save(self, collaboration: str, state: dict[str, Any]) -> None:
        path = self._file(collaboration, ".json")
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(state, indent=1))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def head(self, collaboration: str) -> TreeHead | None:
        """The latest head verified for this chain, if any."""
        d = self._state(collaboration).get("head")
        return TreeHead.from_dict(d) if d else None

    def incident(self, collaboration: str) -> dict[str, Any] | None:
        """An unacknowledged rewrite of this chain, if one was found."""
        value = self._state(collaboration).get("incident")
        return dict(value) if value else None

    def require_no_incident(self, collaboration: str) -> None:
        """HistoryRewrittenError while an incident on this chain is unacknowledged."""
        found = self.incident(collaboration)
        if found:
            raise HistoryRewrittenError(
                collaboration,
                f"{found['reason']} (found {found['when']}; acknowledge it to go on)",
                TreeHead.from_dict(found["remembered"]) if found.get("remembered") else None,
                TreeHead.from_dict(found["shown"]) if found.get("shown") else None,
            )

    def acknowledge(self, collaboration: str) -> dict[str, Any] | None:
        """Clear the incident; the shown head becomes the remembered one. Returns the incident acknowledged."""
        with self._locked(collaboration):
            state = self._state(collaboration)
            found = state.pop("incident", None)
            if found:
                state.setdefault("acknowledged", []).append(found)
                if found.get("shown"):
                    state["head"] = found["shown"]
                self._save(collaboration, state)
            return dict(found) if found else None

    def receipts(self, collaboration: str) -> list[dict[str, Any]]:
        """Every receipt kept for this chain, oldest first (entry fields as JSON, and the head)."""
        path = self._file(collaboration, ".receipts.jsonl")
        try:
            lines = path.read_text().splitlines()
        except OSError:
            return []
        return [json.loads(line) for line in lines if line.strip()]

    def accept(self, collaboration: str, shown: TreeHead, fetch: ConsistencyFetch) -> None:
        """Check that `shown` is the server's and consistent with the remembered head; remember the larger.

        A larger head must extend the remembered one; a smaller one (a concurrent call's answer, signed a moment
        earlier) must be a prefix of it, which only a server that still holds the remembered tree can prove; a head
        of the same size must be the same. Otherwise HistoryRewrittenError, and the incident is recorded.
        """
        with self._locked(collaboration):
            state = self._state(collaboration)
            remembered = TreeHead.from_dict(state["head"]) if state.get("head") else None
            reason = ""
            if shown.collaboration != collaboration:
                reason = f"a head of another chain ({shown.collaboration!r}) was shown"
            elif not shown.is_signed_by(self._key):
                reason = "the tree head is not signed by the server's audit key"
            elif remembered is not None:
                older, newer = sorted((remembered, shown), key=lambda h: h.size)
                try:
                    proof = [] if older.size == newer.size else fetch(collaboration, older.size, newer.size)
                    merkle.verify_consistency(older.size, newer.size, older.root, newer.root, proof)
                except EVIDENCE as exc:
                    shrank = shown.size < remembered.size
                    reason = f"the log shrank from {remembered.size} to {shown.size} entries" if shrank else str(exc)
            if not reason:
                if remembered is None or shown.size > remembered.size:
                    state["head"] = shown.to_dict()
                    self._save(collaboration, state)
                return
            self._record(collaboration, reason, shown)

    def record_incident(self, collaboration: str, reason: str, shown: TreeHead | None) -> NoReturn:
        """Record an incident found outside `accept` and raise it."""
        with self._locked(collaboration):
            self._record(collaboration, reason, shown)

    def _record(self, collaboration: str, reason: str, shown: TreeHead | None) -> NoReturn:
        """Record an incident and raise it; the caller holds the collaboration's lock."""
        state = self._state(collaboration)
        remembered = TreeHead.from_dict(state["head"]) if state.get("head") else None
        state["incident"] = {
            "reason": reason,
            "when": datetime.now().astimezone().isoformat(timespec="seconds"),
            "remembered": remembered.to_dict() if remembered else None,
            "shown": shown.to_dict() if shown else None,
        }
        self._save(collaboration, state)
        raise HistoryRewrittenError(collaboration, reason, remembered, shown)

    @property
    def key(self) -> Ed25519PublicKey:
        """The server's audit key this memory trusts."""
        return self._key

    def keep_receipts(self, collaboration: str, receipts: Iterable[apb.Receipt]) -> None:
        """Append receipts (already verified) to this chain's file."""
        path = self._file(collaboration, ".receipts.jsonl")
        lines = []
        for r in receipts:
            body = entry_body(r.entry)
            lines.append(
                canonical_json({"entry": body, "hash": r.entry.hash, "head": TreeHead.from_proto(r.head).to_dict()})
            )
        if not lines:
            return
        with self._locked(collaboration):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            with os.fdopen(fd, "a") as f:
                f.write("\n".join(lines) + "\n")


def _lock_file(fd: int) -> None:
    """Wait for an exclusive lock on an open file (released when the descriptor is closed)."""
    if sys.platform == "win32":  # pragma: no cover - Windows
        import msvcrt

        msvcrt.locking(fd, msvcrt.LK_LOCK, 1)
    else:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_EX)
