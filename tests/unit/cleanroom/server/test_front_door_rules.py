"""Issue 29: the rules behind the front door, for any sequence of calls (hypothesis)."""

from __future__ import annotations

import threading
import time
from contextlib import ExitStack

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cleanroom.errors import (
    InternalError,
    QueryFailedError,
    RefusalError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
)
from cleanroom.principals import Principal, Role
from cleanroom.server.auth import StreamLimiter
from cleanroom.server.errors import STATUS
from cleanroom.server.frontdoor import HALF_OPEN_GRACE, HALF_OPEN_PER_PRINCIPAL, Watchdog
from cleanroom.server.rates import METHOD_RATES, PREVIEW_RATE, REFUSAL_RATE, Rate, RateLimiter

PREVIEW = next(method for method, (what, _) in METHOD_RATES.items() if what == "previews")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@given(st.lists(st.floats(min_value=0.0, max_value=5.0), min_size=1, max_size=200))
def test_previews_admitted_never_exceed_the_burst_plus_the_rate(gaps):
    clock = Clock()
    rates = RateLimiter(clock)
    admitted: list[float] = []
    for gap in gaps:
        clock.now += gap
        try:
            rates.admit("brand", PREVIEW)
            admitted.append(clock.now)
        except ResourceExhaustedError as exc:
            message = str(exc)
            assert "try again in" in message
    for i, start in enumerate(admitted):
        for j in range(i, len(admitted)):
            window = admitted[j] - start
            assert j - i + 1 <= PREVIEW_RATE.burst + PREVIEW_RATE.per_second * window + 1e-9
    assert admitted[: PREVIEW_RATE.burst] == [sum(gaps[: k + 1]) for k in range(min(len(gaps), PREVIEW_RATE.burst))]


#: Refusal rates a server may be configured with (`ServerConfig.refusal_rate`); the default among them.
refusal_rates = st.one_of(
    st.just(REFUSAL_RATE),
    st.builds(Rate, st.integers(min_value=1, max_value=40), st.floats(min_value=0.05, max_value=50.0)),
)


@given(st.integers(min_value=0, max_value=100), st.floats(min_value=0.0, max_value=60.0), refusal_rates)
def test_used_up_refusals_shut_the_door_until_they_refill_and_only_for_that_principal(refusals, wait, rate):
    clock = Clock()
    rates = RateLimiter(clock, refusal_rate=rate)
    for _ in range(refusals):
        rates.refused("stranger")
    clock.now += wait
    level = min(rate.burst, max(0, rate.burst - refusals) + rate.per_second * wait)
    try:
        rates.admit("stranger", "/cleanroom.v1.AnalyticsService/GetBudget")
        assert level >= 1.0 - 1e-9
    except ResourceExhaustedError as exc:
        message = str(exc)  # the rate the refused caller is told is the one configured
        assert level < 1.0 + 1e-9
        assert f"{rate.burst} at once, then one every {1 / rate.per_second:g} s" in message
    rates.admit("brand", "/cleanroom.v1.AnalyticsService/GetBudget")  # another principal is never affected


@given(st.lists(st.floats(min_value=0.0, max_value=3.0), min_size=1, max_size=200), refusal_rates)
def test_a_principal_that_used_up_its_refusals_is_admitted_at_the_refill_rate_until_it_is_full_again(gaps, rate):
    # Once its refused calls were used up, a principal used to be let through whenever one refusal had refilled,
    # and then every call at once until one was refused: a member churning half-open calls got 15 workers for
    # the half second before any of them counted as half-open (a 0.5 s stall for everyone, every request timeout).
    clock = Clock()
    rates = RateLimiter(clock, refusal_rate=rate)
    for _ in range(rate.burst):
        rates.refused("mallory")
    admitted: list[float] = []
    for gap in gaps:
        clock.now += gap
        if clock.now >= rate.burst / rate.per_second:
            break  # long enough without a refusal to be full again, whatever it was admitted
        try:
            rates.admit("mallory", "/cleanroom.v1.AnalyticsService/GetBudget")
            admitted.append(clock.now)
        except ResourceExhaustedError:
            pass
    # on probation, each admitted call costs a refusal: at most one per refill, from an empty count
    assert len(admitted) <= rate.per_second * clock.now + 1e-9


slot_requests = st.lists(st.tuples(st.sampled_from("abcd"), st.sampled_from("xyz")), max_size=40)


@given(slot_requests, st.integers(1, 4), st.integers(1, 12), st.integers(1, 6))
def test_no_principal_collaboration_or_server_holds_more_than_its_share(requests, limit, total, share):
    streams = StreamLimiter(limit, total, share)
    held: list[tuple[str, str]] = []
    with ExitStack() as stack:
        for principal, collaboration in requests:
            try:
                slot = stack.enter_context(streams.slot(Principal(principal, Role.MEMBER)))
            except ResourceExhaustedError:
                assert sum(p == principal for p, _ in held) >= limit or len(held) >= total
                continue
            try:
                slot.bind(collaboration)
                held.append((principal, collaboration))
            except ResourceExhaustedError as exc:
                message = str(exc)
                assert sum(c == collaboration for _, c in held) >= share
                assert "its share" in message
                held.append((principal, ""))  # still open, bound to nothing
            assert sum(p == principal for p, _ in held) <= limit
            assert len(held) <= total
            assert all(sum(c == k for _, c in held) <= share for k in "xyz")
    # every slot is given back when its block ends
    with streams.slot(Principal("a", Role.MEMBER)) as again:
        again.bind("x")


class FakeContext:
    """What the watchdog needs of a call: `cancel` (the only stand-in here: a call the server cannot fail to cut)."""

    def __init__(self, fails: bool = False) -> None:
        self.fails = fails
        self.cancelled = threading.Event()

    def cancel(self) -> None:
        if self.fails:
            raise RuntimeError("the call had already ended")
        self.cancelled.set()


def test_the_watchdog_outlives_a_call_it_cannot_cut():
    cut: list[str] = []
    watchdog = Watchdog(tick=0.01, on_cut=cut.append)
    try:
        watchdog.watch(FakeContext(fails=True), 0.0, "mallory")  # type: ignore[arg-type]
        time.sleep(0.1)
        later = FakeContext()
        watchdog.watch(later, 0.05, "brand")  # type: ignore[arg-type]
        assert later.cancelled.wait(2), "the watchdog stopped after one failed cut"
        assert "brand" in cut
    finally:
        watchdog.close()


def test_a_principal_with_two_half_open_calls_is_refused_before_its_next_one_waits():
    refused: list[str] = []
    watchdog = Watchdog(tick=0.01, on_cut=refused.append)
    try:
        for _ in range(HALF_OPEN_PER_PRINCIPAL):
            watchdog.watch(FakeContext(), 30.0, "mallory", waiting=True, unary=True)  # type: ignore[arg-type]
        watchdog.watch(FakeContext(), 30.0, "brand", waiting=True, unary=True)  # type: ignore[arg-type]
        time.sleep(HALF_OPEN_GRACE + 0.1)
        with pytest.raises(ResourceExhaustedError, match="no message"):
            watchdog.watch(FakeContext(), 30.0, "mallory", waiting=True, unary=True)  # type: ignore[arg-type]
        assert refused == ["mallory"]
        # another principal, and mallory's streams (whose first message may come later), still wait
        watchdog.watch(FakeContext(), 30.0, "brand", waiting=True, unary=True)  # type: ignore[arg-type]
        watchdog.watch(FakeContext(), 30.0, "mallory", waiting=True)  # type: ignore[arg-type]
    finally:
        watchdog.close()


def test_a_refusal_is_every_error_answered_before_data_and_no_other():
    """What the door counts against a principal (`RefusalError`) is exactly the domain errors the server answers with a
    refusal's status; a charged failure (ABORTED), a bug, a stopping server and an unknown caller are not counted."""
    refused_codes = {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
    for kind, code in STATUS.items():
        assert issubclass(kind, RefusalError) == (code in refused_codes), kind
    for kind in (QueryFailedError, InternalError, UnavailableError, UnauthenticatedError):
        assert not issubclass(kind, RefusalError), kind
