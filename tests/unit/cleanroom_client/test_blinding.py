import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from hypothesis import given, settings
from hypothesis import strategies as st

from cleanroom_client.blinding import (
    ZERO_TAG,
    BlindJob,
    ProcessPoolChunkExecutor,
    ReblindJob,
    SerialExecutor,
    blind_identifiers,
    blind_point,
    join_tag,
    load_or_create_key,
    reblind_points,
)
from cleanroom_client.curve import hash_to_u, validate_point
from cleanroom_client.identity import IdentifierType


def _key(seed: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(seed).private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


@settings(max_examples=50)
@given(st.binary(min_size=32, max_size=32), st.binary(min_size=32, max_size=32), st.binary(max_size=64))
def test_blinding_commutes(ka, kb, msg):
    a, b = X25519PrivateKey.from_private_bytes(ka), X25519PrivateKey.from_private_bytes(kb)
    point = hash_to_u(msg)
    assert blind_point(b, blind_point(a, point)) == blind_point(a, blind_point(b, point))


def test_key_file_is_private_and_reused(tmp_path):
    path = tmp_path / "c" / "blinding.key"
    key = load_or_create_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_key(path) == key
    os.chmod(path, 0o644)
    with pytest.raises(PermissionError, match="chmod 600"):
        load_or_create_key(path)


def test_blind_identifiers_counts_invalid_and_missing():
    job = BlindJob(
        key=_key(bytes(32)),
        id_type=IdentifierType.EMAIL,
        values=["a@example.com", None, "", "nope", "B@Example.com "],
    )
    result = blind_identifiers(job)
    assert (result.valid, result.invalid, result.missing) == (2, 1, 2)
    assert result.present == bytes([0b10001])  # slots 0 and 4 carry the two points
    assert len(result.points) == 64
    for i in (0, 32):
        validate_point(result.points[i : i + 32])
    counted = blind_identifiers(BlindJob(**{**job.__dict__, "count_only": True}))
    assert (counted.valid, counted.invalid, counted.missing, counted.points) == (2, 1, 2, b"")
    full = blind_identifiers(BlindJob(**{**job.__dict__, "values": ["a@example.com"] * 9}))
    assert (full.valid, full.present, len(full.points)) == (9, b"", 9 * 32)  # all present: no bitmap at all


def test_reblind_returns_tags_and_rejects_bad_points_with_zero():
    key = _key(bytes(range(32)))
    good = hash_to_u(b"x")
    result = reblind_points(ReblindJob(key=key, points=good + bytes(32) + (2).to_bytes(32, "little") + good))
    assert result.rejected == 2
    assert result.tags[8:24] == ZERO_TAG * 2
    expected = join_tag(blind_point(X25519PrivateKey.from_private_bytes(key), good))
    assert len(expected) == 8
    assert result.tags[:8] == result.tags[24:] == expected
    with pytest.raises(ValueError, match="whole number"):
        reblind_points(ReblindJob(key=key, points=bytes(33)))


def test_process_pool_keeps_order():
    pool = ProcessPoolChunkExecutor(workers=2, max_in_flight=2)
    try:
        jobs = [ReblindJob(key=_key(bytes(32)), points=hash_to_u(bytes([i]))) for i in range(6)]
        assert list(pool.map(reblind_points, jobs)) == list(SerialExecutor().map(reblind_points, jobs))
    finally:
        pool.close()


def test_pool_workers_are_forked_from_one_server_that_imported_the_blinding_module_once():
    # Each spawned worker imported numpy, pyarrow and this package itself (~0.25 CPU-s, a quarter of a 100k match's
    # worker time); forked from a server that imported them once, a worker starts with them loaded. The server is
    # started by a fresh interpreter, never forked from the caller: no gRPC channel or key of the caller reaches it.
    import operator

    pool = ProcessPoolChunkExecutor(workers=2, max_in_flight=2)
    try:
        parents = set(pool.map(operator.call, [os.getppid] * 8))  # each worker's parent
    finally:
        pool.close()
    assert len(parents) == 1
    assert os.getpid() not in parents
    server = Path(f"/proc/{parents.pop()}/cmdline").read_bytes().split(b"\0")
    assert any(b"forkserver" in arg and b"cleanroom_client.blinding" in arg for arg in server), server


def test_workers_are_spawned_where_the_fork_server_is_not_safe_or_missing(monkeypatch):
    # Python 3.11.0's fork server listened on an abstract socket any local user could reach (CVE-2022-42919).
    import sys

    from cleanroom_client import blinding

    assert blinding._worker_context().get_start_method() == "forkserver"
    monkeypatch.setattr(sys, "version_info", (3, 11, 0, "final", 0))
    assert blinding._worker_context().get_start_method() == "spawn"
    monkeypatch.undo()
    monkeypatch.setattr(blinding.multiprocessing, "get_all_start_methods", lambda: ["spawn"])  # as on Windows
    assert blinding._worker_context().get_start_method() == "spawn"


def test_a_fork_of_a_process_whose_pool_started_the_fork_server_can_run_its_own_pool():
    # A program that matched once and then forks (multiprocessing's default start method on Linux before 3.14, a
    # prefork server) inherits multiprocessing's record of the fork server, whose process is not the child's own:
    # its pool asked the server's state with waitpid and failed with ChildProcessError (spawned workers never did).
    import json
    import subprocess
    import sys

    script = (
        "import json, operator, os\n"
        "from cleanroom_client.blinding import ProcessPoolChunkExecutor\n"
        "pool = ProcessPoolChunkExecutor(workers=1)\n"
        "assert list(pool.map(operator.call, [os.getpid])) != [os.getpid()]\n"
        "pool.close()\n"
        "r, w = os.pipe()\n"
        "if os.fork() == 0:\n"
        "    try:\n"
        "        child = ProcessPoolChunkExecutor(workers=1)\n"
        "        answer = {'workers': list(child.map(operator.call, [os.getpid, os.getpid]))}\n"
        "        child.close()\n"
        "    except BaseException as exc:\n"
        "        answer = {'error': repr(exc)}\n"
        "    os.write(w, json.dumps(answer).encode())\n"
        "    os._exit(0)\n"
        "os.close(w)\n"
        "os.wait()\n"
        "print(os.read(r, 4096).decode())\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    answer = json.loads(done.stdout)
    assert "error" not in answer, answer["error"]
    assert len(answer["workers"]) == 2


def test_the_pool_adds_its_modules_to_the_callers_fork_server_preload_instead_of_replacing_them():
    # multiprocessing's preload list is process-wide: a program that set its own (before its first fork server)
    # lost it to the SDK's when a match started the server first; its own workers then started without them.
    import subprocess
    import sys

    script = (
        "import multiprocessing, operator, os\n"
        "multiprocessing.set_forkserver_preload(['colorsys'])\n"
        "from cleanroom_client.blinding import ProcessPoolChunkExecutor\n"
        "pool = ProcessPoolChunkExecutor(workers=1)\n"
        "loaded = \"sorted({'colorsys', 'cleanroom_client.blinding'} & set(__import__('sys').modules))\"\n"
        "print(next(pool.map(eval, [loaded])))\n"
        "pool.close()\n"
        "with multiprocessing.get_context('forkserver').Pool(1) as own:\n"
        "    print(own.apply(eval, (loaded,)))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    ours, theirs = done.stdout.splitlines()
    assert ours == theirs == "['cleanroom_client.blinding', 'colorsys']", done.stdout


@pytest.mark.parametrize("death", ["a worker exits", "the fork server is killed"])
def test_a_pool_whose_processes_died_raises_a_typed_error_and_the_next_map_runs(death, fork_server_killer):
    # The fork server is one more process whose death breaks the pool (its workers' exit codes come through it):
    # the client kept the broken pool, so every later match() of that client failed the same way.
    import operator
    from collections.abc import Callable
    from typing import Any

    from cleanroom_client.errors import WorkersLostError

    pool = ProcessPoolChunkExecutor(workers=1, max_in_flight=2)
    try:
        assert list(pool.map(operator.call, [os.getpid])) != [os.getpid()]
        fn: Callable[[Any], object]
        jobs: list[Any]
        if death == "a worker exits":
            fn, jobs = os._exit, [1]
        else:
            fork_server_killer()
            fn, jobs = operator.call, [os.getpid] * 3
        with pytest.raises(WorkersLostError, match=r"call match\(\) again"):
            list(pool.map(fn, jobs))
        again = list(pool.map(operator.call, [os.getpid, os.getpid]))
        assert len(again) == 2
        assert os.getpid() not in again
    finally:
        pool.close()


def _running(pid: int) -> bool:
    """Whether process `pid` runs: a zombie has ended (only a parent, or an init, that never reaps keeps it listed)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def test_the_workers_and_their_fork_server_end_when_the_member_process_is_killed():
    # A member killed outright (SIGKILL, the OOM killer) runs no clean-up: its workers waited forever for jobs on a
    # queue they themselves held open, the memory that held its blinding key with them, and kept the fork server
    # alive (every worker holds its "alive" pipe). Each worker now watches the member and exits when it is gone.
    import signal
    import subprocess
    import sys
    import time

    script = (
        "import operator, os, time\n"
        "from multiprocessing import forkserver\n"
        "from cleanroom_client.blinding import BlindJob, ProcessPoolChunkExecutor, blind_identifiers\n"
        "from cleanroom_client.identity import IdentifierType\n"
        "pool = ProcessPoolChunkExecutor(workers=2, max_in_flight=2)\n"
        "job = BlindJob(key=bytes(range(32)), id_type=IdentifierType.EMAIL, values=['a@b.co'])\n"
        "assert [r.valid for r in pool.map(blind_identifiers, [job] * 4)] == [1] * 4\n"
        "workers = set(pool.map(operator.call, [os.getpid] * 8))\n"
        "print(*workers, forkserver._forkserver._forkserver_pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    with subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True) as member:
        assert member.stdout is not None
        below = [int(pid) for pid in member.stdout.readline().split()]
        member.send_signal(signal.SIGKILL)

    deadline = time.monotonic() + 10
    while any(map(_running, below)) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = [pid for pid in below if _running(pid)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert below
    assert not left


def test_workers_are_never_forked_from_a_fork_server_the_program_started_itself():
    # Such a server imported what the program preloaded (multiprocessing's default: its main module, with what
    # that computes at import) and not the blinding module: the workers are spawned instead, as before the fork
    # server (no slower: that server's forks would have imported the blinding module each).
    import subprocess
    import sys

    script = (
        "import multiprocessing, operator, os\n"
        "from multiprocessing import forkserver\n"
        "context = multiprocessing.get_context('forkserver')\n"
        "context.set_forkserver_preload(['colorsys'])\n"
        "with context.Pool(1) as own:\n"
        "    own.apply(int)\n"
        "from cleanroom_client.blinding import ProcessPoolChunkExecutor\n"
        "pool = ProcessPoolChunkExecutor(workers=1)\n"
        "parents = set(pool.map(operator.call, [os.getppid] * 2))\n"
        "loaded = next(pool.map(eval, [\"'colorsys' in __import__('sys').modules\"]))\n"
        "pool.close()\n"
        "print(parents == {forkserver._forkserver._forkserver_pid}, loaded)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.split() == ["False", "False"], done.stdout


@pytest.mark.parametrize("how", ["pidfd", "polling"])
def test_a_worker_exits_once_the_process_it_watches_has_ended(how):
    # `_end_with` waits on a pidfd where the kernel has them and polls elsewhere (macOS): both end the worker.
    import subprocess
    import sys
    import time

    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as member:
        script = (
            "import os, time\n"
            f"{'del os.pidfd_open' if how == 'polling' else ''}\n"
            "from cleanroom_client.blinding import _end_with\n"
            f"_end_with({member.pid})\n"
            "time.sleep(60)\n"
        )
        with subprocess.Popen([sys.executable, "-c", script]) as worker:
            time.sleep(0.5)
            assert worker.poll() is None  # still watching
            member.kill()
            member.wait()
            started = time.monotonic()
            assert worker.wait(timeout=10) == 1
            assert time.monotonic() - started < 3


def test_ctrl_c_ends_the_member_and_its_workers():
    # Ctrl-C signals the terminal's process group: the member, its fork server (which ignores it) and the workers.
    import signal
    import subprocess
    import sys
    import time

    script = (
        "import operator, os, time\n"
        "from cleanroom_client.blinding import ProcessPoolChunkExecutor\n"
        "pool = ProcessPoolChunkExecutor(workers=2, max_in_flight=4)\n"
        "print(*set(pool.map(operator.call, [os.getpid] * 8)), flush=True)\n"
        "for _ in pool.map(time.sleep, [0.5] * 100):\n"
        "    pass\n"
    )
    with subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    ) as member:
        assert member.stdout is not None
        workers = [int(pid) for pid in member.stdout.readline().split()]
        time.sleep(0.3)
        os.killpg(member.pid, signal.SIGINT)
        assert member.wait(timeout=20) == -signal.SIGINT  # KeyboardInterrupt, not a hang
    deadline = time.monotonic() + 10
    while any(map(_running, workers)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert workers
    assert not [pid for pid in workers if _running(pid)]


def test_two_pools_started_at_once_leave_the_main_module_as_it_was(monkeypatch):
    # Two clients in two threads each start a pool: the second hid what the first had already hidden and put that
    # back last, so __main__ lost its spec (and, while the first put its own back, the second's workers could be
    # handed the script's path: a script without a main guard ran again in them).
    import sys
    import threading

    from cleanroom_client import blinding

    main = sys.modules["__main__"]
    monkeypatch.setitem(main.__dict__, "__file__", "/path/of/the/script.py")
    monkeypatch.setitem(main.__dict__, "__spec__", "the script's spec")
    before = {name: main.__dict__.get(name, "absent") for name in ("__file__", "__spec__")}
    first_inside, second_inside, first_out = threading.Event(), threading.Event(), threading.Event()

    def first() -> None:
        with blinding._main_hidden():
            first_inside.set()
            second_inside.wait(0.3)  # the second enters here unless the first excludes it
        first_out.set()

    def second() -> None:
        first_inside.wait(5)
        with blinding._main_hidden():
            second_inside.set()
            first_out.wait(0.3)  # and leaves last

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert {name: main.__dict__.get(name, "absent") for name in ("__file__", "__spec__")} == before


def _holds(pid: int, secret: bytes) -> bool:
    """Whether `secret` is anywhere in the writable memory of process `pid` (a child of this one)."""
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as memory:
        for line in maps:
            span, permissions = line.split()[:2]
            if not permissions.startswith("rw"):
                continue
            low, high = (int(bound, 16) for bound in span.split("-"))
            try:
                memory.seek(low)
                if secret in memory.read(high - low):
                    return True
            except OSError:  # a region the kernel does not let us read ([vvar] and the like)
                continue
    return False


def test_the_fork_server_never_holds_the_blinding_key():
    # The key reaches each worker with its job, never the server the workers are forked from: after a pool has
    # blinded and reblinded with a key, no copy of it is in the server's memory (read through /proc/<pid>/mem).
    import subprocess
    import sys
    from multiprocessing import forkserver

    import pyarrow as pa

    key = os.urandom(32)
    emails = pa.array([f"user{i}@example.com" for i in range(300)], type=pa.string())
    pool = ProcessPoolChunkExecutor(workers=2, max_in_flight=4)
    try:
        blinded = [r.points for r in pool.map(blind_identifiers, [BlindJob(key, IdentifierType.EMAIL, emails)] * 4)]
        assert all(len(points) == 300 * 32 for points in blinded)
        assert [r.rejected for r in pool.map(reblind_points, [ReblindJob(key, p) for p in blinded])] == [0] * 4
        assert not _holds(forkserver._forkserver._forkserver_pid, key)  # type: ignore[attr-defined]
    finally:
        pool.close()
    # the control: the same reading finds a key another process holds
    holder = f"import time; key = bytes.fromhex({key.hex()!r}); print(flush=True); time.sleep(30)"
    with subprocess.Popen([sys.executable, "-c", holder], stdout=subprocess.PIPE) as other:
        assert other.stdout is not None
        other.stdout.readline()
        try:
            assert _holds(other.pid, key)
        finally:
            other.kill()


def test_only_the_members_user_can_reach_the_fork_server():
    # Whoever can connect to the fork server can have it fork a process that runs their code with its memory
    # (CVE-2022-42919 was the abstract socket any local user could reach): a file socket, 0600, in a 0700 directory.
    import socket
    import stat
    from multiprocessing import forkserver

    pool = ProcessPoolChunkExecutor(workers=1)
    try:
        address = forkserver._forkserver._forkserver_address  # type: ignore[attr-defined]
        assert isinstance(address, str)
        assert not address.startswith("\0")  # not in the abstract namespace
        assert stat.S_IMODE(os.stat(address).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(os.path.dirname(address)).st_mode) == 0o700
        if os.geteuid() == 0:  # as root, also try it as another user (nobody)
            child = os.fork()
            if child == 0:
                code = 2
                try:
                    os.setgid(65534)
                    os.setuid(65534)
                    with socket.socket(socket.AF_UNIX) as client:
                        client.connect(address)
                    code = 0
                except PermissionError:
                    code = 13
                finally:
                    os._exit(code)
            assert os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]) == 13  # refused
    finally:
        pool.close()


def test_process_pool_bounds_chunks_in_flight():
    # Memory stays flat: the executor never pulls more than max_in_flight chunks ahead of what it has yielded.
    pool = ProcessPoolChunkExecutor(workers=2, max_in_flight=3)
    pulled = 0

    def jobs():
        nonlocal pulled
        for i in range(20):
            pulled += 1
            yield ReblindJob(key=_key(bytes(32)), points=hash_to_u(bytes([i])))

    try:
        for done, _ in enumerate(pool.map(reblind_points, jobs()), start=1):
            assert pulled - done <= 3
        assert done == 20
    finally:
        pool.close()


@settings(max_examples=25)
@given(st.lists(st.one_of(st.none(), st.just(""), st.text(max_size=12), st.emails()), max_size=12))
def test_batched_blinding_equals_blinding_each_identifier_alone(values):
    # The chunk is hashed to the curve in one batch and blinded in one pass: the points must be exactly what the
    # protocol's steps give one identifier at a time (PROTOCOL.md section 2), in row order.
    from cleanroom_client.identity import InvalidIdentifierError, Normalizer, curve_message, digest, is_missing

    key = _key(bytes(range(32)))
    expected = b""
    for value in values:
        if value is None or is_missing(value):
            continue
        try:
            d = digest(Normalizer().normalize(IdentifierType.EMAIL, value))
        except InvalidIdentifierError:
            continue
        expected += blind_point(
            X25519PrivateKey.from_private_bytes(key), hash_to_u(curve_message(IdentifierType.EMAIL, d))
        )
    assert blind_identifiers(BlindJob(key=key, id_type=IdentifierType.EMAIL, values=values)).points == expected


def test_a_blinding_worker_does_not_load_pandas():
    # Every worker of the pool imports this module before its first chunk; pandas alone doubled that start-up, which
    # each member pays once per worker at every match (benchmarks/README.md, "With the native hash to curve").
    import subprocess
    import sys

    script = "import sys, cleanroom_client.blinding; print(sorted({'pandas', 'pyarrow.parquet'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_a_blinding_worker_loads_only_what_its_chunks_need():
    # What a worker of the pool does, in a fresh process: unpickle an Arrow chunk of emails (as a match sends them)
    # and a chunk of the peer's points, blind one and reblind the other. Neither needs pandas (pyarrow imports it
    # on a `pa.array` or `pa.scalar` call or a conversion to numpy, so the worker makes none), gRPC and the stubs,
    # `cryptography` (where the native X25519 runs), phonenumbers (phones only) or idna (non-ASCII domains only);
    # each cost every worker of every match part of its start-up (benchmarks/README.md, issue 33's fifth pass).
    import pickle
    import subprocess
    import sys

    import pyarrow as pa

    from cleanroom_client.curve import X25519_NATIVE

    key, emails = bytes(range(32)), pa.array(["Ann@Example.COM", " bob@example.org", "x", None])
    jobs = pickle.dumps(
        (
            BlindJob(key=key, id_type=IdentifierType.EMAIL, values=emails),
            ReblindJob(key=key, points=hash_to_u(b"a") + bytes(32)),
        )
    )
    heavy = {"pandas", "grpc", "google.protobuf", "cleanroom_client.protocol", "phonenumbers", "idna"}
    if X25519_NATIVE:
        heavy.add("cryptography")
    script = (
        "import pickle, sys\n"
        "from cleanroom_client.blinding import blind_identifiers, reblind_points\n"
        "blind, reblind = pickle.loads(sys.stdin.buffer.read())\n"
        "assert blind_identifiers(blind).valid == 2 and reblind_points(reblind).rejected == 1\n"
        f"print(sorted(set({sorted(heavy)!r}) & set(sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", script], input=jobs, capture_output=True, check=True)
    assert done.stdout.decode().strip() == "[]"


# The peer's points, of every kind the validation sorts: hashed (valid), twist, unreduced, low order, random.
_PEER_POINT = st.one_of(
    st.binary(max_size=8).map(hash_to_u),
    st.binary(min_size=32, max_size=32),
    st.sampled_from([bytes(32), (1).to_bytes(32, "little"), (2**255 - 19).to_bytes(32, "little"), b"\xff" * 32]),
)


@settings(max_examples=40, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.lists(_PEER_POINT, max_size=20), st.booleans())
def test_reblinding_a_chunk_equals_cryptography_point_by_point(seed, points, last_hop):
    # The chunk goes through the native X25519 in one call (the accepted points only): every tag or point, and the
    # count of rejected ones, must be exactly what one `cryptography` exchange per validated point gives.
    from cleanroom_client.curve import is_valid_point

    key = _key(seed)
    private = X25519PrivateKey.from_private_bytes(key)
    width = 8 if last_hop else 32
    expected = [
        (join_tag(blind_point(private, p)) if last_hop else blind_point(private, p)) if is_valid_point(p) else None
        for p in points
    ]
    result = reblind_points(ReblindJob(key=key, points=b"".join(points), last_hop=last_hop))
    out = result.tags if last_hop else result.points
    assert out == b"".join(e if e is not None else bytes(width) for e in expected)
    assert result.rejected == sum(e is None or e == bytes(width) for e in expected)
    assert (result.points if last_hop else result.tags) == b""


def test_blinding_and_reblinding_make_one_native_batch_call_per_chunk(monkeypatch):
    # Both steps run the whole chunk through the extension's batched X25519 (eight ladders at once where the CPU
    # has AVX-512 IFMA) in one call, never a Python loop of `cryptography` exchanges; rejected peer points never
    # reach it. (Its speed is measured in benchmarks/bench_x25519.py, not here.)
    from cleanroom_client import blinding
    from cleanroom_client.curve import NATIVE, X25519_NATIVE, hash_to_u_batch, x25519_batch

    assert NATIVE, "the SDK's extension is not built: make install"
    calls: list[int] = []

    def spy(key: bytes, points: bytes) -> bytes:
        calls.append(len(points) // 32)
        return x25519_batch(key, points)

    def no_exchange(*_: object) -> None:
        raise AssertionError("a per-point cryptography exchange ran")

    key = _key(bytes(range(32)))
    points = hash_to_u_batch([i.to_bytes(4, "little") for i in range(100)])
    monkeypatch.setattr(blinding, "x25519_batch", spy)
    if X25519_NATIVE is not None:  # without IFMA the batch is cryptography's (faster than the portable C ladder)
        monkeypatch.setattr(X25519PrivateKey, "from_private_bytes", no_exchange)
    blinded = blinding.blind_many(key, points)
    assert calls == [100]
    peer = blinded[: 32 * 50] + bytes(32) + blinded[32 * 50 :]  # one point the check rejects
    result = blinding.reblind_points(blinding.ReblindJob(key=key, points=peer))
    assert calls == [100, 100]
    assert result.rejected == 1


def test_a_jobs_repr_never_shows_the_members_key():
    # Jobs travel to worker processes and Ray tasks; their repr ends up in logs, tracebacks with locals and error
    # reporters. The secret blinding key must not be in it (the other fields still are, for debugging).
    from cleanroom_client import blinding

    key = bytes(range(200, 232))
    for job in (
        blinding.ReblindJob(key=key, points=bytes(32)),
        blinding.BlindJob(key=key, id_type=IdentifierType.EMAIL, values=["a@example.com"]),
    ):
        shown = repr(job)
        assert repr(key) not in shown
        assert key.hex() not in shown
        assert "\\xc8\\xc9" not in shown
        assert "key=" not in shown
        assert type(job).__name__ in shown
