"""The member's side of a match: blind, upload, double-blind the peer's points, upload tables; resumable.

What leaves the member's machine: X25519-blinded points (never an identifier, a digest or the key), random
surrogate row ids (never derived from the `key` column, which stays local), and the attribute and event columns
the member names. Every phase first asks the server where it stands and continues from there, so an interrupted
match (client crash, server restart, network loss) resumes where it stopped. The surrogate ids are kept locally
(`rows.parquet` in the collaboration's state directory) so a resumed match reuses them, and so later results
about the member's own rows (audiences) can be mapped back to its keys.
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np
import pandas as pd
import pyarrow as pa
from tqdm.auto import tqdm

from .blinding import (
    BlindJob,
    BlindResult,
    ChunkExecutor,
    ReblindJob,
    blind_identifiers,
    load_or_create_key,
    reblind_points,
)
from .chain_mask import chain_scalars
from .errors import RETRYABLE, CleanRoomError
from .identity import IdentifierType, Normalizer
from .protocol import CHAIN_KIND, DOUBLE_BLINDED, POINTS, TABLE_KIND
from .protocol import matching_pb2 as pb
from .protocol import matching_pb2_grpc as pb_grpc
from .tables import arrow_chunks

T = TypeVar("T")

_WIRE_TYPES = {
    IdentifierType.EMAIL: pb.IDENTIFIER_TYPE_EMAIL,
    IdentifierType.PHONE: pb.IDENTIFIER_TYPE_PHONE,
    IdentifierType.DEVICE_ID: pb.IDENTIFIER_TYPE_DEVICE_ID,
    IdentifierType.CUSTOM: pb.IDENTIFIER_TYPE_CUSTOM,
}
USERS_TABLE = "users"
#: The member's row numbers (`key`, `row_id`, the `period` each row was added in, and the period it was retired in),
#: kept locally in the collaboration's state directory.
ROWS_FILE = "rows.parquet"
PERIOD = "period"
RETIRED = "retired"
#: The ledger's metadata entry naming the member's own key column (e.g. `user_id`), so what maps back to keys
#: (an audience file) carries the member's column name, not the ledger's `key`.
KEY_COLUMN = b"cleanroom.key_column"


def write_rows(path: Path, ledger: pd.DataFrame, key_column: str) -> None:
    """Write a ledger atomically, private to this user (it maps row numbers back to keys), naming the key column."""
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(ledger, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), KEY_COLUMN: key_column.encode()})
    tmp = path.with_suffix(".tmp")
    pq.write_table(table, tmp)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def key_column(path: Path) -> str:
    """The member's key column the ledger at `path` was written with (`key` for a ledger of an older SDK)."""
    import pyarrow.parquet as pq

    metadata = pq.read_schema(path).metadata or {}
    return metadata.get(KEY_COLUMN, b"key").decode()


@dataclass(frozen=True)
class Rejected:
    """Values of one identifier type that could not be normalized for one `reason`: how many, and one of them.

    `example` is redacted (`identity.redact`: its first character and its length), enough to find such rows in
    one's own data, never the identifier.
    """

    reason: str
    count: int
    example: str


@dataclass(frozen=True)
class IdentifierCounts:
    """Per identifier type: values blinded and sent, values that could not be normalized, and empty values.

    `rejected` says why the `invalid` ones were: one entry per reason, the most frequent first; counts sum to
    `invalid`. Nothing invalid is ever sent, so these people cannot match by this type.
    """

    sent: int = 0
    invalid: int = 0
    missing: int = 0
    rejected: tuple[Rejected, ...] = ()


@dataclass(frozen=True)
class MemberSummary:
    """What a member learns from its side of a match or a refresh period; never the intersection, never a pair.

    The counts of what it sent (per identifier type, rows per table, events dropped) and the set sizes after it.
    """

    collaboration: str
    identifiers: Mapping[str, IdentifierCounts]
    tables: Mapping[str, int]
    dropped_events: Mapping[str, int]
    own_set_size: int
    peer_set_size: int

    def to_dict(self) -> dict[str, object]:
        """Plain data, for JSON."""
        return asdict(self)


@dataclass(frozen=True)
class MatchSummary(MemberSummary):
    """What a member learns from a match: its rows, the peer's points refused, and every member's set size."""

    rows: int
    peer_rejected_points: int
    matched: bool
    #: Every member's set size, by name (with three or more members there is no single peer).
    set_sizes: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class RefreshOutcome:
    """What one member's side of a refresh period sent, and the server's status once the period completed."""

    identifiers: Mapping[str, IdentifierCounts]
    tables: Mapping[str, int]
    dropped_events: Mapping[str, int]
    final: pb.MatchStatus


@dataclass
class MatchPlan:
    """Everything one member sends, prepared locally."""

    users: pd.DataFrame
    key: str
    identifiers: Mapping[IdentifierType, str]
    prehashed: frozenset[IdentifierType]
    attributes: Sequence[str]
    events: Mapping[str, pd.DataFrame]
    normalizer: Normalizer
    chunk_rows: int
    #: row_ids[i]: the row number of users row i; its inverse `order`: the users row of each row number.
    row_ids: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    order: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    #: The first row number of these users: 0 for the match, the rows numbered before for a refresh.
    row_offset: int = 0
    #: key -> row number of every current user (earlier periods' included) for event tables; None: these users.
    known_ids: pd.Series | None = None


def new_row_ids(n: int) -> np.ndarray:
    """Row numbers 0 .. n-1 in a uniformly random order (argsort of independent 64-bit keys from the OS CSPRNG).

    The protocol names rows by position, so the numbers must not follow the caller's own row order.
    """
    return np.argsort(np.frombuffer(os.urandom(8 * n), dtype=np.uint64), kind="stable").astype(np.int64)


def load_or_create_rows(state: Path, keys: pd.Series) -> np.ndarray:
    """The row numbers of `keys`, drawn and saved on the first call, reused (and checked) on resume."""
    path = state / ROWS_FILE
    if path.exists():
        saved = pd.read_parquet(path)
        if PERIOD in saved.columns:  # refreshed since: the match's rows are those of period 0
            saved = saved[saved[PERIOD] == 0].reset_index(drop=True)
        if len(saved) != len(keys) or not saved["key"].astype(str).reset_index(drop=True).equals(
            keys.astype(str).reset_index(drop=True)
        ):
            raise ValueError(
                f"the users table differs from the one this collaboration started matching with ({path}); "
                "pass the same rows in the same order to resume"
            )
        ids = saved["row_id"].to_numpy(dtype=np.int64)
        if not np.array_equal(np.sort(ids), np.arange(len(ids))):
            raise ValueError(
                f"{path} was written by an older protocol version (row numbers are not 0 .. n-1); "
                "start a new collaboration to match with this version"
            )
        return ids
    ids = new_row_ids(len(keys))
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_rows(path, pd.DataFrame({"key": keys.to_numpy(), "row_id": ids}), str(keys.name or "key"))
    return ids


def text_at(column: pd.Series, rows: np.ndarray) -> list[str | None]:
    """The values of `column` at positions `rows`, as text, None where missing.

    For an Arrow-backed column the rows are taken chunk by chunk of the column: pandas' take on a chunked Arrow
    array concatenates the whole column first, which at 10M users cost a copy of the column per upload chunk.
    """
    if not isinstance(column.array, pd.arrays.ArrowExtensionArray):
        return [None if pd.isna(v) else str(v) for v in column.iloc[rows]]
    arrow = pa.array(column.array)
    chunked = arrow if isinstance(arrow, pa.ChunkedArray) else pa.chunked_array([arrow])
    bounds = np.cumsum([0, *(len(c) for c in chunked.chunks)])
    by_position = np.argsort(rows, kind="stable")
    ordered = rows[by_position]
    values: list[object] = []
    for i, chunk in enumerate(chunked.chunks):
        lo, hi = np.searchsorted(ordered, [bounds[i], bounds[i + 1]])
        if hi > lo:
            values += chunk.take(pa.array(ordered[lo:hi] - bounds[i])).to_pylist()
    out: list[str | None] = [None] * len(rows)
    for position, value in zip(by_position.tolist(), values, strict=True):
        out[position] = None if value is None or value != value else str(value)  # value != value: NaN
    return out


def refuse_non_unicode(frame: pd.DataFrame, columns: Sequence[str], where: str) -> None:
    """ValueError naming the first text value of `columns` that has no UTF-8 form (a lone surrogate, U+D800–U+DFFF).

    Such a value can be neither hashed nor sent, and only a caller's own DataFrame can hold one (files are read as
    UTF-8): refused before anything is sent, rather than half-way through the upload. The message names the column
    and row, never the value. Columns of strings typed by pandas or Arrow are valid by construction; object columns
    are checked by Arrow's conversion, value by value only when it fails.
    """
    for column in dict.fromkeys(columns):
        values = frame[column]
        if values.dtype != object:
            continue
        try:
            pa.array(values, from_pandas=True)
            continue
        except UnicodeEncodeError:
            pass
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed types: the match sends their text (str(v))
            pass
        for row, value in enumerate(values.tolist()):
            try:
                str(value).encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError(
                    f"{where}column {column!r}, row {row}: text that is not valid Unicode (a lone surrogate, "
                    "U+D800 to U+DFFF; rows counted from 0): it can be neither hashed nor sent. Correct the value "
                    "from its source, or set it to None (then counted as missing); replacing the character by '?' "
                    "could make another valid identifier"
                ) from None


def upload_of(status: pb.MatchStatus, kind: str) -> pb.UploadProgress | None:
    """The progress of one upload (`points`, `double_blinded`, `table:<name>`) in a status, if it started."""
    return next((u for u in status.uploads if u.kind == kind), None)


class MatchRunner:
    """Runs one member's match against a server, phase by phase, resuming after failures."""

    def __init__(
        self,
        stub: pb_grpc.MatchingServiceStub,
        metadata: Sequence[tuple[str, str]],
        parent: str,
        state: Path,
        executor: ChunkExecutor,
        progress: bool = True,
        poll_seconds: float = 0.5,
        wait_timeout: float = 3600.0,
        max_retries: int = 30,
        period: int = 0,
    ) -> None:
        self._period = period
        self._stub = stub
        self._md = tuple(metadata)
        self._parent = parent
        self._state = state
        self._executor = executor
        self._progress = progress
        self._poll = poll_seconds
        self._wait_timeout = wait_timeout
        self._max_retries = max_retries

    # -- plumbing -------------------------------------------------------------------------------------------------
    def _retrying(self, phase: str, fn: Callable[[], T]) -> T:
        """Run `fn`, re-running it (it resumes from the server's status) while the server is unreachable.

        When the retries run out, the error names the `phase` it stopped in and that calling `match()` again resumes.
        """
        for attempt in range(self._max_retries + 1):
            try:
                return fn()
            except grpc.RpcError as err:
                error = CleanRoomError.from_rpc(err)
                if error.code not in RETRYABLE:
                    raise error from None
                if attempt == self._max_retries:
                    message = f"{error.message} (stopped in {phase}; call match() again to resume from there)"
                    raise type(error)(error.code, message) from None
                time.sleep(min(5.0, 0.2 * 2**attempt))
        raise AssertionError("unreachable")

    def _streamed(self, call: Callable[..., T], requests: Iterator[Any]) -> T:
        """A client-streaming call whose request stream, if it raises, fails the call with that error.

        gRPC consumes the requests on its own thread and answers an error raised there (a worker that died, a bad
        table) only with `UNKNOWN: Exception iterating requests!`; the member gets the error itself instead.
        """
        raised: list[Exception] = []

        def watched() -> Iterator[Any]:
            try:
                yield from requests
            except Exception as exc:
                raised.append(exc)
                raise

        try:
            return call(watched(), metadata=self._md)
        except grpc.RpcError:
            if raised:
                raise raised[0] from None
            raise

    def status(self) -> pb.MatchStatus:
        """The server's view of this member's match."""
        return self._retrying(
            "status",
            lambda: self._stub.GetMatchStatus(
                pb.GetMatchStatusRequest(parent=self._parent, period=self._period), metadata=self._md
            ),
        )

    def _upload(self, status: pb.MatchStatus, kind: str) -> pb.UploadProgress | None:
        return upload_of(status, kind)

    def _bar(self, total: int, desc: str, unit: str = "chunk") -> tqdm:
        return tqdm(total=total, desc=desc, unit=unit, disable=not self._progress, leave=False)

    def _resumed(self, chunks: Iterable[T], total: int, skip: int, desc: str) -> Iterator[tuple[int, T]]:
        """An upload that resumes at chunk `skip`: (index, chunk) from there on, the progress bar moving with them.

        Every chunk is drawn from `chunks`, the skipped ones too, so a caller's counts cover the whole upload.
        """
        with self._bar(total, desc) as bar:
            bar.update(skip)
            for index, chunk in enumerate(chunks):
                if index >= skip:
                    bar.update(1)
                    yield index, chunk

    # -- phases -----------------------------------------------------------------------------------------------------
    def run(self, plan: MatchPlan, key_path: Path) -> MatchSummary:
        """The whole match; returns once the server has joined both sides."""
        key = load_or_create_key(key_path)
        plan.row_ids = load_or_create_rows(self._state, plan.users[plan.key])
        plan.order = np.argsort(plan.row_ids)
        # With three or more members the own points carry a one-time mask, removed at the chain's final hop.
        upload = chain_scalars(key)[0] if len(self.status().offers) > 1 else key
        counts = self._retrying("points", lambda: self._send_points(plan, upload))
        tables, dropped = self._send_tables(plan)
        self._blind_offers(key)
        final = self._wait(lambda s: s.stage == pb.MatchStatus.STAGE_MATCHED, "waiting for the peer to finish")
        summary = MatchSummary(
            collaboration=self._parent,
            rows=len(plan.users),
            identifiers={t.value: c for t, c in counts.items()},
            tables=tables,
            dropped_events=dropped,
            peer_rejected_points=self._saved_rejected(),
            own_set_size=final.own_set_size,
            peer_set_size=final.peer_set_size,
            matched=True,
            set_sizes=dict(final.set_sizes),
        )
        return summary

    def run_refresh(self, plan: MatchPlan, key_path: Path, retire: np.ndarray) -> RefreshOutcome:
        """One refresh period from this member's side; returns once the server has completed the period.

        The retirements go first (they are refused once this side is sealed), then the new users' points, the
        appended tables, and the double-blinding of the peer's new points, which seals this side. Every step asks
        the server where it stands first, so a second call resumes.
        """
        if not key_path.exists():
            raise FileNotFoundError(
                f"{key_path} is missing: a refresh blinds with the match's key, so only the machine (and state "
                "directory) that matched can refresh"
            )
        key = load_or_create_key(key_path)
        plan.order = np.argsort(plan.row_ids)
        status = self.status()
        sealed = self._upload(status, DOUBLE_BLINDED)
        if status.stage != pb.MatchStatus.STAGE_MATCHED and not (sealed and sealed.committed):
            request = pb.RetireUsersRequest(
                parent=self._parent, period=self._period, row_ids=retire.astype("<i8").tobytes()
            )
            self._retrying("retirements", lambda: self._stub.RetireUsers(request, metadata=self._md))
        counts = self._retrying("points", lambda: self._send_points(plan, key))
        tables, dropped = self._send_tables(plan)
        self._blind_offers(key)
        final = self._wait(lambda s: s.stage == pb.MatchStatus.STAGE_MATCHED, "waiting for the peer to finish")
        return RefreshOutcome({t.value: c for t, c in counts.items()}, tables, dropped, final)

    def _layout(self, plan: MatchPlan) -> list[tuple[IdentifierType, int]]:
        """Chunks of the point upload, in order: (identifier type, first row relative to the plan's offset).

        Deterministic, so resumable. An empty refresh sends one empty chunk (of the first type) to seal its count.
        """
        types = sorted(plan.identifiers, key=lambda t: t.priority)
        if not len(plan.users) and plan.row_offset:
            return [(types[0], 0)]
        starts = range(0, max(len(plan.users), 1), plan.chunk_rows)
        return [(t, s) for t in types for s in starts]

    def _job(self, plan: MatchPlan, key: bytes, id_type: IdentifierType, start: int, count_only: bool) -> BlindJob:
        rows = plan.order[start : start + plan.chunk_rows]
        return BlindJob(
            key=key,
            id_type=id_type,
            values=pa.array(text_at(plan.users[plan.identifiers[id_type]], rows), type=pa.string()),
            prehashed=id_type in plan.prehashed,
            normalizer=plan.normalizer,
            count_only=count_only,
        )

    def _send_points(self, plan: MatchPlan, key: bytes) -> dict[IdentifierType, IdentifierCounts]:
        done = self._upload(self.status(), POINTS)
        layout = self._layout(plan)
        skip = len(layout) if done and done.committed else (done.next_chunk_index if done else 0)
        totals = {t: [0, 0, 0] for t in plan.identifiers}
        reasons: dict[IdentifierType, dict[str, list[Any]]] = {t: {} for t in plan.identifiers}
        jobs = (self._job(plan, key, t, s, count_only=i < skip) for i, (t, s) in enumerate(layout))
        results = self._executor.map(blind_identifiers, jobs)

        def counted() -> Iterator[tuple[tuple[IdentifierType, int], BlindResult]]:
            for (id_type, first_row), result in zip(layout, results, strict=True):
                totals[id_type][0] += result.valid
                totals[id_type][1] += result.invalid
                totals[id_type][2] += result.missing
                for reason, count, example in result.rejected:
                    reasons[id_type].setdefault(reason, [0, example])[0] += count
                yield (id_type, first_row), result

        def requests() -> Iterator[pb.UploadBlindedPointsRequest]:
            chunks = self._resumed(counted(), len(layout), skip, "blinding and uploading identifiers")
            for index, ((id_type, first_row), result) in chunks:
                yield pb.UploadBlindedPointsRequest(
                    parent=self._parent,
                    chunk_index=index,
                    identifier_type=_WIRE_TYPES[id_type],
                    first_row=plan.row_offset + first_row,
                    present=result.present,
                    points=result.points,
                    last=index == len(layout) - 1,
                    total_rows=plan.row_offset + len(plan.users),
                    period=self._period,
                )

        if skip == len(layout):
            for _ in requests():  # counts only: the upload committed before
                pass
        else:
            self._streamed(self._stub.UploadBlindedPoints, requests())
        return {t: IdentifierCounts(v[0], v[1], v[2], rejected_by_reason(reasons[t])) for t, v in totals.items()}

    def _tables(self, plan: MatchPlan) -> tuple[dict[str, pd.DataFrame], dict[str, int]]:
        """The tables to upload, keyed by row number; events whose key is not a user are dropped and counted."""
        # In row-number order: the row_id column is then 0, 1, 2, ... and compresses to almost nothing.
        users = plan.users[list(plan.attributes)].iloc[plan.order].reset_index(drop=True)
        users.insert(0, "row_id", plan.row_offset + np.arange(len(users), dtype=np.int64))
        # A refresh without new users appends no users rows.
        tables = {USERS_TABLE: users} if len(users) or not plan.row_offset else {}
        dropped: dict[str, int] = {}
        if not plan.events:
            return tables, dropped
        ids = (
            plan.known_ids
            if plan.known_ids is not None
            else pd.Series(plan.row_ids, index=plan.users[plan.key].to_numpy())
        )
        for name, events in plan.events.items():
            if plan.key not in events.columns:
                raise ValueError(f"event table {name!r} needs the key column {plan.key!r} to point at users")
            row_id = events[plan.key].map(ids)
            keep = row_id.notna().to_numpy()
            dropped[name] = int((~keep).sum())
            table = events.loc[keep].drop(columns=[plan.key]).reset_index(drop=True)
            table.insert(0, "row_id", row_id[keep].astype(np.int64).to_numpy())
            tables[name] = table.sort_values("row_id", kind="stable", ignore_index=True)
        return tables, dropped

    def _send_tables(self, plan: MatchPlan) -> tuple[dict[str, int], dict[str, int]]:
        tables, dropped = self._tables(plan)
        for name, df in tables.items():
            self._retrying(f"table {name}", lambda name=name, df=df: self._send_table(name, df))  # type: ignore[misc]
        return {name: len(df) for name, df in tables.items()}, dropped

    def _send_table(self, name: str, df: pd.DataFrame) -> None:
        done = self._upload(self.status(), TABLE_KIND + name)
        if done and done.committed:
            return
        skip = done.next_chunk_index if done else 0
        total, chunks = arrow_chunks(df)

        def requests() -> Iterator[pb.UploadTableRequest]:
            for index, data in self._resumed(chunks, total, skip, f"uploading {name}"):
                yield pb.UploadTableRequest(
                    parent=self._parent,
                    table=name,
                    chunk_index=index,
                    arrow_ipc=data,
                    last=index == total - 1,
                    period=self._period,
                )

        self._streamed(self._stub.UploadTable, requests())

    def _wait(self, ready: Callable[[pb.MatchStatus], bool], desc: str) -> pb.MatchStatus:
        """Poll the status until `ready`: every 50 ms at first, backing off to `poll_seconds`.

        A short wait (a small refresh) then ends soon after the peer; a long one costs one call per `poll_seconds`.
        """
        deadline = time.monotonic() + self._wait_timeout
        pause = min(0.05, self._poll)
        with tqdm(desc=desc, disable=not self._progress, leave=False, bar_format="{desc} {elapsed}") as bar:
            while True:
                status = self.status()
                if ready(status):
                    return status
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{desc}: gave up after {self._wait_timeout:.0f} s; run match() again to resume")
                bar.refresh()
                time.sleep(pause)
                pause = min(pause * 1.5, self._poll)

    def _rejected_path(self, origin: str = "") -> Path:
        name = "rejected" + (f"-{self._period}" if self._period else "") + (f"-from-{origin}" if origin else "")
        return self._state / f"{name}.json"

    def _saved_rejected(self) -> int:
        paths = [self._rejected_path(), *self._state.glob(self._rejected_path("*").name)]
        return sum(sum(json.loads(p.read_text()).values()) for p in paths if p.exists())

    def _blind_offers(self, key: bytes) -> None:
        """Blind every other member's points at this member's hop, each as soon as the hops before are done.

        With two members that is the peer's points, once (the double-blinding); with more, one hop in each other
        member's chain, then the final hop of its own chain: its points come back blinded by everyone, it removes
        its one-time mask and answers with tags (PROTOCOL.md section 9).
        """
        while True:
            status = self.status()
            waiting = [o for o in status.offers if not o.done]
            if not waiting:
                return
            ready = [o for o in waiting if o.ready]
            if not ready:
                desc = (
                    f"waiting for the peer's {'new ' if self._period else ''}points"
                    if len(status.offers) == 1
                    else "waiting for " + ", ".join(o.origin for o in waiting) + " (their points reach you in turn)"
                )
                self._wait(
                    lambda s: any(o.ready and not o.done for o in s.offers) or all(o.done for o in s.offers), desc
                )
                continue
            for offer in ready:
                self._retrying("double-blinding", functools.partial(self._blind_offer, key, offer))

    def _blind_offer(self, key: bytes, offer: pb.ChainOffer) -> None:
        """Fetch one offer from where the server stands, blind it, and submit it chunk by chunk (resumable)."""
        status = self.status()
        current = next(o for o in status.offers if o.origin == offer.origin)
        if current.done:
            return
        several = len(status.offers) > 1
        # the final hop of a chain of three or more is the member's own: it removes its mask (protocol section 9)
        scalar = chain_scalars(key)[1] if several and current.last_hop else key
        done = self._upload(status, CHAIN_KIND + offer.origin if several else DOUBLE_BLINDED)
        start = done.next_chunk_index if done else 0
        total = current.chunks
        origin = offer.origin if several else ""
        path = self._rejected_path(origin)
        saved: dict[str, int] = json.loads(path.read_text()) if path.exists() else {}
        saved = {k: v for k, v in saved.items() if int(k) < start}
        fetched = self._stub.FetchPeerPoints(
            pb.FetchPeerPointsRequest(parent=self._parent, start_chunk=start, period=self._period, origin=origin),
            metadata=self._md,
        )
        indexes: list[int] = []

        def jobs() -> Iterator[ReblindJob]:
            for chunk in fetched:
                indexes.append(chunk.chunk_index)
                yield ReblindJob(key=scalar, points=chunk.points, last_hop=current.last_hop)

        desc = "double-blinding the peer's points" if not several else f"blinding {offer.origin}'s points"
        if several:
            desc = (
                "unmasking this member's points and taking their tags"
                if current.last_hop
                else f"{desc} (hop {current.hop} of {current.hops})"
            )

        def requests() -> Iterator[pb.SubmitDoubleBlindedPointsRequest]:
            with self._bar(total, desc) as bar:
                bar.update(start)
                for result in self._executor.map(reblind_points, jobs()):
                    index = indexes.pop(0)
                    saved[str(index)] = result.rejected
                    path.write_text(json.dumps(saved))
                    bar.update(1)
                    yield pb.SubmitDoubleBlindedPointsRequest(
                        parent=self._parent,
                        chunk_index=index,
                        tags=result.tags,
                        blinded_points=result.points,
                        last=index == total - 1,
                        period=self._period,
                        origin=origin,
                    )

        self._streamed(self._stub.SubmitDoubleBlindedPoints, requests())


def rejected_by_reason(reasons: Mapping[str, Sequence[Any]]) -> tuple[Rejected, ...]:
    """`Rejected` entries from {reason: (count, example)}, the most frequent first (then by reason)."""
    entries = [Rejected(reason, int(count), str(example)) for reason, (count, example) in reasons.items()]
    return tuple(sorted(entries, key=lambda r: (-r.count, r.reason)))
