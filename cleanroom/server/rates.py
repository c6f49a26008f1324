"""Rate limits per principal: every limit on how often a caller may do something lives here.

Each limit is a token bucket per principal: `burst` calls at once, then `per_second` on average. A call over
its limit is RESOURCE_EXHAUSTED at the front door, before it is authorized or touches data, and it writes no
audit entry: a refusal that wrote an entry would let a caller grow the log at its own pace, which is what these
limits exist to stop; the operator's log says once when a principal goes over a limit. Buckets are kept per
authenticated principal only (names the operator issued), so their number is bounded by the principals.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import ResourceExhaustedError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rate:
    """`burst` calls at once, refilled at `per_second`."""

    burst: int
    per_second: float


#: Previews cost no ε but each writes an audit entry: 20 at once, then one a second.
PREVIEW_RATE = Rate(burst=20, per_second=1.0)
#: Collaborations created (each one a chain and a policy of its own): 30 at once, then one every 10 s.
CREATE_RATE = Rate(burst=30, per_second=0.1)
#: Refused calls (each one an audit entry, in a collaboration's chain or the server's): 20 at once, then one a
#: second; once used up, every call of the principal is RESOURCE_EXHAUSTED until one refills, and the principal
#: is on probation: each call admitted costs one too (so one a second gets in) until the count is full again.
REFUSAL_RATE = Rate(burst=20, per_second=1.0)

#: Methods with a rate of their own, by full method name.
METHOD_RATES: dict[str, tuple[str, Rate]] = {
    "/cleanroom.v1.AnalyticsService/Preview": ("previews", PREVIEW_RATE),
    "/cleanroom.v1.CollaborationService/CreateCollaboration": ("collaborations created", CREATE_RATE),
}


class RateLimiter:
    """The buckets of every principal; thread-safe."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, refusal_rate: Rate = REFUSAL_RATE) -> None:
        self._buckets: dict[tuple[str, str], tuple[float, float]] = {}
        self._lock = threading.Lock()
        self._clock = clock
        #: The refused calls' rate (`REFUSAL_RATE` unless the operator set another, `ServerConfig.refusal_rate`).
        self._refusal_rate = refusal_rate
        #: (principal, what) over its limit now: logged once when it goes over, not once per refused call.
        self._over: set[tuple[str, str]] = set()
        #: Principals that used up their refused calls and have not refilled them all since: each call they are
        #: admitted costs one. Without it, whenever one refusal refilled, all of a flood's calls got in at once
        #: until one of them was refused, e.g. half-open calls, which count as refused only once they are cut.
        self._probation: set[str] = set()

    def _level(self, key: tuple[str, str], rate: Rate, now: float) -> float:
        tokens, last = self._buckets.get(key, (float(rate.burst), now))
        return min(float(rate.burst), tokens + (now - last) * rate.per_second)

    def _refuse(self, principal: str, what: str, rate: Rate, level: float) -> ResourceExhaustedError:
        if (principal, what) not in self._over:
            self._over.add((principal, what))
            log.warning("%s is over the limit on %s; its calls are refused until it slows down", principal, what)
        wait = (1.0 - level) / rate.per_second
        return ResourceExhaustedError(
            f"you ({principal}) are over the limit on {what} ({rate.burst} at once, then one every "
            f"{1 / rate.per_second:g} s); try again in {max(1, round(wait))} s"
        )

    def admit(self, principal: str, method: str) -> None:
        """Raise ResourceExhaustedError when `principal` has used up its refusals, or its rate for `method`."""
        now = self._clock()
        with self._lock:
            refusals = self._level((principal, "refusals"), self._refusal_rate, now)
            if refusals < 1.0:
                raise self._refuse(principal, "refused calls", self._refusal_rate, refusals)
            self._over.discard((principal, "refused calls"))
            if principal in self._probation:
                if refusals >= self._refusal_rate.burst:
                    self._probation.discard(principal)
                else:
                    self._buckets[(principal, "refusals")] = (refusals - 1.0, now)
            rated = METHOD_RATES.get(method)
            if rated is None:
                return
            what, rate = rated
            level = self._level((principal, what), rate, now)
            if level < 1.0:
                raise self._refuse(principal, what, rate, level)
            self._over.discard((principal, what))
            self._buckets[(principal, what)] = (level - 1.0, now)

    def refused(self, principal: str) -> None:
        """Count one refused call of `principal`."""
        now = self._clock()
        with self._lock:
            level = max(0.0, self._level((principal, "refusals"), self._refusal_rate, now) - 1.0)
            self._buckets[(principal, "refusals")] = (level, now)
            if level < 1.0:
                self._probation.add(principal)
