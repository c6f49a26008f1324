"""The signed, hash-chained audit log: one chain per collaboration, and one for the server's own actions."""

from .chain import AuditEntry, VerifyResult, canonical_json, verify_entries
from .keys import load_or_create_signing_key
from .log import AuditLog

__all__ = ["AuditEntry", "AuditLog", "VerifyResult", "canonical_json", "load_or_create_signing_key", "verify_entries"]
