"""Red team of two changes to attribution's compiled kernels: the bound's cents (d1690b0) and the credits' phases
(4e5d6e7).

The conversions' statement used to compute each conversion's cents in SQL; now it returns the value as a float64
and the bound (`attribution.bounded`: the kernel's phase 2, or numpy's `cents_of`) computes them. The integers must
be exactly those of the old expression, `OLD_CENTS` below, run by DuckDB on the same stored column, for every type
an upload can store (float64 and float32, DECIMAL(18,2) and DECIMAL(38,10), 64-bit integers signed and not) and
every policy range (negative, tiny, wide). The credits kernel now counts and places the touches by slices of the
touches and credits whole buckets of conversions per thread: every shape of buckets (m around the multiples of
2^shift, every touch in one bucket, one conversion with 10^5 touches, millions of conversions with few touches,
more threads than buckets) must give numpy's sums exactly.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import given, settings

from cleanroom.analytics import attribution, native
from cleanroom.analytics.credit_sums import Cells, Conversions, cell_totals
from cleanroom.analytics.credits import MAX_CENTS, MILLI
from cleanroom.errors import InternalError

#: The conversions' statement's cents before d1690b0 (attribution._clamped, x CENTS, toward zero): the reference.
OLD_CENTS = "CAST(trunc(least(greatest(CAST(v AS DOUBLE), $lo), $hi) * 100) AS BIGINT)"

#: Column types an upload stores a measure as (integer, floating or decimal Arrow types, as DuckDB holds them).
TYPES = ("DOUBLE", "REAL", "DECIMAL(18,2)", "DECIMAL(38,10)", "BIGINT", "INTEGER", "UBIGINT", "HUGEINT")

#: Values at the edges: decimals that are not binary fractions, around 0, subnormals, near 2^53 / 100, huge.
EDGE_VALUES = [
    "0", "-0.0", "0.01", "-0.01", "0.07", "0.29", "0.57", "1.005", "1.15", "2.675", "4.35", "12.34", "-12.34",
    "99.99", "-99.99", "100.0", "123456.78", "299.99", "300", "300.01", "-300.01", "4.9e-324", "-4.9e-324",
    "2.2250738585072014e-308", "90071992547409.91", "90071992547409.92", "-90071992547409.93", "1e15", "-1e15",
    "9223372036854775807", "-9223372036854775808", "18446744073709551615", "1e300", "-1e300", "1.7976931348623157e308",
    "inf", "-inf",
]  # fmt: skip

#: Policy ranges (lo, hi): the parser keeps lo < hi and both within MAX_MEASURE (ints as YAML gives them); equal and
#: inverted ones too, which it refuses: the kernel must still agree with the old expression (every value is `hi`).
RANGES = [
    (5.0, 5.0),
    (10, -10),
    (0, 300),
    (0.0, 300.0),
    (-50.5, 50.5),
    (-1000.0, -0.01),
    (0.005, 0.015),
    (1.15, 1.16),
    (-90071992547409.92, 90071992547409.92),
    (-1e12, 1e12),
    (-(2**40), 2**40),
]


def old_cents(con: duckdb.DuckDBPyConnection, column: str, lo: float, hi: float) -> list[int | None]:
    """Each row's cents by the old expression (None where DuckDB refused it, e.g. beyond 64 bits)."""
    out: list[int | None] = []
    for (i,) in con.execute("SELECT i FROM t ORDER BY i").fetchall():
        try:
            row = con.execute(
                f"SELECT {OLD_CENTS} FROM (SELECT {column} AS v FROM t WHERE i = $i)", {"lo": lo, "hi": hi, "i": i}
            ).fetchall()[0]
        except duckdb.Error:
            out.append(None)
            continue
        out.append(row[0])
    return out


def new_cents(values: np.ndarray, lo: float, hi: float, path: bool) -> int | None:
    """One value's cents through `bounded` (the kernel, or numpy's `cents_of`), None where it refuses."""
    cols = {
        "person": np.zeros(1, np.int64),
        "ts_us": np.zeros(1, np.int64),
        "value": values,
        "row_platform": np.zeros(1, np.int64),
    }
    try:
        b = attribution.bounded(cols, ["row_platform"], 1, None, (lo, hi), native=path)
    except InternalError:
        return None
    assert b.counted.tolist() == [True]
    return int(b.cents[0])


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> duckdb.DuckDBPyConnection:
    """A DuckDB file with every edge value in every column type that can hold it (NULL where it cannot)."""
    path = Path(tmp_path_factory.mktemp("cents")) / "cents.duckdb"
    con = duckdb.connect(str(path))
    names = [f"c{k}" for k in range(len(TYPES))]
    columns = ", ".join(f"{n} {t}" for n, t in zip(names, TYPES, strict=True))
    con.execute(f"CREATE TABLE t (i INTEGER, {columns})").fetchall()
    for i, text in enumerate(EDGE_VALUES):
        con.execute("INSERT INTO t (i) VALUES ($i)", {"i": i}).fetchall()
        for n, t in zip(names, TYPES, strict=True):  # NULL where the type cannot hold it: no upload stores it so
            con.execute(f"UPDATE t SET {n} = TRY_CAST(CAST($v AS VARCHAR) AS {t}) WHERE i = $i", {"v": text, "i": i})
            con.fetchall()
    return con


@pytest.mark.parametrize("kind", range(len(TYPES)), ids=TYPES)
@pytest.mark.parametrize("lo_hi", RANGES, ids=[f"{lo}..{hi}" for lo, hi in RANGES])
def test_the_bounds_cents_are_the_old_statements_for_every_stored_type(stored, kind, lo_hi):
    """The value as the new statement returns it (CAST(v AS DOUBLE), through Arrow), in cents on both paths, equals
    the old SQL expression on the same stored column; where the old one gave cents beyond 2^53 or failed, both paths
    refuse (InternalError): no policy allows such cents, and the uploads refuse NaN and infinite floats."""
    lo, hi = lo_hi
    column = f"c{kind}"
    want = old_cents(stored, column, lo, hi)
    got = stored.sql(f"SELECT CAST({column} AS DOUBLE) AS value FROM t ORDER BY i").to_arrow_table()
    values = got.column("value").to_numpy(zero_copy_only=False)
    compared = 0
    for i, text in enumerate(EDGE_VALUES):
        if got.column("value")[i].as_py() is None:
            continue  # the type cannot hold it
        one = np.ascontiguousarray(values[i : i + 1], dtype=np.float64)
        old = want[i]
        expected = old if old is not None and abs(old) <= MAX_CENTS else None
        for path in (True, False):
            assert new_cents(one, lo, hi, path) == expected, (text, TYPES[kind], lo_hi, path, old)
        compared += 1
    assert compared >= 8


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.floats(allow_nan=False, allow_infinity=True),
            st.floats(-1e6, 1e6).map(lambda x: round(x, 2)),  # decimals as a float64 column holds them
            st.integers(-(10**8), 10**8).map(lambda k: k / 100),
        ),
        min_size=1,
        max_size=60,
    ),
    st.floats(-1e9, 1e9),
    st.floats(0, 1e9, exclude_min=True),
)
def test_any_float_column_gives_the_old_statements_cents(values, lo, width):
    """Hypothesis over float64 values and policy ranges: the old expression in DuckDB, and both paths of `bounded`
    on one person per value (so nothing is capped or scaled), give the same integers."""
    hi = lo + width
    if not hi > lo:
        return
    con = duckdb.connect()
    con.execute("CREATE TABLE t (i INTEGER, v DOUBLE)").fetchall()
    con.executemany("INSERT INTO t VALUES (?, ?)", list(enumerate(values)))
    want = [r[0] for r in con.execute(f"SELECT {OLD_CENTS} FROM t ORDER BY i", {"lo": lo, "hi": hi}).fetchall()]
    value = con.sql("SELECT CAST(v AS DOUBLE) AS value FROM t ORDER BY i").to_arrow_table().column("value").to_numpy()
    cols = {
        "person": np.arange(len(values), dtype=np.int64),
        "ts_us": np.zeros(len(values), np.int64),
        "value": value,
        "row_platform": np.zeros(len(values), np.int64),
    }
    for path in (True, False):
        b = attribution.bounded(cols, ["row_platform"], 1, None, (lo, hi), native=path)
        assert b.cents.tolist() == want
        assert b.counted.all()
    assert attribution.cents_of(np.asarray(value, np.float64), (lo, hi)).tolist() == want


# --- the credits kernel's three phases (4e5d6e7) ---

#: codes: (click x 3 + campaign) for campaign 0..2 (0: outside the domain); groups by campaign; 2 brand values.
LOOKUP = np.array([-1, 0, 1, -1, 0, 1], dtype=np.int64)
CELLS = Cells(LOOKUP, 3, 2, 2)
MODELS = ("last_touch", "first_touch", "linear", "time_decay", "position_based")


def random_case(seed: int, n: int, m: int, conversion: np.ndarray | None = None):
    """n touches of m conversions (uniform unless `conversion` is given), cents up to 2^53, 10% not counted."""
    rng = np.random.default_rng(seed)
    touches = {
        "conversion": rng.integers(0, max(m, 1), n) if conversion is None else conversion,
        "ts_us": rng.integers(0, 48, n) * 3_600_000_000,
        "code": rng.choice([1, 2, 4, 5], n),
    }
    conv = Conversions(
        np.where(rng.random(m) < 0.5, rng.integers(-(10**6), 10**6, m), rng.integers(-(2**53), 2**53, m)),
        rng.integers(0, 2, m),
        np.zeros(m, np.int64),
        rng.random(m) < 0.9,
    )
    return touches, conv


def both(touches, conv, model: str, threads: int) -> tuple[tuple[list[int], list[int]], tuple[list[int], list[int]]]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(native, "THREADS", threads)
        got = cell_totals(touches, conv, CELLS, model, True, 2.0, native=True)
    return got, cell_totals(touches, conv, CELLS, model, True, 2.0, native=False)


def assert_equal(got, want, model: str, touches: int, conv: Conversions) -> None:
    if model == "time_decay":  # exp2 is the C library's in C: a unit may move on a tie, the sums are exact
        for a, b in zip(got, want, strict=True):
            assert all(abs(x - y) <= touches for x, y in zip(a, b, strict=True))
            assert sum(a) == sum(b)
    else:
        assert got == want
    assert sum(got[0]) == MILLI * int(conv.counted.sum())
    assert sum(got[1]) == int(conv.cents[conv.counted].astype(object).sum())


#: (touches, conversions): m = 0 and n = 0, one bucket, m around 1024 x 2^k (the bucket count's edge), m a prime.
SHAPES = [(0, 0), (0, 5), (7, 1), (300, 3), (5_000, 1023), (5_000, 1024), (5_000, 1025), (9_000, 2047)]
SHAPES += [(9_000, 2048), (9_000, 2049), (20_000, 4097), (30_000, 65_537), (2_000, 100_003)]


@pytest.mark.parametrize("threads", [1, 2, 3, 7, 16, 17, 64])
@pytest.mark.parametrize("shape", SHAPES, ids=[f"n{n}-m{m}" for n, m in SHAPES])
def test_every_bucket_shape_and_thread_count_gives_numpys_sums(shape, threads):
    n, m = shape
    touches, conv = random_case(n * 31 + m, n, m)
    for model in MODELS:
        got, want = both(touches, conv, model, threads)
        assert_equal(got, want, model, n, conv)


@pytest.mark.parametrize("threads", [1, 2, 16])
def test_every_touch_in_one_bucket_or_one_conversion(threads):
    """Skewed splits: every touch in the first or the last bucket of 100,003 conversions (one thread does all the
    crediting), and one conversion with 10^5 touches (the merge sort, the latest hundred)."""
    m = 100_003
    rng = np.random.default_rng(threads)
    for conversion in (rng.integers(0, 60, 40_000), rng.integers(m - 60, m, 40_000), np.full(100_000, m // 2)):
        touches, conv = random_case(threads, len(conversion), m, conversion)
        for model in MODELS:
            got, want = both(touches, conv, model, threads)
            assert_equal(got, want, model, len(conversion), conv)


def test_millions_of_conversions_with_few_touches():
    """m = 3 x 10^6 (buckets of 4,096 conversions) and 50 touches: numpy's sums on 16 threads."""
    m = 3_000_000
    rng = np.random.default_rng(5)
    conversion = np.concatenate([rng.integers(0, m, 45), [0, m - 1, m - 1, 4095, 4096]])
    touches, conv = random_case(11, len(conversion), m, conversion)
    for model in ("linear", "last_touch"):
        got, want = both(touches, conv, model, 16)
        assert_equal(got, want, model, len(conversion), conv)


@settings(max_examples=300, deadline=None)
@given(
    st.integers(0, 400),
    st.one_of(st.integers(1, 3000), st.sampled_from([1024, 1025, 2048, 2049, 4095, 4096, 4097])),
    st.sampled_from([1, 2, 3, 5, 16, 40]),
    st.sampled_from(MODELS),
    st.integers(0, 2**32 - 1),
    st.booleans(),
)
def test_the_phases_equal_numpy_on_random_shapes(n, m, threads, model, seed, clustered):
    rng = np.random.default_rng(seed)
    conversion = rng.integers(0, m, n) if not clustered else rng.integers(0, min(m, 3), n) * (m // 3)
    touches, conv = random_case(seed, n, m, conversion)
    got, want = both(touches, conv, model, threads)
    assert_equal(got, want, model, n, conv)


@pytest.mark.parametrize("native_path", [True, False])
@pytest.mark.parametrize("bad", ["conversion -1", "conversion m", "conversion 2^63-1", "code -1", "code 6"])
def test_a_bad_touch_in_any_threads_slice_is_refused(native_path, bad):
    """Phase 1 checks each touch in its thread's slice: a bad one first, last, or alone in the last slice."""
    m = 5000
    for at in (0, 4_999, 9_999):
        touches, conv = random_case(at, 10_000, m)
        what, value = bad.split(" ")
        touches[what][at] = {"-1": -1, "m": m, "2^63-1": 2**63 - 1, "6": 6}[value]
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(native, "THREADS", 16)
            with pytest.raises(InternalError):
                cell_totals(touches, conv, CELLS, "linear", True, 2.0, native=native_path)


REWRITTEN_EVERY_PHASE = """
import threading
import numpy as np
from cleanroom.analytics.native import KERNELS

rng = np.random.default_rng(1)
n, m, people = 400_000, 5_000, 3_000
lookup = np.array([-1, 0, 1, -1, 0, 1], dtype=np.int64)
good = rng.integers(0, m, n)
states = [good, np.zeros(n, np.int64), np.full(n, m - 1), good[::-1].copy()]  # all in the first or last bucket
bad = good.copy()
bad[::997], bad[5::997], bad[7::997] = m, -1, 2**63 - 1
conv, code = good.copy(), rng.choice([1, 2, 4, 5], n).astype(np.int64)
codes = [code.copy(), np.where(np.arange(n) % 1009 == 0, 6, code), np.where(np.arange(n) % 1013 == 0, -1, code)]
who_good = rng.integers(0, people, n)
who = who_good.copy()
ts = rng.integers(0, 48, n) * 3_600_000_000
cents, counted = rng.integers(-(10**6), 10**6, m), (rng.random(m) < 0.9).astype(np.uint8)
stop = threading.Event()


def rewrite():
    k = 0
    while not stop.is_set():  # mostly valid states (a call then sums), now and then a bad one (refused)
        conv[:] = bad if k % 64 == 63 else states[k % len(states)]
        code[:] = codes[0 if k % 64 != 31 else k // 64 % len(codes)]
        who[:] = bad % (2 * people) - (k % 2) * people if k % 64 == 15 else who_good[:: 1 if k % 2 else -1]
        k += 1
        stop.wait(0.03 if k % 3 == 0 else 0)  # some calls then meet no rewrite: they must sum


thread = threading.Thread(target=rewrite)
thread.start()
refused = summed = 0
for call in range(40):
    try:
        milli, sums = KERNELS.credit_sums(
            conv, ts, code, cents, np.zeros(m, np.int64), counted, lookup, 3, 1, 2, 3, 2, False, 2.0, 16,
        )
    except ValueError:
        refused += 1
    else:  # any snapshot of the touches: each counted conversion hands out exactly 1000 and its cents
        total = [int.from_bytes(raw[i : i + 16], "little", signed=True) for raw in (milli, sums) for i in (0, 16, 32)]
        assert sum(total[:3]) == 1000 * int(counted.sum()), total
        assert sum(total[3:]) == int(cents[counted.view(bool)].sum()), total
        summed += 1
    out = np.zeros(n, np.int64)
    try:
        KERNELS.bound(who, ts, (ts % 1000).astype(float), -1e9, 1e9, people, 2, 100, np.ones(n, np.uint8), out, 16)
    except ValueError:
        refused += 1
    else:
        assert np.abs(out).max() <= 100_000
stop.set()
thread.join()
print("done", refused, summed)\nassert summed and refused, (refused, summed)
"""


def test_every_array_rewritten_between_the_phases_on_16_threads_is_refused_or_summed_whole():
    """Another thread rewrites the touches' conversions (out of range, all into one bucket, back), their codes (out
    of the lookup) and the bound's people (out of range) while both kernels run on 16 threads: each call is refused
    (ValueError) or sums a whole snapshot (every counted conversion's 1000 thousandths and its cents), never writes
    beyond its arrays (the ASan build runs this too)."""
    import os
    import subprocess
    import sys

    run = subprocess.run(
        [sys.executable, "-c", REWRITTEN_EVERY_PHASE],
        capture_output=True,
        text=True,
        timeout=300,
        env=os.environ.copy(),
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.startswith("done"), run.stdout


CELLS_BEYOND_MEMORY = """
import numpy as np
from cleanroom.analytics.native import KERNELS

one = np.zeros(1, np.int64)
for cells, threads in ((2**59, 16), (2**62, 2), (2**58, 40), (2**55, 16)):
    try:
        KERNELS.credit_sums(
            one, one, one, one, one, np.ones(1, np.uint8), np.array([0], np.int64), 3, 1, 0, cells, 2, False, 2.0,
            threads,
        )  # fmt: skip
    except (ValueError, MemoryError) as exc:
        print(type(exc).__name__, exc)
    else:
        raise AssertionError(f"{cells} cells on {threads} threads were summed")
print("done")
"""


def test_cells_whose_sums_overflow_the_allocation_are_refused_not_written_beyond():
    """Red team: the credits' sums are one allocation of threads x 2 x cells 128-bit integers, a product taken in
    64 bits: 2^59 cells on 16 threads (or 2^62 on 2) wrapped it to 0 bytes and the kernel wrote its sums beyond it
    (a segmentation fault). The server passes groups x brand values, a few thousand; a call asking for more cells
    than memory can hold is refused."""
    import os
    import subprocess
    import sys

    run = subprocess.run(
        [sys.executable, "-c", CELLS_BEYOND_MEMORY], capture_output=True, text=True, timeout=120, env=dict(os.environ)
    )
    assert run.returncode == 0, (run.returncode, run.stderr[-2000:])
    assert run.stdout.rstrip().endswith("done"), run.stdout
