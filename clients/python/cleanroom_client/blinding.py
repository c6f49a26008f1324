"""Blinding on the member's machine: the collaboration key, and X25519 applied chunk by chunk on all cores.

Guarantees: the key is made once per collaboration, kept in a file readable only by its owner (0600), reused on
resume and never sent anywhere. Identifiers are processed in chunks whose results stream out in input order, with
a bounded number of chunks in flight, so memory stays flat however many identifiers there are. Points received
from the peer are validated before use; an invalid one yields an all-zero result (which never matches) and is
counted, never a crash.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.context
import os
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar

import numpy as np
import pyarrow as pa

from .curve import check_points, hash_to_u_batch, x25519_batch
from .errors import WorkersLostError
from .identity import (
    IdentifierType,
    InvalidIdentifierError,
    Normalizer,
    curve_message,
    curve_messages,
    digest,
    is_missing,
    normalize_ascii_emails,
    parse_prehashed,
    redact,
)
from .keyfile import read_private_file, write_private_file
from .sizes import POINT_SIZE

# What this module imports, every member process's fork server (or each spawned worker) imports before blinding:
# pandas loads where tables are read, `cryptography` where a key is made, gRPC and the stubs (`protocol`) not at all.
if TYPE_CHECKING:
    import pandas as pd
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

#: Bytes of a doubly blinded point that the join compares (protocol v1: the first 8, see `join_tag`).
TAG_SIZE = 8
#: The tag of a point the member rejected: it never matches.
ZERO_TAG = bytes(TAG_SIZE)
#: What a hop before the last sends for a point it rejected (three or more members): it never matches.
ZERO_POINT = bytes(POINT_SIZE)

T = TypeVar("T")
R = TypeVar("R")


class ChunkExecutor(Protocol):
    """The engine a match runs on: it reads tables named by path and runs the blinding steps over chunks.

    Implementations: `SerialExecutor` (in process), `ProcessPoolChunkExecutor` (all local cores, the default) and
    `cleanroom_client.ray_engine.RayEngine` (a Ray cluster). The match code is the same on every engine.
    """

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        """Apply `fn` to each item; results in input order, with bounded look-ahead."""
        ...

    def read_table(self, source: str | Path) -> pd.DataFrame:
        """The table at `source`: a CSV file, or Parquet (a file or a directory of files), rows in file order."""
        ...

    def close(self) -> None:
        """Release workers."""
        ...


def read_local_table(source: str | Path) -> pd.DataFrame:
    """A CSV file (by its suffix) or Parquet file or directory, read on this machine."""
    import pandas as pd
    import pyarrow.parquet as pq

    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    return pd.read_csv(path) if path.suffix == ".csv" else pq.read_table(path).to_pandas()


class SerialExecutor:
    """Runs chunks in the calling process: for small inputs and tests."""

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        """Apply `fn` to each item in turn."""
        return (fn(item) for item in items)

    def read_table(self, source: str | Path) -> pd.DataFrame:
        """Read locally."""
        return read_local_table(source)

    def close(self) -> None:
        """Nothing to release."""


def _ready() -> None:
    """A task that makes the pool start its workers."""


def _end_with(member: int) -> None:
    """A worker's initializer: exit as soon as process `member` (the one whose pool this is) has ended.

    A member killed outright (SIGKILL, the OOM killer) runs no clean-up, and its workers would wait for jobs
    forever on a queue they hold open themselves, with the memory that held its key, and keep their fork server
    alive. A daemon thread waits on the member's pidfd (Linux 5.3+), else asks once a second whether it still
    exists (other POSIX systems); on Windows nothing watches (`os.kill(pid, 0)` there sends Ctrl-C).
    """
    if os.name != "posix":
        return
    import time

    def exists() -> bool:
        try:
            os.kill(member, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # another user's process has the number now: the member has ended
            return False
        return True

    def watch() -> None:
        try:
            pidfd = os.pidfd_open(member)
        except ProcessLookupError:  # ended already
            os._exit(1)
        except (AttributeError, OSError):  # no pidfd here: poll
            while exists():
                time.sleep(1.0)
        else:
            import select

            select.select([pidfd], [], [])
        os._exit(1)

    threading.Thread(target=watch, name="cleanroom-member-watch", daemon=True).start()


#: One pool at a time hides `__main__` (see `_main_hidden`).
_main_hiding = threading.Lock()


@contextlib.contextmanager
def _main_hidden() -> Iterator[None]:
    """While processes spawn: do not let them import the caller's main script.

    A spawned child imports the parent's `__main__` (by its file or module name) before running anything, so a
    plain script without an `if __name__ == "__main__":` guard would run again in every worker and call `match()`
    from there (`Exception iterating requests!`). The workers only run this package's functions, which need
    nothing from `__main__`: while they start, `__main__` shows neither a file nor a spec, as in a notebook. Pools
    started at once (clients in threads) take turns: otherwise one saved what another had hidden and put that back.
    """
    main = sys.modules["__main__"]
    with _main_hiding:
        saved: dict[str, object] = {n: main.__dict__[n] for n in ("__file__", "__spec__") if n in main.__dict__}
        try:
            main.__dict__.pop("__file__", None)
            main.__dict__["__spec__"] = None
            yield
        finally:
            main.__dict__.pop("__spec__", None)
            main.__dict__.update(saved)


#: What every blinding worker needs, imported once by the fork server its workers are forked from.
WORKER_MODULES: Final = ("cleanroom_client.blinding", "pyarrow.compute")
#: The process whose pools use multiprocessing's fork server (the first to make one). A fork of that process
#: inherits multiprocessing's record of the server, which is not the fork's child: asking it whether the server
#: still runs (waitpid) fails with ChildProcessError, so a fork spawns its workers.
_fork_server_user: int | None = None


def _worker_context() -> multiprocessing.context.BaseContext:
    """How the pool starts its workers: forked from a fork server that imported `WORKER_MODULES` once, else spawned.

    Never a plain fork of the caller: forking a process that holds gRPC channels can deadlock the child, and the
    child would inherit the caller's memory. The fork server is a fresh interpreter (started once per process, on
    the first pool) that imports nothing of the caller but these modules; each worker forked from it starts with
    them loaded instead of importing numpy, pyarrow and this package itself (a quarter of a second of CPU each).
    The workers receive the key with each job, exactly as spawned ones do. The preload list is process-wide
    (multiprocessing's own): `WORKER_MODULES` are added to the caller's (less `__main__`, multiprocessing's
    default: the server would run a script without a main guard), never replace it.

    Workers are spawned instead: where the platform has no fork server (Windows); before Python 3.11.1, whose fork
    server listened on an abstract socket any local user could reach and have it run code (CVE-2022-42919; since,
    on a socket only the caller's user can open); when the program started multiprocessing's fork server itself
    before the first pool (it holds what the program preloaded, by default its main module, and not these
    modules); and in a fork of a process that used it (see `_fork_server_user`).
    """
    global _fork_server_user
    spawn = multiprocessing.get_context("spawn")
    if sys.version_info < (3, 11, 1) or "forkserver" not in multiprocessing.get_all_start_methods():
        return spawn
    from multiprocessing import forkserver  # not on Windows

    server = forkserver._forkserver  # multiprocessing's one per process; its state is private, without getters
    started_by_the_program = _fork_server_user is None and getattr(server, "_forkserver_pid", None) is not None
    inherited = _fork_server_user not in (None, os.getpid())
    if started_by_the_program or inherited:
        return spawn
    _fork_server_user = os.getpid()
    context = multiprocessing.get_context("forkserver")
    preload = [name for name in getattr(server, "_preload_modules", None) or [] if name != "__main__"]
    context.set_forkserver_preload([*preload, *(name for name in WORKER_MODULES if name not in preload)])
    return context


class ProcessPoolChunkExecutor:
    """Runs chunks on a pool of processes, at most `max_in_flight` at a time (the default executor)."""

    def __init__(self, workers: int | None = None, max_in_flight: int | None = None) -> None:
        self.workers = workers or os.cpu_count() or 1
        self.max_in_flight = max_in_flight or 2 * self.workers
        self._pool = self._start()

    def _start(self) -> ProcessPoolExecutor:
        pool = ProcessPoolExecutor(
            max_workers=self.workers, mp_context=_worker_context(), initializer=_end_with, initargs=(os.getpid(),)
        )
        # Start every worker now, with the caller's script out of their sight (see `_main_hidden`): the pool
        # starts a worker per task submitted while none is idle, and a worker takes far longer to boot than these
        # submissions, so all of them start here. A worker is handed the main module's path during `submit`
        # (Process.start); the first pool of a process waits there for the fork server to import
        # `WORKER_MODULES` (a fraction of a second), later ones fork at once.
        with _main_hidden():
            for _ in range(self.workers):
                pool.submit(_ready)
        return pool

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        """Apply `fn` on the pool; yields in input order, keeping at most `max_in_flight` chunks pending.

        WorkersLostError when a process of the pool died; the pool is replaced first, so the next call runs.
        """
        pending: deque[Future[R]] = deque()
        try:
            for item in items:
                pending.append(self._pool.submit(fn, item))
                if len(pending) >= self.max_in_flight:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        except BrokenProcessPool as lost:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = self._start()
            raise WorkersLostError(
                f"a blinding worker process ended abruptly ({lost}); the workers were restarted: call match() again "
                "(refresh() again for a refresh) to resume"
            ) from lost

    def read_table(self, source: str | Path) -> pd.DataFrame:
        """Read locally."""
        return read_local_table(source)

    def close(self) -> None:
        """Shut the pool down."""
        self._pool.shutdown(cancel_futures=True)


def default_executor() -> ChunkExecutor:
    """A process pool over all local cores."""
    return ProcessPoolChunkExecutor()


def load_or_create_key(path: Path) -> bytes:
    """The raw 32-byte X25519 key at `path`, made (0600, atomically) if missing.

    Refuses a key file that others can read: a leaked blinding key lets its holder test guesses of identifiers.
    """
    if path.exists():
        raw = read_private_file(path)
        if len(raw) != 32:
            raise ValueError(f"{path} is not a 32-byte X25519 key")
        return raw
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

    raw = X25519PrivateKey.generate().private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    write_private_file(path, raw)
    return raw


@dataclass(frozen=True)
class BlindJob:
    """One chunk of one identifier column: the values (None for missing) of consecutive row numbers.

    `values` is an Arrow string array (what the match sends: one buffer to serialize to a worker or a Ray task,
    not thousands of Python strings) or any sequence of text. `key`, the member's secret blinding key, is left out
    of the repr (jobs reach logs and tracebacks).
    """

    key: bytes = field(repr=False)
    id_type: IdentifierType
    values: Sequence[str | None] | pa.Array
    prehashed: bool = False
    normalizer: Normalizer = field(default_factory=Normalizer)
    #: Only count valid, invalid and missing values (to rebuild a summary on resume); no points.
    count_only: bool = False


@dataclass(frozen=True)
class BlindResult:
    """Packed output of a BlindJob: the 32-byte points of the valid identifiers, and which rows they belong to.

    `present` is the protocol's bitmap (bit i for the job's i-th value, least significant bit first), empty when
    every value gave a point.
    """

    points: bytes
    present: bytes
    valid: int
    invalid: int
    missing: int
    #: Per reason a value was invalid (InvalidIdentifierError's message): (reason, count, first example redacted).
    rejected: tuple[tuple[str, int, str], ...] = ()


def blind_point(key: X25519PrivateKey, u: bytes) -> bytes:
    """X25519(key, u)."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

    return key.exchange(X25519PublicKey.from_public_bytes(u))


def join_tag(double_blinded: bytes) -> bytes:
    """What the join compares of a doubly blinded point: its first TAG_SIZE bytes (the u-coordinate's low 64 bits).

    A doubly blinded point is a uniformly distributed element of the prime-order subgroup, so its low 64 bits are
    uniform to within 2^-190: two different identifiers share a tag with probability 2^-64.
    """
    return double_blinded[:TAG_SIZE]


def blind_identifiers(job: BlindJob) -> BlindResult:
    """Steps 1-4 for one chunk: normalize, digest, hash to curve, blind with the member's key.

    An Arrow chunk of emails (what a match sends) is normalized in Arrow's kernels where it can be
    (`normalize_ascii_emails`: valid ASCII addresses, the common case) and value by value by `Normalizer` for the
    rest, with the same result as value by value for all (tested). The chunk's messages are digested in one loop
    (`curve_messages`), hashed to the curve in one batch and blinded in one batch (`blind_many`), natively where
    the extension is built.
    """
    present = np.zeros(len(job.values), dtype=bool)
    invalid = missing = 0
    rejected: dict[str, list[Any]] = {}
    fast: pa.BinaryArray | None = None
    rest: Iterable[tuple[int, str | None]]  # the rows left to normalize value by value
    if (
        job.id_type is IdentifierType.EMAIL
        and not job.prehashed
        and isinstance(job.values, pa.Array)
        and pa.types.is_string(job.values.type)
    ):
        present, fast, left = normalize_ascii_emails(job.values)  # no pa.array here: it would import pandas
        rest = zip(np.flatnonzero(~present).tolist(), left.to_pylist(), strict=True)
    else:
        rest = enumerate(job.values.to_pylist() if isinstance(job.values, pa.Array) else job.values)
    digests: dict[int, bytes] = {}  # of the values the fast path left, by row
    for i, value in rest:
        if value is None or is_missing(value):
            missing += 1
            continue
        try:
            d = parse_prehashed(value) if job.prehashed else digest(job.normalizer.normalize(job.id_type, value))
        except InvalidIdentifierError as why:
            invalid += 1
            rejected.setdefault(str(why), [0, redact(value)])[0] += 1
            continue
        present[i] = True
        digests[i] = d
    valid = int(present.sum())
    reasons = tuple((reason, count, example) for reason, (count, example) in rejected.items())
    if job.count_only:
        return BlindResult(b"", b"", valid, invalid, missing, reasons)
    bitmap = b"" if valid == len(job.values) else np.packbits(present, bitorder="little").tobytes()
    others = {i: curve_message(job.id_type, d) for i, d in digests.items()}
    messages = list(others.values())
    if fast is not None:
        messages = curve_messages(job.id_type, fast.to_pylist())
        if others:  # the others' messages put back between the fast path's, at their rows
            taken = iter(messages)
            messages = [others[i] if i in others else next(taken) for i in np.flatnonzero(present).tolist()]
    return BlindResult(blind_many(job.key, hash_to_u_batch(messages)), bitmap, valid, invalid, missing, reasons)


def blind_many(key: bytes, points: bytes) -> bytes:
    """X25519(key, u) for each 32-byte u of `points` (all valid curve points), packed in the same order.

    One call into the extension's batched X25519 for the whole chunk (`curve.x25519_batch`: eight ladders at once
    where the CPU has AVX-512 IFMA; `cryptography` without the extension).
    """
    return x25519_batch(key, points)


@dataclass(frozen=True)
class ReblindJob:
    """One chunk of another member's blinded points; `last_hop`: answer with tags, else with whole points.

    `key`, the member's secret blinding key, is left out of the repr (jobs reach logs and tracebacks).
    """

    key: bytes = field(repr=False)
    points: bytes
    last_hop: bool = True


@dataclass(frozen=True)
class ReblindResult:
    """The caller's blinding of each point.

    At the last hop `tags` (ZERO_TAG for a rejected point), else 32-byte `points` (32 zero bytes for a rejected one).
    """

    tags: bytes
    rejected: int
    points: bytes = b""


def reblind_points(job: ReblindJob) -> ReblindResult:
    """Step 5: apply the member's key to the peer's points, validating each one first; keep each result's tag.

    The points `check_points` accepts go through the batched X25519 in one call; a rejected point never reaches
    it and answers ZERO_TAG (ZERO_POINT before the last hop). Any all-zero answer counts as rejected.
    """
    if len(job.points) % POINT_SIZE:
        raise ValueError(f"peer chunk of {len(job.points)} bytes is not a whole number of 32-byte points")
    codes = check_points(job.points)
    accepted = np.flatnonzero(codes == 0)
    points = np.frombuffer(job.points, dtype=np.uint8).reshape(-1, POINT_SIZE)
    offered = job.points if len(accepted) == len(codes) else points[accepted].tobytes()
    blinded = np.frombuffer(x25519_batch(job.key, offered), dtype=np.uint8).reshape(-1, POINT_SIZE)
    width = TAG_SIZE if job.last_hop else POINT_SIZE  # a tag is the point's first TAG_SIZE bytes (`join_tag`)
    out = np.zeros((len(codes), width), dtype=np.uint8)
    out[accepted] = blinded[:, :width]
    rejected = int((~out.any(axis=1)).sum())
    if job.last_hop:
        return ReblindResult(out.tobytes(), rejected)
    return ReblindResult(b"", rejected, out.tobytes())
