"""Identifiers: normalization per type, digests, and the message that is hashed to the curve.

Protocol v1 steps 1 and 2 (see protos/PROTOCOL.md). Normalization decides which records match, so it is
deterministic and idempotent: normalizing a normalized identifier returns it unchanged. An identifier that cannot
be normalized is *invalid*: it is counted per type and reported, never silently dropped and never fatal.
"""

from __future__ import annotations

import enum
import hashlib
import re
from dataclasses import dataclass

import phonenumbers


class IdentifierType(enum.Enum):
    """Identifier types in the join's fixed priority order: earlier types win when rows disagree."""

    EMAIL = "email"
    PHONE = "phone"
    DEVICE_ID = "device_id"
    CUSTOM = "custom"

    @property
    def priority(self) -> int:
        """Position in the join's priority order (0 is first)."""
        return list(IdentifierType).index(self)

    @classmethod
    def parse(cls, name: str) -> IdentifierType:
        """The type named `name`, with a message listing the known types otherwise."""
        try:
            return cls(name)
        except ValueError:
            known = ", ".join(t.value for t in cls)
            raise ValueError(f"unknown identifier type {name!r}; known types: {known}") from None


class InvalidIdentifierError(ValueError):
    """An identifier that cannot be normalized for its type."""


_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Normalizer:
    """Normalizes identifiers; `default_region` (ISO 3166 alpha-2) applies to phone numbers without a country code."""

    default_region: str = "US"

    def __post_init__(self) -> None:
        if self.default_region.upper() not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"unknown phone region {self.default_region!r}; use an ISO 3166 code such as 'US' or 'CN'")

    def normalize(self, id_type: IdentifierType, raw: str) -> str:
        """The normalized form of `raw`, or InvalidIdentifierError."""
        if id_type is IdentifierType.EMAIL:
            value = raw.strip().lower()
            if not _EMAIL.match(value):
                raise InvalidIdentifierError("not an email address")
            return value
        if id_type is IdentifierType.PHONE:
            return self._phone(raw)
        if id_type is IdentifierType.DEVICE_ID:
            value = raw.strip().lower()
            if not value:
                raise InvalidIdentifierError("empty device id")
            return value
        if not raw:
            raise InvalidIdentifierError("empty custom id")
        return raw

    def _phone(self, raw: str) -> str:
        try:
            number = phonenumbers.parse(raw.strip(), self.default_region.upper())
        except phonenumbers.NumberParseException as exc:
            raise InvalidIdentifierError(f"not a phone number: {exc}") from None
        if not phonenumbers.is_valid_number(number):
            raise InvalidIdentifierError("not a valid phone number")
        return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def digest(normalized: str) -> bytes:
    """Step 2: SHA-256 of the normalized identifier's UTF-8 bytes."""
    return hashlib.sha256(normalized.encode("utf-8")).digest()


def parse_prehashed(value: str) -> bytes:
    """A pre-hashed identifier: SHA-256 hex of the normalized identifier (case and surrounding space ignored)."""
    text = value.strip().lower()
    if not _HEX64.match(text):
        raise InvalidIdentifierError("not a SHA-256 hex digest (64 hex characters)")
    return bytes.fromhex(text)


def curve_message(id_type: IdentifierType, digest_bytes: bytes) -> bytes:
    """Step 3's msg: id_type ‖ 0x00 ‖ digest, so equal digests of different types never collide."""
    return id_type.value.encode("ascii") + b"\x00" + digest_bytes
