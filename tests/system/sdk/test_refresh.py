"""A living collaboration over TLS: three refreshes with new and retired users on both sides, and events appended.

The pairs after the third refresh must be exactly those of a new match of the same final data, pair for pair
(compared as pairs of the members' own keys, through each member's local ledger); retired users' rows are gone
from every table; queries read the period they name; a per-period budget renews when a period completes.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from cleanroom.devtools.devpki import make_dev_pki
from cleanroom.matching import periods
from cleanroom.principals import Role
from cleanroom.server import ServerConfig, create_server
from cleanroom.server.app import RunningServer, TlsConfig
from cleanroom_client import CleanRoomClient, SerialExecutor
from cleanroom_client import refresh as refresh_state
from cleanroom_client.errors import (
    CleanRoomError,
    FailedPreconditionError,
    InvalidArgumentError,
    RefreshInProgressError,
)

#: What docs/security.md promises for one RetireUsers call, whatever the peer does (here: a few users, a small room).
RETIRE_BOUND_SECONDS = 5.0

POLICY: dict[str, Any] = {
    "name": "living",
    "members": {
        "brand": {"abilities": ["contribute", "query", "receive_results"]},
        "platform": {"abilities": ["contribute"]},
    },
    "identifiers": ["email", "phone"],
    "tables": {
        "brand.users": {"dimensions": {"tier": ["gold", "basic"]}},
        "brand.conversions": {"time": "ts", "measures": {"value": [0, 100]}, "max_per_person": 3},
        "platform.users": {"dimensions": {"age_band": ["young", "old"]}},
        "platform.exposures": {"time": "ts", "dimensions": {"campaign": ["c1", "c2"]}, "max_per_person": 5},
    },
    "queries": ["overlap"],
    "min_group_size": 1,
    "epsilon": {"per_member_total": 2.0, "per_query_max": 1.0},
    "refresh": {
        "tables": ["brand.users", "brand.conversions", "platform.users", "platform.exposures"],
        "min_days_between": 0,
    },
}


def person(i: int, side: str) -> dict[str, Any]:
    """Person i as one member holds them: every 7th has a different email at the brand (the phone decides)."""
    email = f"p{i}@example.com" if side == "platform" or i % 7 else f"alias{i}@example.org"
    phone = f"+86 138 0013 {i:04d}" if i % 3 else None
    row: dict[str, Any] = {"key": f"{side[0]}{i}", "email": email, "phone": phone}
    row["tier" if side == "brand" else "age_band"] = (
        ("gold", "basic")[i % 2] if side == "brand" else ("young", "old")[i % 2]
    )
    return row


def users(ids: range | list[int], side: str) -> pd.DataFrame:
    columns = ["key", "email", "phone", "tier" if side == "brand" else "age_band"]
    return pd.DataFrame([person(i, side) for i in ids], columns=columns)


def events(ids: list[int], side: str, day: int) -> pd.DataFrame:
    """One event per person on `day` of November 2026."""
    ts = dt.datetime(2026, 11, day, 12)
    if side == "brand":
        return pd.DataFrame({"key": [f"b{i}" for i in ids], "ts": ts, "value": [float(i % 50) for i in ids]})
    return pd.DataFrame({"key": [f"p{i}" for i in ids], "ts": ts, "campaign": ["c1", "c2"] * (len(ids) // 2)})


@pytest.fixture(scope="module")
def room(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("refresh")
    pki = make_dev_pki(root / "pki")
    tls = TlsConfig(pki.server_cert.read_bytes(), pki.server_key.read_bytes())
    server = create_server(ServerConfig(data_dir=root / "server", tls=tls))
    tokens = {n: server.room.principals.add(n, Role.MEMBER) for n in ("brand", "platform")}
    clients = {
        n: CleanRoomClient(
            f"localhost:{server.port}",
            token=t,
            root_certificates=pki.ca,
            state_dir=root / n,
            executor=SerialExecutor(),
            progress=False,
            chunk_rows=64,
        )
        for n, t in tokens.items()
    }
    yield server, clients
    for c in clients.values():
        c.close()
    server.stop(None)


def both(*calls: Any) -> list[Any]:
    """Run the two members' calls at once (each waits for the other)."""
    with ThreadPoolExecutor(2) as pool:
        return [f.result() for f in [pool.submit(c) for c in calls]]


def start(clients: dict[str, CleanRoomClient], collaboration_id: str, policy: dict[str, Any]) -> str:
    b, p = clients["brand"], clients["platform"]
    c = b.create_collaboration(yaml.safe_dump(policy), collaboration_id)
    b.approve_policy(c.id)
    p.approve_policy(c.id)
    return c.id


def match(clients: dict[str, CleanRoomClient], cid: str, brand: pd.DataFrame, platform: pd.DataFrame, **ev: Any):
    ids = {"email": "email", "phone": "phone"}
    return both(
        lambda: clients["brand"].match(
            cid, brand, "key", ids, ["tier"], events={"conversions": ev["bev"]}, wait_timeout=120
        ),
        lambda: clients["platform"].match(
            cid, platform, "key", ids, ["age_band"], events={"exposures": ev["pev"]}, wait_timeout=120
        ),
    )


def match_fifty(clients: dict[str, CleanRoomClient], cid: str) -> None:
    """Match people 0 .. 49 on both sides, with two events each."""
    match(
        clients,
        cid,
        users(range(0, 50), "brand"),
        users(range(0, 50), "platform"),
        bev=events([0, 1], "brand", 1),
        pev=events([0, 1], "platform", 1),
    )


def key_pairs(server: RunningServer, clients: dict[str, CleanRoomClient], cid: str) -> set[tuple[str, str]]:
    """The pairs that hold now, as (brand key, platform key), mapped through each member's local ledger."""
    rows = (
        server.room.store.of(cid)
        .cursor()
        .execute(
            "SELECT row_a, row_b FROM matches WHERE collab = ? AND member_a = 'brand' AND period_to IS NULL", [cid]
        )
        .fetchall()
    )
    ledgers = {
        n: pd.read_parquet(Path(c.collaboration_dir(cid)) / "rows.parquet").set_index("row_id")["key"]
        for n, c in clients.items()
    }
    return {(str(ledgers["brand"][a]), str(ledgers["platform"][b])) for a, b in rows}


def test_three_refreshes_equal_a_full_rematch_pair_for_pair(room) -> None:
    server, clients = room
    b, p = clients["brand"], clients["platform"]
    cid = start(clients, "living", POLICY)
    brand_ids, platform_ids = set(range(0, 300)), set(range(150, 450))
    match(
        clients,
        cid,
        users(sorted(brand_ids), "brand"),
        users(sorted(platform_ids), "platform"),
        bev=events(sorted(brand_ids)[:100], "brand", 1),
        pev=events(sorted(platform_ids)[:100], "platform", 1),
    )
    steps = [  # (brand new, brand retired, platform new, platform retired)
        (range(300, 340), range(0, 10), range(450, 480), range(150, 155)),
        (range(340, 380), [*range(10, 20), *range(300, 305)], range(480, 520), range(450, 455)),
        (range(0, 0), range(20, 25), range(520, 540), range(0, 0)),
    ]
    for period, (bn, br, pn, pr) in enumerate(steps, start=1):
        brand_ids = (brand_ids | set(bn)) - set(br)
        platform_ids = (platform_ids | set(pn)) - set(pr)
        bev = events(sorted(brand_ids)[-20:], "brand", 1 + period)
        pev = events(sorted(platform_ids)[-20:], "platform", 1 + period)
        summaries = both(
            lambda bn=bn, br=br, bev=bev: b.refresh(
                cid,
                users(bn, "brand") if len(bn) else None,
                identifiers={"email": "email", "phone": "phone"} if len(bn) else None,
                attributes=["tier"] if len(bn) else (),
                retire=[f"b{i}" for i in br],
                events={"conversions": bev},
                wait_timeout=120,
            ),
            lambda pn=pn, pr=pr, pev=pev: p.refresh(
                cid,
                users(pn, "platform"),
                identifiers={"email": "email", "phone": "phone"},
                attributes=["age_band"],
                retire=[f"p{i}" for i in pr],
                events={"exposures": pev},
                wait_timeout=120,
            ),
        )
        assert [s.period for s in summaries] == [period, period]
        assert summaries[0].own_set_size == len(brand_ids) == summaries[1].peer_set_size
        assert summaries[1].own_set_size == len(platform_ids) == summaries[0].peer_set_size
        assert summaries[0].new_rows == len(bn)
        assert summaries[0].retired == len(br)

    incremental = key_pairs(server, clients, cid)
    full = start(clients, "rematch", POLICY)
    match(
        clients,
        full,
        users(sorted(brand_ids), "brand"),
        users(sorted(platform_ids), "platform"),
        bev=events(sorted(brand_ids)[:10], "brand", 1),
        pev=events(sorted(platform_ids)[:10], "platform", 1),
    )
    assert incremental == key_pairs(server, clients, full)
    # And both are the people present on both sides at the end with an email or a phone in common (every 21st has
    # neither: a brand alias email and no phone).
    assert {int(k[1:]) for k, _ in incremental} == {i for i in brand_ids & platform_ids if i % 7 or i % 3}
    assert all(k[1:] == q[1:] for k, q in incremental)

    # Retired users' rows are gone from every table; no row of a retired user remains anywhere.
    cur = server.room.store.of(cid).cursor()
    retired_rows = cur.execute(
        "SELECT count(*) FROM retirements r JOIN match_keys k ON k.collab = r.collab AND k.member = r.member "
        "AND k.row_id = r.row_id WHERE r.collab = ?",
        [cid],
    ).fetchone()
    assert retired_rows == (0,)
    for member, table in (("brand", "users"), ("brand", "conversions"), ("platform", "users")):
        physical = cur.execute(
            "SELECT physical FROM data_tables WHERE collab = ? AND member = ? AND name = ?", [cid, member, table]
        ).fetchone()[0]
        stale = cur.execute(
            f'SELECT count(*) FROM "{physical}" WHERE row_id IN '
            "(SELECT row_id FROM retirements WHERE collab = ? AND member = ?)",
            [cid, member],
        ).fetchone()
        assert stale == (0,), (member, table)

    # Resuming a completed refresh (same arguments) returns its summary and opens nothing.
    again = b.refresh(cid, None, retire=["b20", "b21", "b22", "b23", "b24"], events={"conversions": bev})
    assert again.period == 3


def test_queries_name_a_period_and_a_per_period_budget_renews(room, monkeypatch) -> None:
    _, clients = room
    b, p = clients["brand"], clients["platform"]
    weekly = {**POLICY, "refresh": {**POLICY["refresh"], "min_days_between": 7, "budget": "per_period"}}
    cid = start(clients, "periods", weekly)
    match(
        clients,
        cid,
        users(range(0, 200), "brand"),
        users(range(100, 300), "platform"),
        bev=events([0, 1], "brand", 1),
        pev=events([100, 101], "platform", 1),
    )
    b.overlap(cid, epsilon=1.0)
    b.overlap(cid, epsilon=1.0)
    with pytest.raises(CleanRoomError, match="budget"):
        b.overlap(cid, epsilon=1.0)
    with pytest.raises(InvalidArgumentError, match="period 1"):
        b.overlap(cid, epsilon=1.0, refresh_period=1)
    with pytest.raises(FailedPreconditionError, match="every 7 days"):
        b.refresh(cid, None)
    later = dt.datetime.now(dt.UTC).replace(tzinfo=None) + dt.timedelta(days=8)
    monkeypatch.setattr(periods, "_now", lambda: later)  # the server runs in this process: a week passes
    both(
        lambda: b.refresh(cid, users(range(200, 260), "brand"), identifiers={"email": "email"}, attributes=["tier"]),
        lambda: p.refresh(cid, None),
    )
    budget = b.budget(cid).set_index("member")
    assert budget.loc["brand", "spent"] == 0.0  # a per-period budget starts again when a period completes
    now = b.overlap(cid, epsilon=1.0)
    then = b.overlap(cid, epsilon=1.0, refresh_period=0)
    people = lambda frame: float(frame.loc[frame["measure"] == "people", "value"].sum())  # noqa: E731
    # The 60 new brand users all match. Two identifier types: c = 4, noise scale 4 at epsilon 1, sd about 5.7 per
    # answer, 8 for the difference: below 20 about once in three million (at epsilon 0.5, once in a hundred).
    assert people(now) - people(then) > 20


def test_a_refresh_refuses_what_the_policy_does_not_allow(room) -> None:
    _, clients = room
    b, p = clients["brand"], clients["platform"]
    strict = {**POLICY, "refresh": {"tables": ["brand.users", "brand.conversions"], "min_days_between": 0}}
    cid = start(clients, "strict", strict)
    match_fifty(clients, cid)
    # The platform may not add users: refused before anything is stored, and this machine forgets the attempt.
    with pytest.raises(InvalidArgumentError, match=r"platform\.users"):
        p.refresh(cid, users(range(50, 60), "platform"), identifiers={"email": "email"}, wait_timeout=5)
    # Nor append exposures (its empty point upload went through; the table is refused).
    with pytest.raises(InvalidArgumentError, match=r"platform\.exposures"):
        p.refresh(cid, None, events={"exposures": events([0, 1], "platform", 2)}, wait_timeout=5)
    # A new user passed twice, or a retired key that is no user: refused locally, naming the key.
    with pytest.raises(ValueError, match="'b3' was added before"):
        b.refresh(cid, users([3], "brand"), identifiers={"email": "email"}, attributes=["tier"])
    with pytest.raises(ValueError, match=r"'b99'.* not one of your users"):
        b.refresh(cid, None, retire=["b99"])
    # After the refusals both finish the period: the platform with nothing, the brand with new users.
    done = both(
        lambda: b.refresh(
            cid, users(range(60, 70), "brand"), identifiers={"email": "email"}, attributes=["tier"], retire=["b0"]
        ),
        lambda: p.refresh(cid, None),
    )
    assert [s.period for s in done] == [1, 1]
    assert done[0].own_set_size == 59
    # A user is retired once.
    with pytest.raises(ValueError, match="'b0': it was retired before"):
        b.refresh(cid, None, retire=["b0"])

    # min_days_between defaults to 7; a per-period budget renews at a refresh, so the match starts that clock.
    weekly = {**POLICY, "refresh": {"tables": ["brand.users"], "budget": "per_period"}}
    cid = start(clients, "weekly", weekly)
    match_fifty(clients, cid)
    with pytest.raises(FailedPreconditionError, match="every 7 days"):
        b.refresh(cid, None, retire=["b1"])


def test_a_period_the_peer_leaves_open_can_be_cancelled(room) -> None:
    server, clients = room
    b, p = clients["brand"], clients["platform"]
    cid = start(clients, "stalled", POLICY)
    match_fifty(clients, cid)
    before = key_pairs(server, clients, cid)
    new = users(range(50, 60), "brand")
    ids = {"email": "email", "phone": "phone"}
    # The platform never takes part: the brand's refresh waits for its points, then gives up.
    with pytest.raises(TimeoutError, match="peer's new points"):
        b.refresh(cid, new, identifiers=ids, attributes=["tier"], retire=["b0"], wait_timeout=1)
    assert p.cancel_refresh(cid) == 1  # the peer may cancel too; the brand's machine learns of it on its next call
    with pytest.raises(ValueError, match="no open refresh"):
        b.cancel_refresh(cid)
    cur = server.room.store.of(cid).cursor()
    # Nothing of the cancelled period remains: no keys of the new rows, no appended rows, no retirement.
    assert cur.execute(
        "SELECT count(*) FROM match_keys WHERE collab = ? AND member = 'brand' AND row_id >= 50", [cid]
    ).fetchone() == (0,)
    physical = cur.execute(
        "SELECT physical FROM data_tables WHERE collab = ? AND member = 'brand' AND name = 'users'", [cid]
    ).fetchone()[0]
    assert cur.execute(f'SELECT count(*), max(row_id) FROM "{physical}"').fetchone() == (50, 49)
    assert key_pairs(server, clients, cid) == before
    # A deletion need not wait for the peer: retired at once, in a period of its own (number 1, reused).
    assert b.retire(cid, ["b3"]) == 1
    assert ("b3", "p3") in before
    assert key_pairs(server, clients, cid) == before - {("b3", "p3")}
    with pytest.raises(ValueError, match="retired before"):
        b.retire(cid, ["b3"])
    # The next refresh completes with both members.
    done = both(
        lambda: b.refresh(cid, new, identifiers=ids, attributes=["tier"], retire=["b0"], wait_timeout=60),
        lambda: p.refresh(cid, None, wait_timeout=60),
    )
    assert [s.period for s in done] == [2, 2]
    assert done[0].own_set_size == 58
    # The brand's same call again is the finished period, repeated (it sends nothing). An empty call is never a
    # repeat: the platform's joins the brand's next period, whoever of them comes first.
    assert b.refresh(cid, new, identifiers=ids, attributes=["tier"], retire=["b0"]).period == 2
    done = both(
        lambda: b.refresh(cid, users(range(60, 62), "brand"), identifiers=ids, attributes=["tier"], wait_timeout=60),
        lambda: p.refresh(cid, None, wait_timeout=60),
    )
    assert [s.period for s in done] == [3, 3]
    # The platform holds none of the new users; b0's pair, if it had one, is gone.
    assert key_pairs(server, clients, cid) == {(k, q) for k, q in before if k not in ("b0", "b3")}


def stored_rows(server: RunningServer, cid: str, member: str, table: str) -> int:
    cur = server.room.store.of(cid).cursor()
    physical = cur.execute(
        "SELECT physical FROM data_tables WHERE collab = ? AND member = ? AND name = ?", [cid, member, table]
    ).fetchone()
    assert physical is not None
    count = cur.execute(f'SELECT count(*) FROM "{physical[0]}"').fetchone()
    assert count is not None
    return int(count[0])


def test_a_refresh_with_as_many_but_other_event_rows_is_sent_not_taken_for_a_repeat(room) -> None:
    server, clients = room
    b, p = clients["brand"], clients["platform"]
    cid = start(clients, "content", POLICY)
    match_fifty(clients, cid)
    assert stored_rows(server, cid, "brand", "conversions") == 2
    first = events([2], "brand", 2)
    done = both(
        lambda: b.refresh(cid, None, events={"conversions": first}, wait_timeout=60),
        lambda: p.refresh(cid, None, wait_timeout=60),
    )
    assert [s.period for s in done] == [1, 1]
    # One other row: the same table name and row count as the last refresh, other content. Once it was taken for a
    # repeat (the fingerprint held names and counts only): nothing was sent and both calls reported period 1.
    second = events([3, 4], "brand", 3)
    done = both(
        lambda: b.refresh(cid, None, events={"conversions": second}, wait_timeout=60),
        lambda: p.refresh(cid, None, wait_timeout=60),
    )
    assert [s.period for s in done] == [2, 2]
    assert stored_rows(server, cid, "brand", "conversions") == 5
    # The very same call again is a repeat: its summary, nothing opened, nothing appended. So is the same call
    # with its rows in another order and its values read back as another dtype (a re-run of a query without ORDER
    # BY, a CSV): once it opened period 3 and appended both rows again.
    assert b.refresh(cid, None, events={"conversions": second}, wait_timeout=5).period == 2
    again = second.iloc[::-1].reset_index(drop=True).astype({"value": "int64"})
    assert b.refresh(cid, None, events={"conversions": again}, wait_timeout=5).period == 2
    assert periods.open_period(server.room.store.of(cid).cursor(), cid) is None
    assert stored_rows(server, cid, "brand", "conversions") == 5

    # A refresh.json of an older SDK (no scheme; names and counts) still reads. Where it cannot tell a repeat from
    # new rows of the same count, it refuses, sending nothing, and says what to do.
    state = Path(b.collaboration_dir(cid)) / "refresh.json"
    saved = json.loads(state.read_text())
    legacy = refresh_state.legacy_fingerprint([], [], {"conversions": second})
    state.write_text(json.dumps({k: v for k, v in saved.items() if k != "scheme"} | {"whole": legacy}))
    with pytest.raises(ValueError, match=r"older SDK.*delete .*refresh\.json"):
        b.refresh(cid, None, events={"conversions": events([5, 6], "brand", 4)}, wait_timeout=5)
    # ... and one of the SDK that hashed content in row order: it cannot tell either, so it refuses too.
    state.write_text(json.dumps(saved | {"scheme": refresh_state.ORDERED_SCHEME}))
    with pytest.raises(ValueError, match=r"older SDK.*delete .*refresh\.json"):
        b.refresh(cid, None, events={"conversions": again}, wait_timeout=5)
    assert periods.open_period(server.room.store.of(cid).cursor(), cid) is None
    assert stored_rows(server, cid, "brand", "conversions") == 5


def test_an_empty_refresh_joins_the_peers_period_whoever_calls_first(room) -> None:
    server, clients = room
    b, p = clients["brand"], clients["platform"]
    cid = start(clients, "empty-race", POLICY)
    match_fifty(clients, cid)
    ids = {"email": "email", "phone": "phone"}
    both(
        lambda: b.refresh(cid, users([50], "brand"), identifiers=ids, attributes=["tier"], wait_timeout=60),
        lambda: p.refresh(cid, None, wait_timeout=60),
    )
    # Now the platform repeats its empty call first, the brand comes once a period is open. Once the platform's
    # call was taken for a repeat of period 1 (its input had not changed) and returned at once, and the brand's
    # period waited for the platform until it timed out: which happened depended on who asked first.

    def brand_once_a_period_is_open() -> Any:
        deadline = time.monotonic() + 15
        while periods.open_period(server.room.store.of(cid).cursor(), cid) is None:
            assert time.monotonic() < deadline, "the platform's empty refresh opened no period"
            time.sleep(0.05)
        return b.refresh(cid, None, retire=["b1"], wait_timeout=60)

    done = both(lambda: p.refresh(cid, None, wait_timeout=60), brand_once_a_period_is_open)
    assert [s.period for s in done] == [2, 2]
    assert done[1].retired == 1


def test_two_refreshes_of_one_member_at_once_one_is_refused_the_other_completes(room) -> None:
    server, clients = room
    b, p = clients["brand"], clients["platform"]
    cid = start(clients, "one-at-a-time", POLICY)
    match_fifty(clients, cid)
    before = key_pairs(server, clients, cid)
    ids = {"email": "email", "phone": "phone"}
    call = lambda: b.refresh(  # noqa: E731
        cid, users(range(50, 55), "brand"), identifiers=ids, attributes=["tier"], retire=["b2"], wait_timeout=30
    )
    with ThreadPoolExecutor(3) as pool:
        first, second = pool.submit(call), pool.submit(call)
        peer = pool.submit(lambda: p.refresh(cid, None, wait_timeout=30))
        outcomes = []
        for f in (first, second):
            try:
                outcomes.append(f.result())
            except RefreshInProgressError as err:
                outcomes.append(err)
        assert peer.result().period == 1
    refused = [o for o in outcomes if isinstance(o, RefreshInProgressError)]
    assert len(refused) == 1, outcomes
    assert "another refresh" in str(refused[0])
    assert [o.period for o in outcomes if not isinstance(o, Exception)] == [1]
    assert periods.open_period(server.room.store.of(cid).cursor(), cid) is None
    # Exactly one refresh's changes: b2 retired, the new users (whom the platform lacks) unpaired.
    assert key_pairs(server, clients, cid) == {(k, q) for k, q in before if k != "b2"}
    assert sorted(pd.read_parquet(Path(b.collaboration_dir(cid)) / "rows.parquet")["row_id"]) == list(range(55))


#: What docs/security.md promises for one RetireUsers call, whatever the peer does (here: a few users, a small room).
RETIRE_BOUND_SECONDS = 5.0
