"""The audit chain's entries, hashes and offline verification, as the server uses them.

They live in the SDK (`cleanroom_client.audit_chain`) because an auditor verifies an export with the SDK alone
(`cleanroom-client audit-report --from FILE`); the server writes and checks its chains with the very same code.
"""

from cleanroom_client.audit_chain import (
    GENESIS,
    HEAD_KIND,
    NON_FINITE,
    AuditEntry,
    SignedHead,
    VerifyResult,
    canonical_json,
    check_tree,
    json_safe,
    parse_export,
    sha256_hex,
    verify_entries,
    verify_export,
)

__all__ = [
    "GENESIS",
    "HEAD_KIND",
    "NON_FINITE",
    "AuditEntry",
    "SignedHead",
    "VerifyResult",
    "canonical_json",
    "check_tree",
    "json_safe",
    "parse_export",
    "sha256_hex",
    "verify_entries",
    "verify_export",
]
