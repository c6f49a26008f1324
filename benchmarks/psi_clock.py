"""Seconds the members of a benchmark spend in the PSI steps, summed over members (for bench_refresh and bench_chain).

The PSI steps are `MatchRunner._send_points` (blind and send the member's points) and `MatchRunner._blind_offers`
(blind the other members' points at its hops); the rest of a match or refresh (tables, status polls, the local
ledger, the server's join) is what a benchmark's wall-clock figures add. Members run at once, so the sum can
exceed the wall time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from cleanroom_client.matching import MatchRunner


class PsiClock:
    """Wraps the two MatchRunner steps for the benchmark's duration (the class, so every member's runner)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._lock = threading.Lock()
        for name in ("_send_points", "_blind_offers"):
            setattr(MatchRunner, name, self._timed(getattr(MatchRunner, name)))

    def _timed(self, step: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return step(*args, **kwargs)
            finally:
                with self._lock:
                    self.seconds += time.perf_counter() - start

        return timed

    def lap(self) -> float:
        """Seconds since the last lap."""
        with self._lock:
            seconds, self.seconds = self.seconds, 0.0
        return seconds
