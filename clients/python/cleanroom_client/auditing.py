"""The audit log and the transparency log from the SDK: what members and auditors read, verify and compare.

`AuditMethods` is a base of `CleanRoomClient`: listing, verifying and exporting a chain (auditors), the signed tree
head a member or auditor remembers and compares with another's, acknowledging a history incident, and checking a
member's own spend against the receipts it kept (`cleanroom_client.transparency`).
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from .asking import QueryMethods
from .errors import CleanRoomError
from .protocol import audit_pb2 as apb
from .protocol import audit_pb2_grpc as apb_grpc
from .protocol import collaboration_name
from .transparency import HistoryRewrittenError, TreeHead

if TYPE_CHECKING:
    import pandas as pd

    from .audit_facts import AuditFacts
    from .client import CollaborationInfo


class AuditMethods(QueryMethods):
    """The audit side of `CleanRoomClient`, over what it sets up (the audit stub, the token, the witness)."""

    _audit: apb_grpc.AuditServiceStub

    if TYPE_CHECKING:

        def get_collaboration(self, collaboration_id: str) -> CollaborationInfo:
            """The collaboration as the server shows it (`CleanRoomClient.get_collaboration`)."""

    def audit_log(self, collaboration_id: str = "", *, principal: str = "", action: str = "") -> pd.DataFrame:
        """A collaboration's audit chain (auditors), or the server's own chain with no id; one row per entry."""
        rows = []
        token = ""
        parent = collaboration_name(collaboration_id) if collaboration_id else ""
        while True:
            page = self._call(
                self._audit.ListAuditEntries,
                apb.ListAuditEntriesRequest(
                    collaboration=parent, principal=principal, action=action, page_size=1000, page_token=token
                ),
            )
            rows += [
                {
                    "sequence": e.sequence,
                    "time": e.time.ToDatetime(),
                    "principal": e.principal,
                    "action": e.action,
                    "parameters": e.parameters_json,
                    "epsilon": e.epsilon,
                    "delta": e.delta,
                    "response_sha256": e.response_sha256,
                    "hash": e.hash,
                }
                for e in page.entries
            ]
            token = page.next_page_token
            if not token:
                break
        import pandas as pd  # once there is an answer to hold

        return pd.DataFrame(rows)

    def verify_audit_log(self, collaboration_id: str = "") -> dict[str, object]:
        """Ask the server to verify a whole chain: valid, entries checked, and the first broken entry if any.

        First the chain's tree head is checked to extend the last one this client saw (HistoryRewrittenError if it
        does not: the server's own verification cannot see a rollback of its whole disk).
        """
        self._witness.head(collaboration_id)
        parent = collaboration_name(collaboration_id) if collaboration_id else ""
        r = self._call(self._audit.VerifyAuditLog, apb.VerifyAuditLogRequest(collaboration=parent))
        return {
            "valid": r.valid,
            "entries_checked": r.entries_checked,
            "first_invalid_sequence": r.first_invalid_sequence,
            "reason": r.reason,
            "head": {
                "collaboration": r.head.collaboration,
                "sequence": r.head.sequence,
                "hash": r.head.hash,
                "signature": r.head.signature.hex(),
            }
            if r.HasField("head")
            else None,
        }

    def export_audit_log(self, path: str | Path, collaboration_id: str = "") -> Path:
        """Write a chain as JSON Lines to `path`, for offline verification (`cleanroom audit verify`)."""
        parent = collaboration_name(collaboration_id) if collaboration_id else ""
        out = Path(path)
        try:
            with out.open("wb") as f:
                for chunk in self._audit.ExportAuditLog(
                    apb.ExportAuditLogRequest(collaboration=parent), metadata=self._metadata
                ):
                    f.write(chunk.jsonl)
        except grpc.RpcError as err:
            raise CleanRoomError.from_rpc(err) from None
        return out

    def audit_facts(self, collaboration_id: str, heads: Sequence[tuple[str, TreeHead]] = ()) -> AuditFacts:
        """The auditor's facts of a collaboration (`cleanroom_client.audit_facts`): what `audit-report` draws.

        The chain is exported and verified here with the server key this client pinned, exactly as an offline
        auditor verifies a file; the head this client remembered must be extended by it, the server's head now is
        checked against that memory (a rollback or fork is reported in the facts, not raised), and `heads` other
        members exported are compared with the export. The caps come from the collaboration's current policy.
        """
        from .audit_facts import HeadCheck
        from .audit_sources import facts_from_export

        key = self._witness.memory.key
        remembered = self._witness.memory.head(collaboration_id)
        extra: list[HeadCheck] = []
        try:
            # The server's head now extends this client's memory; it is also compared with the export below (as
            # another member's head is), so an export of another history than the head just shown is caught.
            heads = [("server", self._witness.head(collaboration_id)), *heads]
        except HistoryRewrittenError as exc:
            extra = [HeadCheck("server", exc.shown.size if exc.shown else 0, False, str(exc))]
        policy = self.get_collaboration(collaboration_id).policy_yaml
        with tempfile.TemporaryDirectory() as tmp:
            text = self.export_audit_log(Path(tmp) / "audit.jsonl", collaboration_id).read_text(encoding="utf-8")
        from cryptography.hazmat.primitives import serialization

        pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
        return facts_from_export(text, pem, remembered, heads, policy, extra)

    def audit_head(self, collaboration_id: str = "") -> dict[str, object]:
        """The chain's signed tree head now, checked to extend the last one this client saw (and remembered).

        Write it to a file and give it to the other members: `compare_audit_head` on their side proves both of you
        were shown one history. HistoryRewrittenError when the server's log does not extend what you saw.
        """
        return self._witness.head(collaboration_id).to_dict()

    def compare_audit_head(self, collaboration_id: str, other: Mapping[str, object]) -> dict[str, object]:
        """Check another member's exported head (`audit_head`) against yours: HistoryRewrittenError on a fork."""
        head = TreeHead.from_dict(dict(other))
        mine = self._witness.compare(collaboration_id, head)
        return {"consistent": True, "mine": mine.to_dict(), "theirs": head.to_dict()}

    def acknowledge_history_rewrite(self, collaboration_id: str) -> dict[str, object] | None:
        """Accept, after looking into it, a history incident of a collaboration, so the SDK serves it again.

        The head the server showed becomes the remembered one; the incident is kept in the state file with both
        heads. Returns the incident acknowledged (None if there was none).
        """
        return self._witness.memory.acknowledge(collaboration_id)

    def check_budget(self, collaboration_id: str) -> pd.DataFrame:
        """Recompute your own spend from the receipts you kept and compare it with what the server reports.

        Every receipt's entry must still be in the log (inclusion proofs against the current head), and the server's
        spent ε and δ for you must be at least what your receipts charged since the budget's period began: a lower
        figure means charged entries were removed (HistoryRewrittenError).
        """
        import pandas as pd

        head, kept = self._witness.check_receipts(collaboration_id)
        frame = self.budget(collaboration_id)
        me = {str(r["entry"]["principal"]) for r in kept}
        since_of: dict[str, int] = frame.attrs["since_sequence"]
        rows = []
        for record in frame.to_dict("records"):
            member = str(record["member"])
            if member not in me:
                continue
            since = int(since_of.get(member, 0))
            mine = [
                r["entry"] for r in kept if r["entry"]["principal"] == member and int(r["entry"]["sequence"]) > since
            ]
            eps = sum(float(e["epsilon"]) for e in mine)
            dlt = sum(float(e["delta"]) for e in mine)
            server_eps, server_dlt = float(record["spent"]), float(record["delta_spent"])
            ok = server_eps + 1e-9 >= eps and server_dlt + 1e-15 >= dlt
            rows.append(
                {
                    "member": member,
                    "server_spent": server_eps,
                    "receipts_spent": eps,
                    "server_delta_spent": server_dlt,
                    "receipts_delta_spent": dlt,
                    "receipts": len(mine),
                    "log_size": head.size,
                    "consistent": ok,
                }
            )
            if not ok:
                reason = (
                    f"the server reports {server_eps:g} ε and {server_dlt:g} δ spent by {member} but the receipts "
                    f"held since entry {since} charge {eps:g} ε and {dlt:g} δ: charged entries were removed"
                )
                self._witness.memory.record_incident(collaboration_id, reason, head)
        return pd.DataFrame(rows)

    def server_public_key(self) -> str:
        """The server's Ed25519 audit key, PEM."""
        return self._call(self._audit.GetServerPublicKey, apb.GetServerPublicKeyRequest()).pem
