"""Open collaboration files are capped: touching many collaborations cannot grow threads, memory or fds unboundedly.

Each open collaboration file is its own DuckDB instance (worker threads, ~4 MB, 2 file descriptors). Two colluding
members can create and touch collaborations at the creation rate (about 780 an hour); if every file stayed open
once touched, the server would run out of threads, memory or descriptors for every tenant. These tests use a real
`Room` on a temporary directory, real DuckDB files and real noise, and count the process's native threads in
/proc (`threading.active_count()` does not see DuckDB's).
"""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pyarrow as pa
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from cleanroom.analytics import OverlapQuery
from cleanroom.analytics.queries import DimensionRef
from cleanroom.audit.transparency import AuditTrees
from cleanroom.collaborations import MAX_REOPENS_PER_PAGE
from cleanroom.devtools.synthetic import load_direct
from cleanroom.principals import Principal, Role
from cleanroom.privacy.budget import Charge, Limits
from cleanroom.room import Room
from cleanroom.storage import StorageLimits
from cleanroom.storage.store import MAX_OPEN_FILES, acting_for

BRAND, PLATFORM = Principal("brand", Role.MEMBER), Principal("platform", Role.MEMBER)
TIERS = ["gold", "silver", "basic"]
POLICY = {
    "name": "open-files",
    "members": {
        "brand": {"abilities": ["contribute", "query", "receive_results"]},
        "platform": {"abilities": ["contribute"]},
    },
    "identifiers": ["email"],
    "tables": {"brand.users": {"dimensions": {"tier": TIERS}}, "platform.users": {"dimensions": {}}},
    "queries": ["overlap"],
    "min_group_size": 5,
    "epsilon": {"per_member_total": 10.0, "per_query_max": 1.0},
}
LIMITS = Limits(10.0, 0.0)
#: Threads and descriptors one open collaboration file may cost at most (measured: 1 thread, 2 fds each).
PER_FILE = 2
#: What else may come and go meanwhile (pytest, the OS).
SLACK = 16


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _queryable(room: Room, collaboration_id: str) -> None:
    """An approved, matched collaboration: 60 brand users (tiers in turn) matched one to one with the platform's."""
    c = room.collaborations.create(BRAND, collaboration_id, yaml.safe_dump(POLICY))
    for member in (BRAND, PLATFORM):
        room.collaborations.approve(member, c.id, c.policy_etag)
    rows = np.arange(60, dtype=np.int64)
    tables = {
        ("brand", "users"): pa.table({"row_id": rows, "tier": [TIERS[i % 3] for i in range(60)]}),
        ("platform", "users"): pa.table({"row_id": rows}),
    }
    load_direct(room, c.id, tables, rows, rows)


def _touch(room: Room, collaboration_id: str) -> None:
    """Create a collaboration's file and read from it, the way every request first reaches a file."""
    room.store.create(collaboration_id)
    room.store.of(collaboration_id).cursor().execute("SELECT count(*) FROM audit_log").fetchall()


def _overlap(room: Room, collaboration_id: str) -> float:
    q = OverlapQuery((DimensionRef("brand", "tier"),), epsilon=0.5)
    answer = room.queries.overlap(BRAND, collaboration_id, q)
    assert {c.keys[0] for c in answer.cells} >= set(TIERS)
    return answer.epsilon_spent


def test_touching_a_hundred_collaborations_keeps_threads_fds_and_open_files_bounded(tmp_path):
    room = Room.open(tmp_path)
    _queryable(room, "kept")
    assert _overlap(room, "kept") == 0.5
    threads, fds = _threads(), _fds()
    started = time.monotonic()
    for i in range(100):
        _touch(room, f"touched-{i}")
    assert time.monotonic() - started < 30
    bound = MAX_OPEN_FILES * PER_FILE + SLACK  # independent of how many were touched
    assert _threads() - threads <= bound, "DuckDB threads grow with the collaborations touched"
    assert _fds() - fds <= bound, "file descriptors grow with the collaborations touched"
    assert len(room.store.opened()) <= MAX_OPEN_FILES
    # The first collaboration, closed at the cap long ago, still answers, and its ledger holds.
    assert _overlap(room, "kept") == 0.5
    assert room.budget.status("kept", "brand", LIMITS).spent == pytest.approx(1.0)
    assert room.audit.verify("kept").valid
    room.close()


def test_a_file_closed_at_the_cap_reopens_as_it_was_and_charges_nothing_twice(tmp_path):
    room = Room.open(tmp_path, StorageLimits(max_open=2))
    _queryable(room, "kept")
    assert _overlap(room, "kept") == 0.5
    # A query in flight: its budget is reserved, no cursor of its file is alive (as while noise is drawn).
    reservation = room.budget.reserve("kept", [Charge("brand", 0.25, 0.0)], LIMITS, "overlap", {"epsilon": 0.25})
    for i in range(3):
        _touch(room, f"other-{i}")
    assert "kept" not in room.store.opened()  # closed at the cap, the least recently used idle file
    assert room.budget.status("kept", "brand", LIMITS).reserved == pytest.approx(0.25)  # reopened: still held
    assert "kept" in room.store.opened()
    room.budget.commit(reservation, "query.overlap", {"epsilon": 0.25}, {"cells": []})
    for i in range(3):
        _touch(room, f"more-{i}")
    assert "kept" not in room.store.opened()
    assert _overlap(room, "kept") == 0.5
    actions = [e.action for e in room.audit.entries("kept")]
    assert "query.interrupted" not in actions  # reopening is not a restart: the reservation was charged once
    assert actions.count("query.overlap") == 3
    status = room.budget.status("kept", "brand", LIMITS)
    assert (status.spent, status.reserved) == (pytest.approx(1.25), 0.0)
    assert room.audit.verify("kept").valid
    # The transparency tree kept in memory across the closing is the one the stored chain gives.
    tree = room.trees.head("kept")
    for i in range(3):
        _touch(room, f"last-{i}")
    assert "kept" not in room.store.opened()
    again, rebuilt = room.trees.head("kept"), AuditTrees(room.audit).head("kept")
    assert tree.size == len(actions)
    assert (again.size, again.root) == (rebuilt.size, rebuilt.root) == (tree.size, tree.root)
    room.close()

    # After a real restart nothing is left to charge either, and the ledger is the same.
    room = Room.open(tmp_path)
    assert "query.interrupted" not in [e.action for e in room.audit.entries("kept")]
    assert room.budget.status("kept", "brand", LIMITS).spent == pytest.approx(1.25)
    room.close()


def test_a_file_in_use_is_never_closed_under_its_cursor_or_transaction(tmp_path):
    room = Room.open(tmp_path, StorageLimits(max_open=1))
    _touch(room, "busy")
    reading = room.store.of("busy").cursor()
    with room.store.of("busy").transaction() as cur:
        cur.execute("INSERT INTO auditors VALUES ('a', 'busy')")
        for i in range(4):
            _touch(room, f"other-{i}")
        assert "busy" in room.store.opened()  # over the cap rather than closed under the transaction
        assert cur.execute("SELECT count(*) FROM auditors").fetchall() == [(1,)]
    assert reading.execute("SELECT count(*) FROM auditors").fetchall() == [(1,)]
    del reading, cur
    _touch(room, "last")
    assert room.store.opened() == ["last"]  # once unused, closed at the next open
    assert room.store.of("busy").cursor().execute("SELECT count(*) FROM auditors").fetchall() == [(1,)]
    room.close()


def test_many_threads_over_many_files_at_a_small_cap_all_succeed(tmp_path):
    room = Room.open(tmp_path, StorageLimits(max_open=3))
    ids = [f"shared-{i}" for i in range(8)]
    for cid in ids:
        _touch(room, cid)
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            for _ in range(20):
                cid = ids[int(rng.integers(len(ids)))]
                with room.store.of(cid).transaction() as cur:
                    cur.execute("INSERT INTO auditors VALUES (?, ?)", [str(seed), cid])
                room.store.of(cid).cursor().execute("SELECT count(*) FROM auditors").fetchall()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert errors == []
    total = sum(room.store.of(cid).cursor().execute("SELECT count(*) FROM auditors").fetchall()[0][0] for cid in ids)
    assert total == 4 * 20  # every committed write is there, whatever was closed and reopened meanwhile
    room.close()


@given(st.integers(-(2**40), 2**40), st.sampled_from(["threads", "max_open"]))
def test_threads_and_the_cap_are_at_least_one_or_unset(value, name):
    if value >= 1:
        assert getattr(StorageLimits(**{name: value}), name) == value
    else:
        with pytest.raises(ValueError, match=f"{name} must be at least 1"):
            StorageLimits(**{name: value})


def test_a_member_touching_its_own_collaborations_in_a_loop_never_closes_another_members_file(tmp_path):
    """Thrash: past the cap a member cycling through its own collaborations closes its own files, not a victim's.

    With plain LRU, every file the attacker touched was more recent than the victim's, so the victim's file was
    closed between any two of its calls and every victim call reopened it (measured: a budget read went from
    0.35 ms to 147 ms, an overlap query from 32 ms to 220 ms).
    """
    room = Room.open(tmp_path, StorageLimits(max_open=4))
    with acting_for("brand"):
        _queryable(room, "victim")
        assert _overlap(room, "victim") == 0.5
    with acting_for("mallory"):
        for i in range(8):
            _touch(room, f"mallory-{i}")
    for _ in range(3):
        with acting_for("brand"):
            assert room.budget.status("victim", "brand", LIMITS).spent == pytest.approx(0.5)
        with acting_for("mallory"):
            for i in range(8):
                _touch(room, f"mallory-{i}")
                assert "victim" in room.store.opened(), "the attacker's loop closed the victim's file"
        assert len(room.store.opened()) <= 4  # the attacker's own files were closed instead
    room.close()


def test_past_the_cap_the_heaviest_holder_gives_up_files_first_and_a_lone_holder_at_its_share_too(tmp_path):
    room = Room.open(tmp_path, StorageLimits(max_open=3))
    with acting_for("a"):
        _touch(room, "a-0")
    with acting_for("b"):
        for i in range(3):
            _touch(room, f"b-{i}")
    assert room.store.opened() == ["a-0", "b-1", "b-2"]  # b held three of four: its oldest went
    with acting_for("a"):
        for i in range(1, 4):
            _touch(room, f"a-{i}")
    assert len(room.store.opened()) == 3
    assert sum(cid.startswith("a-") for cid in room.store.opened()) >= 1
    room.close()


def test_one_listing_call_reopens_a_bounded_number_of_closed_files_and_the_pages_still_list_all(tmp_path):
    """A member in many collaborations lists them with the largest page: each listed one is read from its file,
    and every closed one costs a reopen (76 ms each on the shared test machine: a page of 1000 held a worker for
    over a minute). A page now ends after `MAX_REOPENS_PER_PAGE` reopens, with a token for the rest."""
    room = Room.open(tmp_path, StorageLimits(max_open=4))
    ids = [f"listed-{i:02d}" for i in range(MAX_REOPENS_PER_PAGE + 8)]
    with acting_for("brand"):
        for i, cid in enumerate(ids):  # two proposers: each may have 20 proposals pending
            room.collaborations.create((BRAND, PLATFORM)[i % 2], cid, yaml.safe_dump(POLICY))
        listed: list[str] = []
        token, calls = "", 0
        while True:
            was_open = len(room.store.opened())
            page, token = room.collaborations.list(BRAND, 1000, token)
            calls += 1
            assert len(page) <= MAX_REOPENS_PER_PAGE + was_open, "one call reopened more files than allowed"
            listed += [c.id for c in page]
            if not token:
                break
    assert listed == ids  # in order, each once, across the pages
    assert calls >= 2
    room.close()
