"""The member's local ledger of a living collaboration: which row number each user has, since when, until when.

A refresh (PROTOCOL.md §8) adds users under new row numbers (after every number used before, in a random order, as
at the match), retires users (their numbers are never reused), and appends table rows. The ledger is the match's
`rows.parquet` with two more columns: `period`, the period a row was added in (0 the match), and `retired`, the
period it was retired in (missing while the user is current). It never leaves this machine.

A refresh is resumable: `refresh.json` records the open period and fingerprints of what this member sends in it.
While the period is open, a call with the same new users continues it (the retirements sent last replace earlier
ones; a table already appended in the period is not sent again), and a call with other new users is refused rather
than mixed into it. Once it completed, a call with exactly the same input returns its summary instead of opening
another period. "The same" is decided by content (`content_fingerprint`: every value of the new users' sent columns,
the retired keys and every appended row, as a multiset of rows, by value not dtype), never by counts, so new rows
are never taken for a repeat and the same rows in another order are; an empty call
(nothing to add, retire or append) is never a repeat: it joins the open period or opens the next, so two members'
empty calls meet in one period whichever comes first. The decision reads only this machine's state, never the
server's timing. One such call at a time per collaboration and machine (`locked`): a second is refused at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from .errors import RefreshInProgressError
from .matching import PERIOD, RETIRED, ROWS_FILE, MemberSummary, key_column, new_row_ids, write_rows

STATE_FILE = "refresh.json"
LOCK_FILE = "refresh.lock"
#: How `RefreshState.whole` was computed: 0 (files written before it was recorded) from the event tables' names
#: and row counts only (`legacy_fingerprint`), 1 from the content in row order and by dtype (no longer computed),
#: 2 from the content (`content_fingerprint`).
LEGACY_SCHEME, ORDERED_SCHEME, CONTENT_SCHEME = 0, 1, 2
#: Rows hashed at a time: the fingerprint streams over a table, it never holds a second copy of it.
FINGERPRINT_ROWS = 65_536


@dataclass(frozen=True)
class RefreshSummary(MemberSummary):
    """What a member learns from a refresh period: which period, the users it added and retired."""

    period: int
    new_rows: int
    retired: int


def read_ledger(state: Path) -> pd.DataFrame:
    """The ledger (`key`, `row_id`, `period`, `retired`); FileNotFoundError when this machine did not match."""
    path = state / ROWS_FILE
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing: a refresh continues a match, and only the machine (and state directory) that "
            "matched holds its row numbers"
        )
    ledger = pd.read_parquet(path)
    ledger["key"] = ledger["key"].astype(str)
    if PERIOD not in ledger.columns:
        ledger[PERIOD] = np.zeros(len(ledger), dtype=np.int64)
    if RETIRED not in ledger.columns:
        ledger[RETIRED] = pd.Series([pd.NA] * len(ledger), dtype="Int64")
    return ledger


def write_ledger(state: Path, ledger: pd.DataFrame) -> None:
    """Replace the ledger atomically (private to this user: it maps row numbers back to keys)."""
    path = state / ROWS_FILE
    write_rows(path, ledger, key_column(path))


def fingerprint(keys: Iterable[str], *more: Iterable[str]) -> str:
    """A digest of sets of keys (new users; with the retired keys and event tables, a whole refresh's input)."""
    digest = hashlib.sha256()
    for part in (keys, *more):
        for value in sorted(part):
            digest.update(value.encode() + b"\0")
        digest.update(b"\1")
    return digest.hexdigest()


def legacy_fingerprint(new_keys: Iterable[str], retire_keys: Iterable[str], events: Mapping[str, pd.DataFrame]) -> str:
    """The fingerprint `refresh.json` held before `CONTENT_SCHEME`: keys, and each event table's name and row count.

    Only to recognise a state file written then; it cannot tell two tables of as many rows apart.
    """
    return fingerprint(new_keys, retire_keys, [f"{name}:{len(frame)}" for name, frame in events.items()])


def content_fingerprint(
    users: pd.DataFrame, columns: Mapping[str, str], retire_keys: Iterable[str], events: Mapping[str, pd.DataFrame]
) -> str:
    """SHA-256 over everything a refresh would send, in a canonical form: equal exactly when the input is.

    `columns` names the users' columns that count (role -> column, e.g. `key`, `identifier:email`,
    `attribute:tier`); then the sorted retired keys; then each event table by name, all its columns. A table is
    hashed `FINGERPRINT_ROWS` rows at a time (`_hash_frame`), in its row order.
    """
    digest = hashlib.sha256(b"cleanroom refresh content v1\0")
    roles = sorted(columns.items())
    _hash_text(digest, json.dumps([[role, column] for role, column in roles]))
    _hash_frame(digest, users[[column for _, column in roles]])
    retired = sorted(retire_keys)
    _hash_text(digest, f"retire:{len(retired)}")
    for value in retired:
        _hash_text(digest, value)
    for name in sorted(events):
        _hash_text(digest, f"table:{name}")
        _hash_frame(digest, events[name])
    return digest.hexdigest()


def _hash_text(digest: hashlib._Hash, text: str) -> None:
    data = text.encode("utf-8", "surrogatepass")
    digest.update(len(data).to_bytes(8, "little") + data)


def _hash_frame(digest: hashlib._Hash, frame: pd.DataFrame) -> None:
    """Feed `frame` in canonical form: its column names and row count, then one digest per column.

    Rows are a multiset: they are put in a canonical order first (sorted by their canonical values, column by
    column), so a table read back in another order is the same input, while a duplicated row still counts. A
    column's digest covers three streams, each over all its rows in that order: a tag a row (0 missing, 1 an
    integer, 2 any other float, 3 text), the fixed-width values (int64 for integers, booleans, times as
    nanoseconds and floats holding an integer; float64 bits for other floats; the UTF-8 length of anything else, as
    its text) and the text bytes. Values under a null are zero or empty. So the digest depends on the values only:
    not on dtype widths (2.0 in a float column is the 2 of an integer column), memory layout, row order or the
    `FINGERPRINT_ROWS` chunks it is hashed in. The canonical columns are one copy of the table, held while hashing.
    """
    _hash_text(digest, json.dumps([str(c) for c in frame.columns]))
    digest.update(len(frame).to_bytes(8, "little"))
    columns = [_canonical(frame.iloc[:, position]) for position in range(frame.shape[1])]
    if len(frame) and columns:
        keys = pa.table({f"{i}.{part}": array for i, arrays in enumerate(columns) for part, array in enumerate(arrays)})
        order = pc.sort_indices(keys, sort_keys=[(name, "ascending") for name in keys.column_names])
        columns = [tuple(array.take(order) for array in arrays) for arrays in columns]
    for tags, fixed, text in columns:
        streams = (hashlib.sha256(), hashlib.sha256(), hashlib.sha256())
        for start in range(0, len(frame), FINGERPRINT_ROWS):
            stop = start + FINGERPRINT_ROWS
            streams[0].update(tags[start:stop].to_numpy(zero_copy_only=False).astype(np.uint8).tobytes())
            streams[1].update(fixed[start:stop].to_numpy(zero_copy_only=False).astype("<i8").tobytes())
            chunk = text[start:stop]
            offsets = np.frombuffer(chunk.buffers()[1], dtype="<i8")[chunk.offset : chunk.offset + len(chunk) + 1]
            data = chunk.buffers()[2]
            if len(offsets) and data is not None:
                streams[2].update(memoryview(data)[int(offsets[0]) : int(offsets[-1])])
        digest.update(b"".join(stream.digest() for stream in streams))


#: The tags of `_canonical`: what kind of value a row holds.
_MISSING, _INTEGER, _FLOAT, _TEXT = 0, 1, 2, 3


def _canonical(values: pd.Series) -> tuple[pa.Array, pa.Array, pa.Array]:
    """A column's values as (tag int8, fixed int64, text large_binary) arrays, by what each value is (see above)."""
    try:
        array = pa.array(values, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed Python objects: their text
        array = pa.array(values.map(lambda v: None if v is None or v is pd.NA else str(v)), pa.large_string())
    missing = array.is_null().to_numpy(zero_copy_only=False)
    kind = array.type
    if pa.types.is_timestamp(kind) or pa.types.is_date(kind):
        array = pc.cast(pc.cast(array, pa.timestamp("ns")), pa.int64())
    elif pa.types.is_duration(kind):
        array = pc.cast(pc.cast(array, pa.duration("ns")), pa.int64())
    kind = array.type
    empty_text = pa.array([b""] * len(array), pa.large_binary())
    if pa.types.is_integer(kind) or pa.types.is_boolean(kind):
        fixed = pc.fill_null(pc.cast(array, pa.int64()), 0).to_numpy().astype("<i8")
        tags = np.where(missing, _MISSING, _INTEGER).astype(np.int8)
        return pa.array(tags), pa.array(fixed), empty_text
    if pa.types.is_floating(kind):
        floats = pc.fill_null(pc.cast(array, pa.float64()), 0.0).to_numpy().astype("<f8")
        # an integer below 2^63 in magnitude: exactly representable in int64, hashed as that integer
        integral = np.isfinite(floats) & (np.abs(floats) < 2.0**63) & (floats == np.trunc(floats))
        fixed = np.where(integral, np.where(integral, floats, 0.0).astype("<i8"), floats.view("<i8"))
        tags = np.where(missing, _MISSING, np.where(integral, _INTEGER, _FLOAT)).astype(np.int8)
        return pa.array(tags), pa.array(fixed.astype("<i8")), empty_text
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        array = pa.array([None if v is None else str(v) for v in array.to_pylist()], pa.large_string())
    binary = pc.fill_null(pc.cast(array, pa.large_binary()), b"")
    lengths = pc.binary_length(binary).to_numpy(zero_copy_only=False).astype("<i8")
    tags = np.where(missing, _MISSING, _TEXT).astype(np.int8)
    return pa.array(tags), pa.array(lengths), binary


@dataclass(frozen=True)
class RefreshState:
    """The last refresh this member started here: its period, what it sent, and whether it completed.

    `users` fingerprints the new users' keys (`fingerprint`), `whole` the whole input by `scheme`.
    """

    period: int
    users: str
    whole: str
    complete: bool
    scheme: int = CONTENT_SCHEME


def read_state(state: Path) -> RefreshState | None:
    """The last refresh started on this machine, if any (a file of an older SDK reads as `LEGACY_SCHEME`)."""
    path = state / STATE_FILE
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    data.setdefault("scheme", LEGACY_SCHEME)
    return RefreshState(**data)


@contextmanager
def locked(state: Path, collaboration: str) -> Iterator[None]:
    """Hold this collaboration's refresh lock on this machine; RefreshInProgressError at once if another call does.

    Two calls at once would both number new users in the ledger and both upload into one period (the second's rows
    clash with the first's on the server). The lock is an OS file lock (released when the process ends, even if
    it crashed), so no stale lock outlives its holder.
    """
    if not state.is_dir():  # no state here (this machine did not match): nothing local to guard
        yield
        return
    handle = open(state / LOCK_FILE, "a+")  # noqa: SIM115 - held for the with-block below
    try:
        try:
            _try_lock(handle)
        except OSError:
            raise RefreshInProgressError(
                f"another refresh, retirement or cancellation of {collaboration} is running on this machine (state "
                f"directory {state}); wait for it to return, then call again"
            ) from None
        yield
    finally:
        handle.close()  # closing the file releases the lock


def _try_lock(handle: IO[str]) -> None:
    """An exclusive, non-blocking lock on an open file; OSError when another process or thread holds it."""
    fileno = handle.fileno()
    if sys.platform == "win32":  # pragma: no cover - Windows
        import msvcrt

        msvcrt.locking(fileno, msvcrt.LK_NBLCK, 1)
    else:
        import fcntl

        fcntl.flock(fileno, fcntl.LOCK_EX | fcntl.LOCK_NB)


def write_state(state: Path, saved: RefreshState) -> None:
    """Record the refresh in progress (or done)."""
    path = state / STATE_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(saved)))
    os.replace(tmp, path)


def _member(values: Iterable[str], of: pd.Series) -> np.ndarray:
    """Whether each of `values` is in `of`: Arrow's hash lookup, not a Python loop (the ledger may hold millions)."""
    return np.asarray(pc.is_in(pa.array(list(values), pa.string()), value_set=pa.array(of.astype(str), pa.string())))


def check_changes(ledger: pd.DataFrame, new_keys: pd.Series, retire_keys: list[str], period: int) -> None:
    """ValueError, naming a key, unless the new users are new and the retired ones current users.

    Rows the ledger already holds for `period` (a resumed refresh) count as new there, and retired only there.
    """
    before = ledger[ledger[PERIOD] != period]
    seen = new_keys[_member(new_keys, before["key"])]
    if len(seen):
        added = int(before.loc[before["key"] == seen.iloc[0], PERIOD].iloc[0])
        raise ValueError(f"user {seen.iloc[0]!r} was added before (in period {added}); pass only new users in `users`")
    current = ledger.loc[ledger[RETIRED].isna() | (ledger[RETIRED] == period), "key"]
    unknown = [k for k, ok in zip(retire_keys, _member(retire_keys, current), strict=True) if not ok]
    if unknown:
        why = "was retired before" if _member(unknown[:1], ledger["key"])[0] else "is not one of your users"
        raise ValueError(f"cannot retire {unknown[0]!r}: it {why}")
    both = set(retire_keys) & set(new_keys)
    if both:
        raise ValueError(f"user {sorted(both)[0]!r} is both added and retired in this refresh")


def assign_rows(ledger: pd.DataFrame, new_keys: pd.Series, retire_keys: list[str], period: int) -> pd.DataFrame:
    """The ledger with this period's changes: new users numbered after every earlier row, retired users marked.

    Idempotent: on a resumed refresh the period's rows are already there and are checked, not drawn again.
    """
    mine = ledger[ledger[PERIOD] == period]
    if len(mine):
        if set(mine["key"]) != set(new_keys):
            raise ValueError(
                f"refresh period {period} numbered other new users on this machine; pass the same users to resume it"
            )
        out = ledger.copy()
    else:
        offset = len(ledger)
        added = pd.DataFrame(
            {
                "key": new_keys.to_numpy(),
                "row_id": offset + new_row_ids(len(new_keys)),
                PERIOD: np.full(len(new_keys), period, dtype=np.int64),
                RETIRED: pd.Series([pd.NA] * len(new_keys), dtype="Int64"),
            }
        )
        out = pd.concat([ledger, added], ignore_index=True) if len(ledger) else added
    out[RETIRED] = out[RETIRED].astype("Int64")
    out.loc[out[RETIRED] == period, RETIRED] = pd.NA  # the retirements sent last replace earlier ones, as on the server
    return mark_retired(out, retire_keys, period)


def forget_period(state: Path, period: int) -> None:
    """Undo this machine's record of a refresh period whose points the server refused (nothing of it committed).

    The period's new rows leave the ledger and its retirement marks are cleared, so the next call starts afresh.
    """
    ledger = read_ledger(state)
    ledger = ledger[ledger[PERIOD] != period].reset_index(drop=True)
    ledger.loc[ledger[RETIRED] == period, RETIRED] = pd.NA
    write_ledger(state, ledger)
    (state / STATE_FILE).unlink(missing_ok=True)


def mark_retired(ledger: pd.DataFrame, retire_keys: list[str], period: int) -> pd.DataFrame:
    """The ledger with `retire_keys` retired in `period` (a retirement done at once, outside a refresh)."""
    out = ledger.copy()
    out[RETIRED] = out[RETIRED].astype("Int64")
    out.loc[_member(out["key"], pd.Series(retire_keys, dtype=str)) & out[RETIRED].isna().to_numpy(), RETIRED] = period
    return out
