"""Where an auditor's facts come from: an export file and the server's public key, verified here first.

Online (`AuditMethods.audit_facts`) the SDK exports the chain over the wire and reads that export exactly as an
offline auditor reads a file, with the key this client pinned; so both paths verify the same bytes with the same
code (`audit_chain.verify_export`). The heads an auditor holds are compared with the export's entries: the one it
remembers (`--remember`, or the SDK's own memory online) and any head another member exported
(`cleanroom-client audit head --to FILE`). A head is consistent when the first `size` entries of the export have its
Merkle root; a head larger than the export cannot be judged from it and says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from . import merkle
from .audit_chain import AuditEntry, parse_export, verify_export
from .audit_facts import AuditFacts, HeadCheck, Verification, read_facts
from .policy import parse_policy
from .transparency import TreeHead, leaf_data


def public_key_of(pem: str) -> Ed25519PublicKey:
    """The server's Ed25519 audit key from its PEM; ValueError when it is not one."""
    key = load_pem_public_key(pem.encode())
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(
            "the public key is not the server's Ed25519 audit key (cleanroom-client export-audit-log "
            "--public-key FILE saves it)"
        )
    return key


def _nodes(entries: Sequence[AuditEntry]) -> merkle.MerkleNodes:
    nodes = merkle.MerkleNodes()
    for e in entries:
        nodes.append(merkle.leaf_hash(leaf_data(e.hash, e.signature)))
    return nodes


def _signed_before(head: TreeHead, export_tree: TreeHead) -> bool:
    """Whether `head` was signed before the export's tree head (both times signed by the server)."""
    try:
        return datetime.fromisoformat(head.time) < datetime.fromisoformat(export_tree.time)
    except (TypeError, ValueError):  # a time that is no time (the signature check has already passed): not judged
        return False


def check_head(
    source: str,
    head: TreeHead,
    nodes: merkle.MerkleNodes,
    key: Ed25519PublicKey,
    collaboration: str = "",
    export_tree: TreeHead | None = None,
) -> HeadCheck:
    """Whether `head` lies on the history of the export whose leaves are `nodes` (see the module's docstring).

    A head of another collaboration (`collaboration` is the export's) says nothing about this one: not judged. A
    head larger than the export is newer, unless the server signed it before the export's own tree head
    (`export_tree`): then the log shrank between the two, which the server's own signatures prove.
    """
    if not head.is_signed_by(key):
        return HeadCheck(source, head.size, False, "not signed by this server's key")
    if collaboration and head.collaboration != collaboration:
        return HeadCheck(
            source, head.size, None, f"a head of collaboration {head.collaboration!r}, not of {collaboration!r}"
        )
    if head.size > nodes.size:
        if export_tree is not None and _signed_before(head, export_tree):
            return HeadCheck(
                source,
                head.size,
                False,
                f"the log shrank: the server signed {head.size} entries at {head.time}, then this export of "
                f"{nodes.size} at {export_tree.time} (entries were cut, or the log rolled back)",
            )
        return HeadCheck(source, head.size, None, f"newer than this export ({nodes.size} entries): export again")
    if nodes.root(head.size) != head.root:
        return HeadCheck(source, head.size, False, "a different history: the log was rewritten, or forked")
    return HeadCheck(source, head.size, True, "the export extends it")


def facts_from_export(
    text: str,
    public_key_pem: str,
    remembered: TreeHead | None = None,
    others: Sequence[tuple[str, TreeHead]] = (),
    policy_text: str = "",
    extra: Sequence[HeadCheck] = (),
) -> AuditFacts:
    """Verify an export, then read its facts; a broken export is still read, its rows after the break unverified.

    `others` are (who, head) pairs another member exported; `extra` are checks made elsewhere (online: the
    server's head now against this client's memory). `policy_text` is the policy (YAML) the caps are read from.
    """
    key = public_key_of(public_key_pem)
    entries, head, _ = parse_export(text)
    result = verify_export(text, key, remembered)
    nodes = _nodes(entries)
    collaboration = head.collaboration if head else (entries[0].collaboration if entries else "")
    tree = head.tree if head is not None else None
    signed = tree if tree is not None and tree.is_signed_by(key) else None
    checks = list(extra)
    if remembered is not None:
        checks.append(check_head("remembered", remembered, nodes, key, collaboration, signed))
    checks += [check_head(who, h, nodes, key, collaboration, signed) for who, h in others]
    verification = Verification(
        valid=result.valid,
        checked=result.entries_checked,
        first_invalid=result.first_invalid_sequence,
        reason=result.reason,
        head_sequence=head.sequence if head else 0,
        head_hash=head.hash if head else "",
        tree_size=tree.size if tree else 0,
        tree_root=tree.root.hex() if tree else "",
        heads=tuple(checks),
    )
    policy = parse_policy(policy_text) if policy_text else None
    try:
        return read_facts(collaboration, entries, verification, policy, policy_text)
    except Exception:  # whatever a tampered entry holds, the page must still say where the chain broke
        if verification.valid:
            raise
    # An entry after the break is not the server's: it may hold anything (a time that is no time, a list where a
    # number belongs). Its failure is what the page must show, so the rows are read up to the break only.
    kept = entries[: max(verification.first_invalid - 1, 0)]
    shown = replace(
        verification,
        reason=f"{verification.reason}; entries from #{verification.first_invalid} on are malformed and not shown",
    )
    return read_facts(collaboration, kept, shown, policy, policy_text)
