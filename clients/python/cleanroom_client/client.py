"""`CleanRoomClient`: what a member's data team uses. pandas in, pandas (and plain values) out; no protobuf.

Configuration comes from arguments or the environment: `CLEANROOM_TARGET` (host:port), `CLEANROOM_TOKEN` (the
bearer token the operator issued) and `CLEANROOM_CA` (a PEM file of the CA that signed the server's certificate;
the system's roots when unset). The connection is TLS unless `insecure=True` (local development only). Local state
per collaboration (the blinding key, surrogate ids) lives under `state_dir` (`CLEANROOM_STATE_DIR`; default
`~/.cleanroom/<server>/<credential digest>`, so members sharing a home directory never share state), readable only
by its owner. Auditors use the same client for the audit log.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, TypeVar

import grpc

from .asking import collaboration_dir as collaboration_dir  # where the CLI, tests and users have imported it from
from .auditing import AuditMethods
from .errors import CleanRoomError, InvalidArgumentError
from .files import parse_time_column as parse_time_column  # tests and users have imported it from here
from .identity import (
    INVALID_CHECK_SAMPLE,
    IdentifierQualityWarning,
    IdentifierType,
    Normalizer,
    invalid_share_warning,
)
from .policy import Policy, parse_policy
from .protocol import (
    COLLABORATIONS,
    MAX_MESSAGE_BYTES,
    POINTS,
    collaboration_name,
)
from .protocol import analytics_pb2_grpc as qpb_grpc
from .protocol import audit_pb2_grpc as apb_grpc
from .protocol import collaboration_pb2 as cpb
from .protocol import collaboration_pb2_grpc as cpb_grpc
from .protocol import matching_pb2 as mpb
from .protocol import matching_pb2_grpc as mpb_grpc
from .witness import Witness, witnessed

if TYPE_CHECKING:
    import pandas as pd

    from . import refresh as refresh_state
    from .blinding import ChunkExecutor
    from .matching import MatchPlan, MatchSummary
    from .refresh import RefreshSummary

# The tables' libraries (pandas, numpy, pyarrow) and the matching's modules load in the methods that read, blind or
# refresh: a client that pings, approves, checks a budget or reads the audit log starts without them (the command
# line pays about 0.4 s of CPU less on each such command; tests/product/test_startup.py holds it to that).

T = TypeVar("T")


def default_state_dir(target: str, token: str | None, client_certificate: bytes | str | Path | None) -> Path:
    """`~/.cleanroom/<server>/<credential>`: one member's own state, apart from any other member on this machine.

    Two members (or one person acting as both, as in a trial) sharing a home directory would otherwise share
    `collaborations/<id>` and overwrite each other's blinding key and surrogate ids. The credential part is a digest
    of the token or client certificate, never the credential itself; a rotated token starts a new directory, so set
    `CLEANROOM_STATE_DIR` (or `state_dir=`) to keep one across rotations.
    """
    server = "".join(ch if ch.isalnum() or ch in "-." else "_" for ch in target)
    credential = _read(client_certificate) if client_certificate is not None else (token or "").encode()
    return Path.home() / ".cleanroom" / server / hashlib.sha256(credential or b"").hexdigest()[:16]


def resolve_state_dir(
    state_dir: str | Path | None, target: str, token: str | None, client_certificate: bytes | str | Path | None
) -> Path:
    """`state_dir`, else `CLEANROOM_STATE_DIR`, else the default for this server and credential."""
    explicit = state_dir or os.environ.get("CLEANROOM_STATE_DIR")
    return Path(explicit) if explicit else default_state_dir(target, token, client_certificate)


@dataclass(frozen=True)
class CollaborationInfo:
    """A collaboration as a member sees it."""

    id: str
    display_name: str
    state: str
    policy_yaml: str
    policy_revision: int
    policy_etag: str
    approvals: Mapping[str, bool]

    @property
    def active(self) -> bool:
        """Every member approved the current policy revision."""
        return self.state == "active"


def _info(c: cpb.Collaboration) -> CollaborationInfo:
    states = {cpb.COLLABORATION_STATE_ACTIVE: "active", cpb.COLLABORATION_STATE_AWAITING_APPROVAL: "awaiting_approval"}
    return CollaborationInfo(
        id=c.name.removeprefix(COLLABORATIONS),
        display_name=c.display_name,
        state=states.get(c.state, "unspecified"),
        policy_yaml=c.policy.yaml,
        policy_revision=c.policy.revision,
        policy_etag=c.policy.etag,
        approvals={m.name: m.approved for m in c.members},
    )


def _read(value: bytes | str | Path | None) -> bytes | None:
    """PEM given as bytes or as a file path."""
    if value is None or isinstance(value, bytes):
        return value
    return Path(value).read_bytes()


def _policy_text(policy: str | Path) -> str:
    """A policy given as a file path or as YAML text, validated locally first."""
    text = (
        Path(policy).read_text()
        if isinstance(policy, Path) or ("\n" not in policy and Path(policy).is_file())
        else policy
    )
    parse_policy(text)  # raises PolicyError listing every problem
    return text


class CleanRoomClient(AuditMethods):
    """A member's connection to a clean room server."""

    def __init__(
        self,
        target: str | None = None,
        *,
        token: str | None = None,
        root_certificates: bytes | str | Path | None = None,
        client_certificate: bytes | str | Path | None = None,
        client_key: bytes | str | Path | None = None,
        insecure: bool = False,
        state_dir: str | Path | None = None,
        executor: ChunkExecutor | None = None,
        progress: bool = True,
        default_region: str = "US",
        chunk_rows: int = 16384,
    ) -> None:
        target = target or os.environ.get("CLEANROOM_TARGET")
        token = token or os.environ.get("CLEANROOM_TOKEN")
        root_certificates = root_certificates or os.environ.get("CLEANROOM_CA") or None
        if not target:
            raise ValueError("no server: pass target='host:port' or set CLEANROOM_TARGET")
        if not token and client_certificate is None:
            raise ValueError("no credentials: pass token=... (or set CLEANROOM_TOKEN), or a client certificate")
        if (client_certificate is None) != (client_key is None):
            raise ValueError("pass client_certificate and client_key together")
        if not 1 <= chunk_rows <= 65536:
            raise ValueError("chunk_rows must be between 1 and 65536")
        self.state_dir = resolve_state_dir(state_dir, target, token, client_certificate)
        options = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ]
        if insecure:
            self._channel = grpc.insecure_channel(target, options=options)
        else:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=_read(root_certificates),
                private_key=_read(client_key),
                certificate_chain=_read(client_certificate),
            )
            self._channel = grpc.secure_channel(target, credentials, options=options)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._audit = apb_grpc.AuditServiceStub(self._channel)
        # Every call of the services that change state goes through the transparency log's checks: a collaboration
        # with an unacknowledged history incident is refused, and the receipts each call brings back are checked
        # against the heads this client remembers, and kept (cleanroom_client.transparency).
        self._witness = Witness(self.state_dir / "transparency", self._audit, self._metadata)
        self._collaborations = witnessed(self._witness, cpb_grpc.CollaborationServiceStub(self._channel))
        self._matching = witnessed(self._witness, mpb_grpc.MatchingServiceStub(self._channel))
        self._analytics = witnessed(self._witness, qpb_grpc.AnalyticsServiceStub(self._channel))
        self._executor = executor
        self._owns_executor = executor is None
        self.progress = progress
        self.normalizer = Normalizer(default_region)
        self.chunk_rows = chunk_rows

    # -- lifecycle ---------------------------------------------------------------------------------------------------
    def close(self) -> None:
        """Close the channel and the worker pool the client made."""
        if self._executor is not None and self._owns_executor:
            self._executor.close()
        self._channel.close()

    def __enter__(self) -> CleanRoomClient:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    # -- collaborations ----------------------------------------------------------------------------------------------
    def create_collaboration(self, policy: str | Path, collaboration_id: str = "") -> CollaborationInfo:
        """Create a collaboration proposing `policy` (a YAML file path or YAML text). Every member then approves."""
        request = cpb.CreateCollaborationRequest(collaboration_id=collaboration_id, policy_yaml=_policy_text(policy))
        return _info(self._call(self._collaborations.CreateCollaboration, request))

    def get_collaboration(self, collaboration_id: str) -> CollaborationInfo:
        """One collaboration."""
        return _info(
            self._call(self._collaborations.GetCollaboration, cpb.GetCollaborationRequest(name=_name(collaboration_id)))
        )

    def ping(self, wait: float = 0.0) -> list[CollaborationInfo]:
        """Check the address, CA and credentials, waiting up to `wait` seconds for a server that is starting.

        Returns the collaborations visible to this member; raises the typed error that says what is wrong.
        """
        if wait > 0:
            # On timeout, the call below raises the error that says why.
            with contextlib.suppress(grpc.FutureTimeoutError):
                grpc.channel_ready_future(self._channel).result(timeout=wait)
        return self.list_collaborations()

    def whoami(self) -> tuple[str, str]:
        """(principal name, role) of these credentials, as the server authenticated them: which token is in use."""
        page = self._call(self._collaborations.ListCollaborations, cpb.ListCollaborationsRequest(page_size=1))
        return page.caller, page.caller_role

    def list_collaborations(self) -> list[CollaborationInfo]:
        """All collaborations this member belongs to."""
        out: list[CollaborationInfo] = []
        token = ""
        while True:
            page = self._call(
                self._collaborations.ListCollaborations, cpb.ListCollaborationsRequest(page_size=200, page_token=token)
            )
            out.extend(_info(c) for c in page.collaborations)
            token = page.next_page_token
            if not token:
                return out

    def propose_policy(self, collaboration_id: str, policy: str | Path) -> CollaborationInfo:
        """Propose a new policy revision; every member must approve it again."""
        request = cpb.ProposePolicyRequest(name=_name(collaboration_id), policy_yaml=_policy_text(policy))
        return _info(self._call(self._collaborations.ProposePolicy, request))

    def approve_policy(self, collaboration_id: str, etag: str | None = None) -> CollaborationInfo:
        """Approve the policy revision with `etag` (default: the current one, as `get_collaboration` shows it)."""
        etag = etag or self.get_collaboration(collaboration_id).policy_etag
        request = cpb.ApprovePolicyRequest(name=_name(collaboration_id), etag=etag)
        return _info(self._call(self._collaborations.ApprovePolicy, request))

    # -- analytics and audit: the query methods are `QueryMethods`' (asking.py), the audit log's `AuditMethods'`
    # (auditing.py)
    # -- matching ----------------------------------------------------------------------------------------------------
    def match(
        self,
        collaboration_id: str,
        users: pd.DataFrame | str | Path,
        key: str,
        identifiers: Mapping[str, str],
        attributes: Sequence[str] = (),
        events: Mapping[str, pd.DataFrame | str | Path] | None = None,
        prehashed: Iterable[str] = (),
        wait_timeout: float = 3600.0,
        engine: ChunkExecutor | None = None,
        time_format: str | None = None,
    ) -> MatchSummary:
        """Match this member's `users` with the peer's, and upload attributes and events; resumable.

        `key` is a local column naming each user; it never leaves this machine. `identifiers` maps an identifier
        type (email, phone, device_id, custom) to its column; types in `prehashed` hold SHA-256 hex of the
        normalized identifier instead. `attributes` are users columns to upload; `events` are event tables, each
        with the `key` column. Tables are DataFrames or paths (CSV, or Parquet: a file or a directory), read by
        the engine. An event table's time column (the one the policy declares) may hold text, as a CSV gives it:
        it is parsed as ISO 8601 dates or date-times, or with `time_format` (strptime, e.g. "%d/%m/%Y %H:%M").
        `engine` runs the reading and the blinding (e.g.
        `cleanroom_client.ray_engine.RayEngine(address="auto")`); by default the client's executor (a process pool
        over the local cores). The caller keeps ownership of an engine it passes. Returns counts, never the
        intersection.
        """
        import pandas as pd

        from .matching import MatchRunner

        users_frame = self._engine(engine).read_table(users) if isinstance(users, (str, Path)) else users
        event_frames = {
            name: self._engine(engine).read_table(table) if isinstance(table, (str, Path)) else table
            for name, table in (events or {}).items()
        }
        plan = self._plan(users_frame, key, identifiers, attributes, event_frames, prehashed)
        self._warn_invalid_identifiers(users_frame, identifiers, set(prehashed))
        policy = parse_policy(self.get_collaboration(collaboration_id).policy_yaml)
        plan.events = {
            name: parse_time_column(frame, name, policy, time_format) if isinstance(frame, pd.DataFrame) else frame
            for name, frame in plan.events.items()
        }
        allowed = policy.identifiers
        refused = sorted(set(identifiers) - set(allowed))
        if refused:
            raise ValueError(
                f"the policy lets the join use {', '.join(allowed)}; drop {', '.join(refused)} from identifiers "
                "(each identifier type the join uses raises the noise of every query, so the policy names them)"
            )
        collaboration_id = _name(collaboration_id).removeprefix(COLLABORATIONS)
        state = self.collaboration_dir(collaboration_id)
        runner = MatchRunner(
            self._matching,
            self._metadata,
            _name(collaboration_id),
            state,
            self._engine(engine),
            progress=self.progress,
            wait_timeout=wait_timeout,
        )
        try:
            return runner.run(plan, state / "blinding.key")
        except grpc.RpcError as err:
            raise CleanRoomError.from_rpc(err) from None

    def refresh(
        self,
        collaboration_id: str,
        users: pd.DataFrame | str | Path | None = None,
        key: str = "key",
        identifiers: Mapping[str, str] | None = None,
        attributes: Sequence[str] = (),
        retire: Iterable[object] = (),
        events: Mapping[str, pd.DataFrame | str | Path] | None = None,
        prehashed: Iterable[str] = (),
        wait_timeout: float = 3600.0,
        engine: ChunkExecutor | None = None,
        time_format: str | None = None,
    ) -> RefreshSummary:
        """Refresh a matched collaboration: add new users, retire users, append event rows; resumable.

        `users` holds only the new users (their `key`, `identifiers` and `attributes` columns, as at the match);
        `retire` lists the keys of users to delete; `events` holds new event rows, each with the `key` column
        (of any current user, old or new). Only the new users' blinded points travel, and the peer double-blinds
        only those. The policy's `refresh` section must list each table that changes (`users` to add or retire).
        The server completes the period when both members have sent theirs (the peer's side may be empty), then
        every query reads the refreshed data. Call again with the same arguments to resume. Must run with the
        state directory that matched (it holds the blinding key and the row numbers).

        Once a refresh completed, a call with exactly the same input (compared by content: every value of the new
        users, retired keys and appended rows) returns its summary and sends nothing; any other input is a new
        period. A call with nothing to add, retire or append joins the open period, or opens the next for the peer
        to join. One refresh, retirement or cancellation of a collaboration at a time on a machine: another
        raises RefreshInProgressError at once.
        """
        from . import refresh as refresh_state

        policy = parse_policy(self.get_collaboration(collaboration_id).policy_yaml)
        if policy.refresh is None:
            raise ValueError(
                "the policy allows no refresh: propose a revision with a `refresh` section naming the tables that "
                "may change (docs/policy.md), and have every member approve it"
            )
        collaboration_id = _name(collaboration_id).removeprefix(COLLABORATIONS)
        state = self.collaboration_dir(collaboration_id)
        parent = _name(collaboration_id)
        with refresh_state.locked(state, parent):
            return self._refresh(
                parent,
                state,
                policy,
                engine,
                users,
                key,
                identifiers,
                attributes,
                retire,
                events,
                prehashed,
                wait_timeout,
                time_format,
            )

    def _refresh(
        self,
        parent: str,
        state: Path,
        policy: Policy,
        engine: ChunkExecutor | None,
        users: pd.DataFrame | str | Path | None,
        key: str,
        identifiers: Mapping[str, str] | None,
        attributes: Sequence[str],
        retire: Iterable[object],
        events: Mapping[str, pd.DataFrame | str | Path] | None,
        prehashed: Iterable[str],
        wait_timeout: float,
        time_format: str | None,
    ) -> RefreshSummary:
        """`refresh()` under the collaboration's lock."""
        import numpy as np
        import pandas as pd

        from . import refresh as refresh_state
        from .matching import PERIOD, RETIRED, MatchRunner, upload_of
        from .refresh import RefreshSummary

        saved = self._standing_refresh(parent, state)
        ledger = refresh_state.read_ledger(state)  # before reading the user's files: fails at once on another machine
        frame = self._engine(engine).read_table(users) if isinstance(users, (str, Path)) else users
        if frame is None:
            frame = pd.DataFrame({key: pd.Series([], dtype=str)})
        if identifiers is None:
            if len(frame):
                raise ValueError("identifiers: name the new users' identifier columns, e.g. {'email': 'email'}")
            identifiers = {policy.identifiers[0]: key}
        event_frames = {
            name: parse_time_column(
                self._engine(engine).read_table(table) if isinstance(table, (str, Path)) else table,
                name,
                policy,
                time_format,
            )
            for name, table in (events or {}).items()
        }
        plan = self._plan(frame, key, identifiers, attributes, event_frames, prehashed)
        if len(frame):
            self._warn_invalid_identifiers(frame, identifiers, set(prehashed))
        new_keys = plan.users[key].astype(str)
        retire_keys = sorted({str(k) for k in retire})
        users_digest = refresh_state.fingerprint(new_keys)
        sent = {"key": key} | {f"attribute:{a}": a for a in plan.attributes}
        sent |= {f"identifier:{t.value}{'+prehashed' * (t in plan.prehashed)}": c for t, c in plan.identifiers.items()}
        whole = refresh_state.content_fingerprint(plan.users, sent, retire_keys, event_frames)
        empty = not len(new_keys) and not retire_keys and not any(len(f) for f in event_frames.values())
        if saved and not saved.complete:
            if saved.users != users_digest:
                raise ValueError(
                    f"refresh period {saved.period} is in progress here with other new users; call refresh() again "
                    "with the same users to finish it (add the others in the next refresh)"
                )
            period = saved.period
            refresh_state.check_changes(ledger, new_keys, retire_keys, period)
        elif saved and not empty and saved.scheme == refresh_state.CONTENT_SCHEME and saved.whole == whole:
            period = saved.period  # done before (a repeated call): the calls below find every step complete
        elif (
            saved
            and not empty
            and saved.scheme == refresh_state.LEGACY_SCHEME
            and saved.whole == refresh_state.legacy_fingerprint(new_keys, retire_keys, event_frames)
        ) or (saved and not empty and saved.scheme == refresh_state.ORDERED_SCHEME):
            raise ValueError(
                f"refresh period {saved.period} was recorded by an older SDK, which compared event tables by row "
                "count, or by content in row order: it cannot tell whether this call repeats it. If it "
                f"does, there is nothing to do. If this is new data, delete {state / refresh_state.STATE_FILE} (it "
                "only records the last refresh; the row numbers are in rows.parquet) and call again"
            )
        else:
            refresh_state.check_changes(ledger, new_keys, retire_keys, -1)
            period = self._call(self._matching.OpenRefresh, mpb.OpenRefreshRequest(parent=parent)).period
        refresh_state.write_state(state, refresh_state.RefreshState(period, users_digest, whole, complete=False))
        ledger = refresh_state.assign_rows(ledger, new_keys, retire_keys, period)
        refresh_state.write_ledger(state, ledger)
        ids = ledger.set_index("key")["row_id"]
        plan.row_ids = ids.loc[list(new_keys)].to_numpy(dtype=np.int64)
        plan.row_offset = int((ledger[PERIOD] < period).sum())
        current = ledger[ledger[RETIRED].isna()]
        plan.known_ids = pd.Series(current["row_id"].to_numpy(), index=current["key"].to_numpy())
        runner = MatchRunner(
            self._matching,
            self._metadata,
            parent,
            state,
            self._engine(engine),
            self.progress,
            wait_timeout=wait_timeout,
            period=period,
        )
        retired = ids.loc[retire_keys].to_numpy(dtype=np.int64) if retire_keys else np.empty(0, dtype=np.int64)
        try:
            outcome = runner.run_refresh(plan, state / "blinding.key", retired)
        except grpc.RpcError as err:
            raise CleanRoomError.from_rpc(err) from None
        except InvalidArgumentError:
            points = upload_of(runner.status(), POINTS)
            if not (points and points.committed):  # refused before anything counted: forget the period here
                refresh_state.forget_period(state, period)
            raise
        refresh_state.write_state(state, refresh_state.RefreshState(period, users_digest, whole, complete=True))
        return RefreshSummary(
            collaboration=parent,
            period=period,
            new_rows=len(new_keys),
            retired=len(retire_keys),
            identifiers=outcome.identifiers,
            tables=outcome.tables,
            dropped_events=outcome.dropped_events,
            own_set_size=outcome.final.own_set_size,
            peer_set_size=outcome.final.peer_set_size,
        )

    def retire(self, collaboration_id: str, keys: Iterable[object]) -> int:
        """Retire users now, without the peer: they are deleted everywhere at once; returns the period that did it.

        Their keys, table rows and pairs go in every period, and they leave the audiences released to you. No
        refresh of this machine's may be in progress (then pass `retire=` to `refresh()`, or `cancel_refresh()`
        first); a period open on the server that this machine is not taking part in (the peer's) is cancelled by the
        retirement itself, so a deletion never waits on the peer. Needs the state
        directory that matched (it maps keys to row numbers) and a policy whose `refresh.tables` lists your users.
        """
        from . import refresh as refresh_state

        parent = _name(collaboration_id)
        state = self.collaboration_dir(parent.removeprefix(COLLABORATIONS))
        with refresh_state.locked(state, parent):
            return self._retire(parent, state, keys)

    def _retire(self, parent: str, state: Path, keys: Iterable[object]) -> int:
        """`retire()` under the collaboration's lock."""
        import numpy as np
        import pandas as pd

        from . import refresh as refresh_state

        saved = self._standing_refresh(parent, state)
        if saved and not saved.complete:
            raise ValueError(
                f"refresh period {saved.period} is in progress here: pass these keys as retire= to refresh(), "
                "or cancel_refresh() first"
            )
        ledger = refresh_state.read_ledger(state)
        retire_keys = sorted({str(k) for k in keys})
        if not retire_keys:
            raise ValueError("keys: name at least one user to retire")
        refresh_state.check_changes(ledger, pd.Series([], dtype=str), retire_keys, -1)
        rows = ledger.set_index("key")["row_id"].loc[retire_keys].to_numpy(dtype=np.int64)
        request = mpb.RetireUsersRequest(parent=parent, period=0, row_ids=rows.astype("<i8").tobytes())
        period = int(self._call(self._matching.RetireUsers, request).period)
        refresh_state.write_ledger(state, refresh_state.mark_retired(ledger, retire_keys, period))
        return period

    def _standing_refresh(self, parent: str, state: Path) -> refresh_state.RefreshState | None:
        """The last refresh started on this machine, after forgetting it here if it was cancelled on the server."""
        from . import refresh as refresh_state

        saved = refresh_state.read_state(state)
        if saved and not saved.complete and not self._period_exists(parent, saved.period):
            refresh_state.forget_period(state, saved.period)
            return None
        return saved

    def _period_exists(self, parent: str, period: int) -> bool:
        """Whether this member's refresh `period` still stands on the server: open, or complete with its points.

        False when it was cancelled, even if its number was used again since (by a retirement done at once).
        """
        from .matching import upload_of

        try:
            status = self._call(self._matching.GetMatchStatus, mpb.GetMatchStatusRequest(parent=parent, period=period))
        except InvalidArgumentError:
            return False
        points = upload_of(status, POINTS)
        return status.stage != mpb.MatchStatus.STAGE_MATCHED or bool(points and points.committed)

    def cancel_refresh(self, collaboration_id: str) -> int:
        """Cancel the open refresh period (yours or the peer's): everything sent in it is discarded; returns it.

        For a period the peer opened and never took part in. This machine forgets the period too, so the next
        `refresh()` starts a new one with the same or other data.
        """
        parent = _name(collaboration_id)
        status = self._call(self._matching.GetMatchStatus, mpb.GetMatchStatusRequest(parent=parent))
        from . import refresh as refresh_state  # once the server said there is a period to cancel

        if status.period == 0 or status.stage == mpb.MatchStatus.STAGE_MATCHED:
            raise ValueError(f"{parent} has no open refresh period to cancel")
        state = self.collaboration_dir(parent.removeprefix(COLLABORATIONS))
        with refresh_state.locked(state, parent):
            self._call(self._matching.CancelRefresh, mpb.CancelRefreshRequest(parent=parent, period=status.period))
            saved = refresh_state.read_state(state)
            if saved and saved.period == status.period and not saved.complete:
                refresh_state.forget_period(state, status.period)
        return int(status.period)

    def _warn_invalid_identifiers(self, users: object, identifiers: Mapping[str, str], prehashed: set[str]) -> None:
        """Warn (IdentifierQualityWarning) before anything is sent when an identifier column mostly fails to normalize.

        The warning names the likely cause (a phone region) and the fix. Checks a sample of a DataFrame's rows.
        """
        import pandas as pd

        if not isinstance(users, pd.DataFrame):
            return
        for id_type, column in identifiers.items():
            if id_type in prehashed or column not in users.columns:
                continue
            values = users[column].dropna().astype(str)
            sample = [v for v in values.head(INVALID_CHECK_SAMPLE * 2) if v.strip()][:INVALID_CHECK_SAMPLE]
            message = invalid_share_warning(self.normalizer, IdentifierType(id_type), column, sample)
            if message:
                warnings.warn(message, IdentifierQualityWarning, stacklevel=3)

    def _engine(self, engine: ChunkExecutor | None) -> ChunkExecutor:
        """The caller's engine, else the client's executor: started on first use, so a refused call starts none."""
        return engine or self._get_executor()

    def _get_executor(self) -> ChunkExecutor:
        from .blinding import default_executor

        if self._executor is None:
            self._executor = default_executor()
        return self._executor

    def _plan(
        self,
        users: pd.DataFrame,
        key: str,
        identifiers: Mapping[str, str],
        attributes: Sequence[str],
        events: Mapping[str, pd.DataFrame],
        prehashed: Iterable[str],
    ) -> MatchPlan:
        from .matching import MatchPlan, refuse_non_unicode

        if key not in users.columns:
            raise ValueError(f"key column {key!r} is not in the users table (columns: {list(users.columns)})")
        if users[key].isna().any() or not _all_distinct(users[key]):
            raise ValueError(f"key column {key!r} must be unique and never empty: it names each user locally")
        if not identifiers:
            raise ValueError("identifiers: name at least one, e.g. {'email': 'email_column'}")
        types = {IdentifierType.parse(t): col for t, col in identifiers.items()}
        for col in [*types.values(), *attributes]:
            if col not in users.columns:
                raise ValueError(f"column {col!r} is not in the users table (columns: {list(users.columns)})")
        if key in attributes:
            raise ValueError(f"the key column {key!r} never leaves this machine; do not list it in attributes")
        hashed = frozenset(IdentifierType.parse(t) for t in prehashed)
        if not hashed <= set(types):
            raise ValueError("prehashed names a type that is not in identifiers")
        refuse_non_unicode(users, [*types.values(), *attributes], "")
        for name, table in events.items():
            refuse_non_unicode(table, list(table.columns), f"table {name!r}, ")
        return MatchPlan(
            users=users.reset_index(drop=True),
            key=key,
            identifiers=types,
            prehashed=hashed,
            attributes=list(attributes),
            events=dict(events),
            normalizer=self.normalizer,
            chunk_rows=self.chunk_rows,
        )


def _all_distinct(keys: pd.Series) -> bool:
    """Whether no key repeats.

    Integer keys are sorted rather than hashed: at 10M users that takes 80 MB, not a hash table several times larger.
    """
    import numpy as np
    import pandas as pd

    if pd.api.types.is_integer_dtype(keys.dtype):
        values = np.sort(keys.to_numpy(dtype=np.int64))
        return not bool((values[1:] == values[:-1]).any())
    return bool(keys.is_unique)


def _name(collaboration_id: str) -> str:
    return collaboration_name(collaboration_id)
