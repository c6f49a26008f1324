"""The front door: who may hold a worker thread, for how long, and how often.

Guarantees, for every RPC of every service (the clean room's, health, reflection):

- A call without credentials is refused from its headers alone: the token in its `authorization` metadata is
  checked (or, on a mutual-TLS server, the TLS handshake has verified a client certificate) before any request
  message is read; a token is looked up in memory (`Principals`), never in the catalogue. A refused call reads
  nothing, so an unread message costs the server at most the HTTP/2 flow-control window (BDP probing is off, so
  that window stays small), and takes no worker: refusals at the door (no credentials, an unknown token, a token
  holder over a rate or over its half-open calls) run on gRPC's polling thread (`DoorExecutor`), so they never
  wait behind busy workers nor count against `maximum_concurrent_rpcs` while they wait.
- Every method is served in request-streaming form, so the server, not the transport, decides when to read the
  request: a refused call never reads it, and an authenticated unary call waits for it under watch. One that does
  not arrive within `request_timeout` cancels the call (a half-open call), and a principal's half-open calls
  beyond `HALF_OPEN_PER_PRINCIPAL` are cancelled at once, so a member holds at most that many workers waiting.
  While a principal has that many unary calls half-open, its next unary calls are refused (RESOURCE_EXHAUSTED)
  before they wait at all: fresh half-open calls, opened as fast as the old ones are cut, hold no worker either.
  A request stream waiting for its first message counts as half-open too (its deadline is `idle_timeout`: a
  client may compute its first chunk after opening the stream), so streams that never say what they are for
  cannot pile up either.
- Every call the watchdog cuts counts as one of its principal's refused calls (`rates.py`), like every call
  answered with a refusal (`cleanroom.errors.RefusalError`): a principal that keeps opening calls only to have them cut,
  or keeps asking for what is refused, is soon refused at the door, before it waits for anything.
- Every stream is cut (CANCELLED) after `idle_timeout` seconds in which the client moved no message: an upload
  whose client went quiet, a download (FetchPeerPoints, exports, audiences) whose client stopped reading. The
  server's own work between two responses does not count; a built-in stream (health Watch, reflection) is cut
  after `idle_timeout` without any message either way. A cut stream frees its worker and its stream slot.
- Streams of the server's own services take slots like any other (`SERVER_SERVICES` share).
- A stream re-resolves its caller at every request message it reads and every response it sends: a token revoked
  or rotated (or a certificate's principal revoked) after the stream passed the door is refused (UNAUTHENTICATED)
  at its next message, so an upload opened before the revocation is not stored.
- Each principal's previews, collaboration creations and refused calls are rate-limited (`rates.py`).

Why the synchronous `grpc.server` and not `grpc.aio`: grpc.aio reads a unary request before it calls the handler
(a sync handler then runs in its thread pool), so waiting costs no thread; but its servicer context cannot cancel
a call. A response stuck behind a client that stopped reading stays pending, and `abort` queues its status behind
that data, so a stalled FetchPeerPoints could never be cut: its call, its memory and its place under the
concurrency cap would stay until the client read or left. (Checked with grpcio 1.85: `context.abort` after a
timed-out `context.write` returned only once the client read again.) The sync server's `context.cancel()` resets
the HTTP/2 stream at once. The gate runs in the interceptor, on the server's polling thread, before a worker is
chosen, and so does its refusal (`DoorExecutor`): a caller without credentials costs no worker at all;
authenticated callers are bounded by the stream limits, the half-open rule, the timeouts above and the rates.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import grpc

from ..errors import CleanroomError, InvalidArgumentError, RefusalError, ResourceExhaustedError, UnauthenticatedError
from ..principals import Principal
from ..storage.store import acting_for
from .auth import SERVER_SERVICES, StreamLimiter, TokenOrCertificateAuthenticator, no_credentials
from .errors import BehaviourInterceptor
from .rates import RateLimiter

log = logging.getLogger(__name__)

#: Methods of the server's own services (health, reflection) start with this.
BUILT_IN_PREFIX = "/grpc."
#: How often the watchdog looks for calls to cut (seconds); a cut comes at most this late.
WATCH_TICK = 0.1
#: Calls one principal may have waiting for their request message, past `HALF_OPEN_GRACE` seconds after their
#: headers; the watchdog cancels the later ones at once. Real clients send the message with the headers, so only a
#: half-open call ever waits that long.
HALF_OPEN_PER_PRINCIPAL = 2
HALF_OPEN_GRACE = 0.5
#: The attribute that marks a behaviour as a refusal at the door (`DoorExecutor` runs it without a worker);
#: wrappers copy it (`functools.wraps`).
AT_THE_DOOR = "cleanroom_at_the_door"


class Watch:
    """One call's deadline for its next message, either way; `kick` moves it, `stop` ends the watch."""

    def __init__(
        self,
        watchdog: Watchdog,
        context: grpc.ServicerContext,
        timeout: float,
        principal: str,
        waiting: bool,
        unary: bool,
    ) -> None:
        self._watchdog = watchdog
        self.context = context
        self.principal = principal
        now = time.monotonic()
        self.deadline = now + timeout
        #: When the call began to wait for its (unary) request message; None once it came.
        self.waiting_since: float | None = now if waiting else None
        #: A unary call's message comes with its headers; a stream's first may come later (computed after opening).
        self.unary = unary

    def half_open(self, now: float) -> bool:
        """Still waiting for its request message `HALF_OPEN_GRACE` after its headers, and not yet cut."""
        return self.waiting_since is not None and now - self.waiting_since >= HALF_OPEN_GRACE and self.deadline > now

    def received(self) -> None:
        """The request message came: the call is no longer half-open."""
        self.waiting_since = None

    def kick(self, timeout: float) -> None:
        """A message moved: the next one has `timeout` seconds."""
        self.deadline = time.monotonic() + timeout

    def pause(self) -> None:
        """The server's turn (it computes the next response): no deadline until the next kick."""
        self.deadline = float("inf")

    def stop(self) -> None:
        """Nothing more to watch (the call ends, or only the server works from here)."""
        self._watchdog.forget(self)


class Watchdog:
    """One thread that cancels every watched call whose deadline has passed.

    One thread for all calls (rather than a timer per call or per message) keeps a flood of calls from costing
    threads of its own. `on_cut` is told the principal of every call it cuts (the server counts it as a refusal).
    """

    def __init__(self, tick: float = WATCH_TICK, on_cut: Callable[[str], None] | None = None) -> None:
        self._on_cut = on_cut
        self._watches: set[Watch] = set()
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._tick = tick
        self._thread = threading.Thread(target=self._run, name="cleanroom-watchdog", daemon=True)
        self._thread.start()

    def watch(
        self,
        context: grpc.ServicerContext,
        timeout: float,
        principal: str,
        waiting: bool = False,
        unary: bool = False,
    ) -> Watch:
        """Cancel the call of `context` unless it is kicked within `timeout` seconds.

        `waiting`: the call waits for its request message (`unary`: its one message), and counts as half-open (see
        `HALF_OPEN_PER_PRINCIPAL`) until `Watch.received`. ResourceExhaustedError, before anything is watched, for a
        unary call of a principal that already has `HALF_OPEN_PER_PRINCIPAL` unary calls half-open.
        """
        watch = Watch(self, context, timeout, principal, waiting, unary)
        with self._lock:
            refused = waiting and unary and self._half_open_full(principal, time.monotonic())
            if not refused:
                self._watches.add(watch)
        if refused:
            raise self._refuse_half_open(principal)
        return watch

    def admit_unary(self, principal: str) -> None:
        """ResourceExhaustedError when `principal` already has `HALF_OPEN_PER_PRINCIPAL` unary calls half-open.

        The front door asks before the call takes a worker; `watch` asks again once it has one (a race between
        the two only lets a call wait as far as `watch`).
        """
        with self._lock:
            refused = self._half_open_full(principal, time.monotonic())
        if refused:
            raise self._refuse_half_open(principal)

    def _half_open_full(self, principal: str, now: float) -> bool:
        half_open = sum(1 for w in self._watches if w.unary and w.principal == principal and w.half_open(now))
        return half_open >= HALF_OPEN_PER_PRINCIPAL

    def _refuse_half_open(self, principal: str) -> ResourceExhaustedError:
        if self._on_cut is not None:
            self._on_cut(principal)
        return ResourceExhaustedError(
            f"you ({principal}) have {HALF_OPEN_PER_PRINCIPAL} calls that sent their headers and no message "
            f"for {HALF_OPEN_GRACE:g} s; send their requests or cancel them first"
        )

    def forget(self, watch: Watch) -> None:
        """Stop watching (idempotent)."""
        with self._lock:
            self._watches.discard(watch)

    def close(self) -> None:
        """Stop the thread (the server is stopping)."""
        self._stopped.set()
        self._thread.join()

    def _half_open_beyond_limit(self, now: float) -> list[Watch]:
        half_open: dict[str, list[Watch]] = {}
        for w in self._watches:
            if w.half_open(now):
                half_open.setdefault(w.principal, []).append(w)
        beyond: list[Watch] = []
        for calls in half_open.values():
            calls.sort(key=lambda w: w.waiting_since or 0.0)
            beyond += calls[HALF_OPEN_PER_PRINCIPAL:]
        return beyond

    def _run(self) -> None:
        while not self._stopped.wait(self._tick):
            now = time.monotonic()
            with self._lock:
                late = [w for w in self._watches if w.deadline <= now]
                late += self._half_open_beyond_limit(now)
                self._watches.difference_update(late)
            for watch in late:
                try:
                    watch.context.cancel()
                    if self._on_cut is not None:
                        self._on_cut(watch.principal)
                except Exception:  # the one thread that cuts calls must outlive any one call
                    log.exception("the watchdog could not cut a call of %s", watch.principal)


def _handler(
    like: grpc.RpcMethodHandler, behaviour: Callable[[Iterator[Any], grpc.ServicerContext], Any]
) -> grpc.RpcMethodHandler:
    """A request-streaming handler with `like`'s response kind and (de)serializers."""
    make = grpc.stream_stream_rpc_method_handler if like.response_streaming else grpc.stream_unary_rpc_method_handler
    return make(behaviour, request_deserializer=like.request_deserializer, response_serializer=like.response_serializer)


def _behaviour(handler: grpc.RpcMethodHandler) -> Callable[..., Any]:
    for fn in (handler.unary_unary, handler.unary_stream, handler.stream_unary, handler.stream_stream):
        if fn:
            return fn
    raise AssertionError("a method handler without behaviour")


class FrontDoorInterceptor(BehaviourInterceptor):
    """The gate (credentials from the headers), the timeouts, the built-in services' slots, and the rates.

    Install inside `ErrorMappingInterceptor` (whose mapping turns this module's domain errors into statuses)
    and outside `RequestLimitsInterceptor`.
    """

    def __init__(
        self,
        auth: TokenOrCertificateAuthenticator,
        certificates: bool,
        streams: StreamLimiter,
        rates: RateLimiter,
        watchdog: Watchdog,
        request_timeout: float,
        idle_timeout: float,
    ) -> None:
        self._auth = auth
        self._certificates = certificates
        self._streams = streams
        self._rates = rates
        self._watchdog = watchdog
        self._request_timeout = request_timeout
        self._idle = idle_timeout

    def serve(
        self, handler: grpc.RpcMethodHandler, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        """Refuse a call without valid credentials from its headers; serve the others under watch."""
        method = handler_call_details.method
        try:
            token_holder = self._auth.by_metadata(handler_call_details.invocation_metadata or ())
            if token_holder is None and not self._certificates:
                raise no_credentials()
            if token_holder is not None:  # a certificate's holder is known only on a worker (`start`)
                self._rates.admit(token_holder.name, method)
                if not handler.request_streaming:
                    self._watchdog.admit_unary(token_holder.name)
        except (UnauthenticatedError, ResourceExhaustedError) as exc:
            return _handler(handler, _refuse(exc, handler.response_streaming))
        return self._guarded(handler, method, admitted=token_holder is not None)

    def _guarded(self, handler: grpc.RpcMethodHandler, method: str, admitted: bool) -> grpc.RpcMethodHandler:
        inner = _behaviour(handler)
        streams_in, streams_out = handler.request_streaming, handler.response_streaming
        built_in = method.startswith(BUILT_IN_PREFIX)
        built_in_stream = built_in and (streams_in or streams_out)

        def servers_turn(watch: Watch) -> None:
            # The clean room's own work between two responses (a query, a training step) is not the client's
            # idleness; the built-in services do no work, so their silence is idleness (an idle health Watch).
            if not built_in:
                watch.pause()

        def start(requests: Iterator[Any], context: grpc.ServicerContext) -> tuple[Principal, Watch, Any]:
            principal = self._auth.principal(context)  # a certificate's principal, or a token revoked meanwhile
            if not admitted:  # a token's holder was admitted at the door
                self._rates.admit(principal.name, method)
            if streams_in:
                watch = self._watchdog.watch(context, self._idle, principal.name, waiting=True)
                return principal, watch, self._watched(requests, watch, streams_out, context)
            watch = self._watchdog.watch(context, self._request_timeout, principal.name, waiting=True, unary=True)
            request = next(requests, None)
            watch.received()
            if request is None:
                watch.stop()
                raise InvalidArgumentError("the call carried no request message")
            if streams_out:
                watch.kick(self._idle)
                servers_turn(watch)  # until the first response
            else:
                watch.stop()  # the client now waits for the one answer: nothing to watch
            return principal, watch, request

        def slot(principal: Principal) -> AbstractContextManager[object]:
            return self._streams.slot(principal, SERVER_SERVICES) if built_in_stream else nullcontext()

        def unary_out(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
            principal, watch, argument = start(requests, context)
            try:
                with slot(principal), acting_for(principal.name):
                    return inner(argument, context)
            except RefusalError:  # past the door (most write an audit entry); an outcome after data is charged instead
                self._rates.refused(principal.name)
                raise
            finally:
                watch.stop()

        def stream_out(requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
            principal, watch, argument = start(requests, context)
            try:
                with slot(principal), acting_for(principal.name):
                    for response in inner(argument, context):
                        self._auth.principal(context)  # revoked or rotated meanwhile: the rest is not sent
                        watch.kick(self._idle)  # the client has that long to take it
                        yield response
                        servers_turn(watch)
            except RefusalError:
                self._rates.refused(principal.name)
                raise
            finally:
                watch.stop()

        return _handler(handler, stream_out if streams_out else unary_out)

    def _watched(
        self, requests: Iterator[Any], watch: Watch, streams_out: bool, context: grpc.ServicerContext
    ) -> Iterator[Any]:
        """The request stream under watch; every message is refused once its caller's credentials are revoked."""
        for request in requests:  # the client's turn: the watch runs
            watch.received()  # no longer half-open once a message came
            self._auth.principal(context)  # a token revoked or rotated since the door: UNAUTHENTICATED, unused
            watch.pause()  # the server's turn: storing a chunk is not the client's idleness
            yield request
            watch.kick(self._idle)
        if not streams_out:
            watch.stop()  # all of the upload is in; the server's commit is not the client's idleness


def _refuse(exc: CleanroomError, streams_out: bool) -> Callable[[Iterator[Any], grpc.ServicerContext], Any]:
    """A behaviour that raises `exc` without reading a message (the error mapping answers the call).

    Marked `AT_THE_DOOR`: `DoorExecutor` runs it on gRPC's polling thread, without a worker.
    """

    def unary_out(_requests: Iterator[Any], _context: grpc.ServicerContext) -> Any:
        raise exc

    def stream_out(_requests: Iterator[Any], _context: grpc.ServicerContext) -> Iterator[Any]:
        raise exc
        yield  # a generator, like the method it stands for

    behaviour = stream_out if streams_out else unary_out
    setattr(behaviour, AT_THE_DOOR, True)
    return behaviour


class DoorExecutor(futures.ThreadPoolExecutor):
    """The server's workers, except for the front door's refusals, which run where gRPC hands them over.

    gRPC's synchronous server submits every accepted call to its executor, and counts it against
    `maximum_concurrent_rpcs` until the submitted work is done. A refusal at the door (`_refuse`: no credentials,
    an unknown token, a principal over a rate or its half-open calls) reads no message, blocks on nothing and takes
    microseconds, so it runs at once on gRPC's polling thread: it never waits behind busy workers, never takes
    one, and is done, so out of the count, before the next call is accepted. A flood of refused calls cannot
    crowd a member's call out of the workers or past the cap. Anything else (and a refusal, should gRPC ever
    submit its behaviour differently) goes to the thread pool as before.
    """

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> futures.Future[Any]:
        """Run a front-door refusal at once (a done future); anything else on a worker."""
        if any(getattr(arg, AT_THE_DOOR, False) for arg in args):
            done: futures.Future[Any] = futures.Future()
            try:
                done.set_result(fn(*args, **kwargs))
            except Exception as exc:  # noqa: BLE001 - handed to whoever waits on the future, as a worker would
                done.set_exception(exc)
            return done
        return super().submit(fn, *args, **kwargs)
