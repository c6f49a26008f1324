"""Blinding on the member's own Ray cluster: `match(..., engine=RayEngine(address=...))`.

Needs the optional extra: `pip install "cleanroom-client[ray]"`. Ray is imported when a `RayEngine` is made, never
when `cleanroom_client` is imported.

`RayEngine` is a `ChunkExecutor`, the same seam as the local process pool: the match code hands it the steps and
the chunks, and it runs each chunk (normalize, hash to curve, blind; or double-blind a chunk of the peer's points)
as one Ray task over an Arrow array of the chunk's values. Guarantees, the same as the process pool's:

- results come back in input order, with at most `max_in_flight` chunks submitted and not yet consumed, so the
  driver's memory stays flat and it streams chunks to the server exactly as it does with the pool (same wire
  protocol, same resume: the driver can be killed at any point and run again);
- identical input gives identical output on any engine: the tasks run the same functions on the same chunks.

The blinding key travels inside each task's arguments through the cluster's object store: use a cluster the
member operates (its nodes see the key, as the member's own machine does), never a shared or third-party one.
Tables named by path (a Parquet file, a directory of Parquet files such as a lake path, or a CSV file) are read by
Ray Data on the cluster and gathered on the driver, which holds the users table as the local path does.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import pandas as pd

T = TypeVar("T")
R = TypeVar("R")


def _ray() -> Any:
    try:
        import ray
    except ImportError:  # pragma: no cover - depends on the installed extras
        raise ImportError('RayEngine needs Ray: pip install "cleanroom-client[ray]"') from None
    return ray


class RayEngine:
    """Runs chunks as Ray tasks on a cluster.

    `address`: "auto" joins the cluster this machine belongs to (started with `ray start`), "HOST:PORT" a given
    head node, "ray://HOST:10001" a remote cluster through Ray Client, None starts a local Ray instance (with
    `num_cpus`, default all cores). If Ray is already initialised in this process, that connection is used and
    left open on `close()`; otherwise `close()` disconnects (it never stops a cluster it joined).
    """

    def __init__(
        self,
        address: str | None = "auto",
        *,
        num_cpus: int | None = None,
        max_in_flight: int | None = None,
        cpus_per_task: float = 1.0,
    ) -> None:
        ray = _ray()
        self._ray = ray
        self._owns_connection = not ray.is_initialized()
        if self._owns_connection:
            ray.init(
                address=address,
                num_cpus=num_cpus if address is None else None,
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
            )
        self.cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        self.max_in_flight = max_in_flight or 2 * self.cpus
        self._options = {"num_cpus": cpus_per_task, "max_retries": 3}
        self._remote: dict[Callable[..., Any], Any] = {}

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        """Apply `fn` to each item as a Ray task; yields in input order, at most `max_in_flight` pending."""
        remote = self._remote.get(fn)
        if remote is None:
            remote = self._remote[fn] = self._ray.remote(fn).options(**self._options)
        pending: deque[Any] = deque()
        try:
            for item in items:
                pending.append(remote.remote(item))
                if len(pending) >= self.max_in_flight:
                    yield self._ray.get(pending.popleft())
            while pending:
                yield self._ray.get(pending.popleft())
        finally:
            for ref in pending:  # abandoned (the consumer stopped or failed): do not leave work queued
                self._ray.cancel(ref, force=False)

    def read_table(self, source: str | Path) -> pd.DataFrame:
        """A table read by Ray Data: CSV by its suffix, otherwise Parquet (a file, or every file of a directory)."""
        path = str(source)
        data = self._ray.data
        # rows in file order (blocks in order): a resumed match must see the users in the same order
        data.DataContext.get_current().execution_options.preserve_order = True
        dataset = data.read_csv(path) if path.endswith(".csv") else data.read_parquet(path)
        return dataset.to_pandas()

    def close(self) -> None:
        """Disconnect from the cluster if this engine connected (a cluster it joined keeps running)."""
        if self._owns_connection and self._ray.is_initialized():
            self._ray.shutdown()

    def __enter__(self) -> RayEngine:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
