"""No collaboration's work can hold up another's (issue 29, item 2: "one member freezes every collaboration").

The attack made one collaboration's file run a statement for hours under the server's one write lock, and every
write of every collaboration waited. Here collaboration A's file is kept busy the same way (a real long statement
inside a write transaction of A, holding A's write lock), and collaboration B's query, table upload and budget read
over real gRPC must answer within a small bound all the same.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from typing import TypeVar

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from cleanroom.devtools.synthetic import DEMO_POLICY, load_direct
from cleanroom.matching.progress import record_total_rows
from cleanroom.server.app import RunningServer
from cleanroom_client.protocol import matching_pb2 as ma
from cleanroom_client.protocol import matching_pb2_grpc as ma_grpc

T = TypeVar("T")

#: Seconds each of B's calls may take while A is busy (idle, each takes a fraction of one).
BOUND = 5.0
#: A statement that runs for hours unless interrupted (it counts, so it needs no memory or disk).
LONG_STATEMENT = "SELECT count(*) FROM range(1000000000000000) t(i) WHERE i % 7 = 3"


@contextmanager
def busy(server: RunningServer, collaboration_id: str) -> Iterator[None]:
    """Run `LONG_STATEMENT` after a write inside one transaction of the collaboration's file, until the block ends."""
    db = server.store.of(collaboration_id)
    holder: dict[str, object] = {}
    started = threading.Event()

    def run() -> None:
        try:
            with db.transaction() as cur:
                holder["cursor"] = cur
                cur.execute(
                    "INSERT INTO staged_points VALUES (?, 'brand', 0, 1, 0, ''::BLOB)", [collaboration_id]
                )  # a write the interrupted transaction must not leave behind
                started.set()
                cur.execute(LONG_STATEMENT).fetchall()
                holder["finished"] = True
        except duckdb.InterruptException:
            holder["interrupted"] = True

    thread = threading.Thread(target=run, name="long-statement")
    thread.start()
    assert started.wait(10)
    time.sleep(0.5)  # the statement is running now
    assert not db.write_lock.acquire(timeout=0.1), "A's write lock should be held by its long transaction"
    try:
        yield
    finally:
        cursor = holder["cursor"]
        assert isinstance(cursor, duckdb.DuckDBPyConnection)
        cursor.interrupt()
        thread.join(10)
    assert not thread.is_alive()
    assert holder == {"cursor": cursor, "interrupted": True}
    rows = db.cursor().execute("SELECT count(*) FROM staged_points").fetchall()
    assert rows == [(0,)]  # the interrupted transaction rolled back


def _matched(server: RunningServer, make_client, collaboration_id: str) -> None:
    brand, platform = make_client("brand"), make_client("platform")
    c = brand.create_collaboration(DEMO_POLICY, collaboration_id)
    brand.approve_policy(c.id)
    platform.approve_policy(c.id)
    rng = np.random.default_rng(29)
    tables = {
        ("brand", "users"): pa.table(
            {"row_id": np.arange(300, dtype=np.int64), "tier": rng.choice(["gold", "silver", "basic"], 300)}
        ),
        ("platform", "users"): pa.table(
            {
                "row_id": np.arange(300, dtype=np.int64),
                "age_band": rng.choice(["18-24", "25-34", "35-44", "45+"], 300),
                "stage_4a": rng.choice(["aware", "appeal", "act", "advocate"], 300),
                "visits_30d": rng.uniform(0, 60, 300),
            }
        ),
    }
    load_direct(server.room, c.id, tables, np.arange(300), np.arange(300))
    with server.store.of(c.id).transaction() as cur:  # the brand's point upload numbered 300 rows
        record_total_rows(cur, c.id, "brand", 0, 300)


def _conversions() -> bytes:
    orders = pd.DataFrame(
        {
            "row_id": np.arange(0, 300, 3, dtype=np.int64),
            "ts": pd.Timestamp("2026-10-01") + pd.to_timedelta(np.arange(100), unit="h"),
            "value": np.linspace(1, 200, 100),
        }
    )
    table = pa.Table.from_pandas(orders, preserve_index=False)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _within(bound: float, call: Callable[[], T]) -> T:
    """`call()`'s result, or a failure if it has not answered within `bound` seconds (it is left to finish)."""
    pool = ThreadPoolExecutor(1)
    try:
        return pool.submit(call).result(timeout=bound)
    except FutureTimeout:
        raise AssertionError(f"no answer within {bound} s while another collaboration was busy") from None
    finally:
        pool.shutdown(wait=False)


def test_a_long_write_in_one_collaboration_does_not_delay_another(server, make_client, stub_for):
    _matched(server, make_client, "room-a")
    _matched(server, make_client, "room-b")
    brand = make_client("brand")
    stub, md = stub_for(ma_grpc.MatchingServiceStub, "brand")
    upload = ma.UploadTableRequest(
        parent="collaborations/room-b", table="conversions", arrow_ipc=_conversions(), last=True
    )
    brand.budget("room-b")  # B's file is open and its chain verified before A gets busy

    with busy(server, "room-a"):
        answer = _within(BOUND, lambda: brand.overlap("room-b", ["brand.tier"], epsilon=0.5))
        progress = _within(BOUND, lambda: stub.UploadTable(iter([upload]), metadata=md, timeout=30))
        budget = _within(BOUND, lambda: brand.budget("room-b"))

    assert len(answer) > 0
    assert progress.committed
    spent = budget.set_index("member").loc["brand", "spent"]
    assert spent == 0.5  # B's ledger holds B's query, charged while A was busy
