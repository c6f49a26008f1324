"""Small collaborations built in-process: the real policy, upload checks, join and query engine, without the PSI.

A person is a dict: the member's users-table attributes, its identifiers (`email`, `phone`: plain strings that stand
for doubly blinded tags) and its events. `build` uploads every member's tables through the real upload checks,
writes the members' join keys as the relay would (one tag per identifier and row), runs the real join and returns
a room ready to query. Removing a person from the input and building again is the neighbouring dataset.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from cleanroom.analytics.engine import QueryEngine
from cleanroom.analytics.queries import (
    ActivationQuery,
    AttributionQuery,
    DimensionRef,
    EventFilter,
    FunnelFlowQuery,
    FunnelQuery,
    LiftQuery,
    LoyaltyQuery,
    OverlapQuery,
    SegmentInsightQuery,
    ValueQuery,
)
from cleanroom.matching.join import ID_TYPE_CODES, join_matches
from cleanroom.matching.progress import UploadProgress, record_total_rows, save_progress
from cleanroom.principals import Principal, Role
from cleanroom.privacy.noise import DiscreteLaplace
from cleanroom.room import Room
from cleanroom_client.identity import IdentifierType
from cleanroom_client.policy import TableSpec
from cleanroom_client.tables import arrow_chunks

BRAND, PLATFORM = Principal("brand", Role.MEMBER), Principal("platform", Role.MEMBER)
MEMBERS = {"brand": BRAND, "platform": PLATFORM}


def tag(member_key: str, id_type: str) -> int:
    """A stand-in for the 64-bit tag of a doubly blinded identifier: equal strings give equal tags."""
    digest = hashlib.sha256(f"{id_type}:{member_key}".encode()).digest()
    return int.from_bytes(digest[:8], "little", signed=True) or 1


@dataclass
class MemberData:
    """One member's rows: users (with identifiers) and event tables keyed by the users' position."""

    users: list[dict[str, Any]] = field(default_factory=list)
    #: table name -> rows, each with `user` (an index into `users`) and the table's columns.
    events: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def without_user(self, index: int) -> MemberData:
        """The neighbouring dataset: this member without one users-table row and its events."""
        users = [u for i, u in enumerate(self.users) if i != index]
        shift = {old: new for new, old in enumerate(i for i in range(len(self.users)) if i != index)}
        events = {
            name: [{**e, "user": shift[e["user"]]} for e in rows if e["user"] != index]
            for name, rows in self.events.items()
        }
        return MemberData(users, events)


IDENTIFIERS = ("email", "phone")


def _frame(rows: list[dict[str, Any]], spec: TableSpec) -> pd.DataFrame:
    """A member's table with the Arrow types the policy's columns need (time, text dimensions, float measures)."""
    columns: dict[str, Any] = {}
    for c in spec.columns:
        values = [r.get(c) for r in rows]
        if c == spec.time:
            columns[c] = pd.to_datetime(pd.Series(values, dtype="object"))
        elif c in spec.measures:
            columns[c] = pd.Series(values, dtype="float64")
        else:
            columns[c] = pd.Series(values, dtype="string")
    return pd.DataFrame(columns, index=range(len(rows)))


def _upload(room: Room, collab_id: str, member: str, name: str, frame: pd.DataFrame) -> None:
    collab = room.collaborations.get(Principal(member, Role.MEMBER), collab_id)
    _, stream = arrow_chunks(frame)
    chunks = list(stream)
    for i, chunk in enumerate(chunks):
        room.tables.upload_chunk(collab, member, name, i, chunk, last=i == len(chunks) - 1)


def insert_match_keys(cur: duckdb.DuckDBPyConnection, keys: list[tuple[str, str, int, int, int]]) -> None:
    """Add (collab, member, id_type, row_id, dkey) rows to match_keys as one Arrow table in one statement.

    DuckDB's `executemany` runs the statement once a row: thousands of keys took most of a build's time.
    """
    if not keys:
        return
    collab, member, id_type, row_id, dkey = zip(*keys, strict=True)
    table = pa.table(
        {
            "collab": pa.array(collab, pa.string()),
            "member": pa.array(member, pa.string()),
            "id_type": pa.array(id_type, pa.int8()),
            "row_id": pa.array(row_id, pa.int64()),
            "dkey": pa.array(dkey, pa.int64()),
        }
    )
    cur.register("new_match_keys", table)
    try:
        cur.execute("INSERT INTO match_keys SELECT * FROM new_match_keys")
    finally:
        cur.unregister("new_match_keys")


def build(
    root: Path,
    policy: str,
    data: Mapping[str, MemberData],
    noise: Any = None,
    collab_id: str = "privacy-test",
) -> Room:
    """A fresh room holding one matched collaboration of `data` (the policy's members; `brand` proposes)."""
    room = Room.open(root)
    if noise is not None:
        room.queries._noise = noise
    c = room.collaborations.create(BRAND, collab_id, policy)
    for m in c.members:
        room.collaborations.approve(Principal(m.name, Role.MEMBER), c.id, c.policy_etag)
    collab = room.collaborations.get(BRAND, c.id)
    types = [IdentifierType(t) for t in collab.policy.identifiers]
    for member, md in data.items():
        with room.store.of(
            collab.id
        ).transaction() as cur:  # the numbering of the (simulated) point upload that tables refer to
            record_total_rows(cur, c.id, member, 0, len(md.users))
        spec = collab.policy.table(member, "users") or TableSpec(member, "users")
        users = _frame(md.users, spec)
        users.insert(0, "row_id", np.arange(len(md.users), dtype=np.int64))
        _upload(room, c.id, member, "users", users)
        for name, rows in md.events.items():
            espec = collab.policy.table(member, name)
            assert espec is not None, f"{member}.{name} is not in the policy"
            frame = _frame(rows, espec)
            frame.insert(0, "row_id", np.asarray([r["user"] for r in rows], dtype=np.int64))
            _upload(room, c.id, member, name, frame)
        keys = [
            (c.id, member, ID_TYPE_CODES[t], i, tag(str(u[t.value]), t.value))
            for i, u in enumerate(md.users)
            for t in types
            if u.get(t.value) is not None
        ]
        with room.store.of(collab.id).transaction() as cur:
            insert_match_keys(cur, keys)
            rows_with_keys = len({k[3] for k in keys})
            save_progress(cur, c.id, member, UploadProgress("points", 1, len(keys), True), rows_with_keys)
    with room.store.of(collab.id).transaction() as cur:
        join_matches(cur, c.id, (collab.policy.hub, *collab.policy.spokes), types)
    return room


#: tmpfs, where the machine has one writable (Linux): the rooms' directories go there.
SHM = Path("/dev/shm")


@pytest.fixture
def rooms(tmp_path: Path) -> Iterator[Callable[..., Room]]:
    """Build rooms in fresh directories (OpenDP's noise unless told otherwise); all closed and removed at the end.

    The directories are on tmpfs (`SHM`) when there is one, else under `tmp_path`. A room is a real DuckDB file and
    audit log either way; these tests build two rooms per hypothesis example and test nothing about the disk, and
    on disk the rooms' commits, fsyncs and checkpoints were a third to a half of their time.
    """
    on_shm = SHM.is_dir() and os.access(SHM, os.W_OK)
    root = Path(tempfile.mkdtemp(prefix="cleanroom-rooms-", dir=SHM)) if on_shm else tmp_path
    opened: list[Room] = []
    counter = iter(range(10**6))

    def make(policy: str, data: Mapping[str, MemberData], noise: Any = None) -> Room:
        room = build(root / f"room-{next(counter)}", policy, data, noise if noise is not None else DiscreteLaplace())
        opened.append(room)
        return room

    try:
        yield make
    finally:
        for r in opened:
            r.close()
        if on_shm:
            shutil.rmtree(root, ignore_errors=True)


@dataclass
class Recorded:
    """A vector handed to the noise: its exact values, stated sensitivity and epsilon."""

    counts: list[int]
    sensitivity: int
    epsilon: float


class RecordingNoise:
    """A noise mechanism that records what it is given and adds nothing (for exact-vector comparisons only)."""

    def __init__(self) -> None:
        self.calls: list[Recorded] = []

    def release(self, counts: list[int], sensitivity: int, epsilon: float) -> tuple[list[int], float]:
        self.calls.append(Recorded(list(counts), sensitivity, epsilon))
        return list(counts), sensitivity / epsilon


DAY0, DAY1 = dt.date(2026, 10, 1), dt.date(2026, 11, 1)
#: Loyalty periods (end exclusive) around the conversions the privacy datasets draw near 2026-11-01.
PERIOD1, PERIOD2 = (dt.date(2026, 10, 30), dt.date(2026, 11, 2)), (dt.date(2026, 11, 2), dt.date(2026, 11, 6))


def _attribution(model: str) -> Callable[[QueryEngine, str], object]:
    q = AttributionQuery(model, 3, "campaign", 1.0, DimensionRef.parse("brand.tier"), half_life_days=0.05)
    return lambda e, c: e.attribution(BRAND, c, q)


#: Retargeting: reached by campaign c1 around 2026-11-01, no conversion from then on.
RETARGET = (
    EventFilter("platform.exposures", dt.date(2026, 10, 30), dt.date(2026, 11, 6), where=(("campaign", "c1"),)),
    EventFilter("brand.conversions", DAY1, dt.date(2026, 11, 20), present=False),
)


def every_query() -> list[Callable[[QueryEngine, str], object]]:
    """One call of every query type the engine releases numbers or lists for (lookalike aside), by the brand."""
    d = DimensionRef.parse
    return [
        lambda e, c: e.overlap(BRAND, c, OverlapQuery((d("brand.tier"), d("platform.age_band")), 1.0)),
        lambda e, c: e.overlap(BRAND, c, OverlapQuery((), 1.0)),
        lambda e, c: e.funnel(BRAND, c, FunnelQuery(d("brand.tier"), 1.0)),
        lambda e, c: e.funnel_flow(BRAND, c, FunnelFlowQuery(DAY0, DAY1, 1.0)),
        lambda e, c: e.segment_insight(BRAND, c, SegmentInsightQuery(d("platform.age_band"), 1.0)),
        lambda e, c: e.segment_insight(BRAND, c, SegmentInsightQuery(d("brand.tier"), 1.0)),
        lambda e, c: e.value(
            BRAND, c, ValueQuery((d("brand.tier"), d("platform.age_band")), "brand.conversions.value", 1.0)
        ),
        lambda e, c: e.value(BRAND, c, ValueQuery((d("brand.tier"),), "platform.users.visits", 1.0)),
        lambda e, c: e.loyalty(BRAND, c, LoyaltyQuery((d("platform.stage_4a"),), PERIOD1, PERIOD2, 1.0)),
        *(_attribution(m) for m in ("last_touch", "linear", "time_decay", "position_based")),
        lambda e, c: e.attribution(BRAND, c, AttributionQuery("first_touch", 2, "channel", 1.0, click_over_view=True)),
        lambda e, c: e.lift(BRAND, c, LiftQuery("c1", 1.0)),
        lambda e, c: e.activate(BRAND, c, ActivationQuery(((d("brand.tier"), "gold"),), 1.0, 1e-9)),
        lambda e, c: e.activate(BRAND, c, ActivationQuery((), 1.0, 1e-9, RETARGET)),
    ]


#: The policy the privacy tests query under: every query type, two identifier types, a negative revenue bound.
PRIVACY_POLICY = """\
name: privacy-test
members:
  brand:    {abilities: [contribute, query, receive_results]}
  platform: {abilities: [contribute, receive_audiences]}
identifiers: [email, phone]
tables:
  brand.users:       {dimensions: {tier: [gold, basic]}}
  brand.conversions: {time: ts, measures: {value: [-50, 100]}, max_per_person: 2}
  platform.users:    {dimensions: {age_band: [young, old], stage_4a: [aware, appeal, act, advocate]},
                      measures: {visits: [0, 10]}}
  platform.stage_history: {time: day, dimensions: {stage_4a: [aware, appeal, act, advocate]}}
  platform.exposures: {time: ts, dimensions: {campaign: [c1, c2], channel: [search, feed], kind: [impression, click]}}
  platform.test_groups: {dimensions: {campaign: [c1, c2], test_group: [exposed, holdout]}}
queries: [overlap, funnel, funnel_flow, segment_insight, value, loyalty, attribution, lift, lookalike, activation]
activation: {recipient: platform, dimensions: [brand.tier, platform.age_band], min_size: 3,
             events: [platform.exposures, brand.conversions]}
min_group_size: 1
epsilon: {per_member_total: 1.0e+6, per_query_max: 1.0e+4, per_query_min: 0.01}
delta: {per_member_total: 1.0e-5, per_query_max: 1.0e-6}
"""
