"""The member's local ledger of a living collaboration: which row number each user has, since when, until when.

A refresh (PROTOCOL.md §8) adds users under new row numbers (after every number used before, in a random order, as
at the match), retires users (their numbers are never reused), and appends table rows. The ledger is the match's
`rows.parquet` with two more columns: `period`, the period a row was added in (0 the match), and `retired`, the
period it was retired in (missing while the user is current). It never leaves this machine.

A refresh is resumable: `refresh.json` records the open period and fingerprints of what this member sends in it.
While the period is open, a call with the same new users continues it (the retirements sent last replace earlier
ones; a table already appended in the period is not sent again), and a call with other new users is refused rather
than mixed into it. Once it completed, a call with exactly the same input returns its summary instead of opening
another period.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from .matching import PERIOD, RETIRED, ROWS_FILE, IdentifierCounts, new_row_ids

STATE_FILE = "refresh.json"


@dataclass(frozen=True)
class RefreshSummary:
    """What a member learns from a refresh: its own counts and both members' set sizes after it; never a pair."""

    collaboration: str
    period: int
    new_rows: int
    retired: int
    identifiers: Mapping[str, IdentifierCounts]
    tables: Mapping[str, int]
    dropped_events: Mapping[str, int]
    own_set_size: int
    peer_set_size: int

    def to_dict(self) -> dict[str, object]:
        """Plain data, for JSON."""
        return asdict(self)


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
    tmp = path.with_suffix(".tmp")
    ledger.to_parquet(tmp, index=False)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def fingerprint(keys: Iterable[str], *more: Iterable[str]) -> str:
    """A digest of sets of keys (new users; with the retired keys and event tables, a whole refresh's input)."""
    digest = hashlib.sha256()
    for part in (keys, *more):
        for value in sorted(part):
            digest.update(value.encode() + b"\0")
        digest.update(b"\1")
    return digest.hexdigest()


def event_sizes(events: Mapping[str, pd.DataFrame]) -> list[str]:
    """Each event table's name and row count, for a refresh's fingerprint."""
    return [f"{name}:{len(frame)}" for name, frame in events.items()]


@dataclass(frozen=True)
class RefreshState:
    """The last refresh this member started here: its period, what it sent, and whether it completed."""

    period: int
    users: str
    whole: str
    complete: bool


def read_state(state: Path) -> RefreshState | None:
    """The last refresh started on this machine, if any."""
    path = state / STATE_FILE
    return RefreshState(**json.loads(path.read_text())) if path.exists() else None


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
