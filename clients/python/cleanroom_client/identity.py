"""Identifiers: normalization per type, digests, and the message that is hashed to the curve.

Protocol v1 steps 1 and 2; protos/PROTOCOL.md section 1 is the specification and this module implements exactly
it. Normalization decides which records match, so it is deterministic, idempotent (normalizing a normalized
identifier returns it unchanged) and independent of the Unicode tables of any language runtime: trimming uses a
fixed list of code points and lower-casing maps ASCII A-Z only. A value is *missing* when it is absent or holds
only trimmed code points; a present value that cannot be normalized is *invalid*. Both are counted per type and
reported, never silently dropped and never fatal.
"""

from __future__ import annotations

import enum
import hashlib
import re
from dataclasses import dataclass
from typing import Final

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
    """An identifier that cannot be normalized for its type (or is missing: see `is_missing`)."""


#: The code points trimmed from both ends of an identifier: Unicode's White_Space property (stable since Unicode
#: 6.3) plus U+FEFF (byte order mark). Not U+001C-U+001F (which Python's str.strip() removes) nor U+180E / U+200B.
TRIMMED: Final = "".join(
    chr(c)
    for c in (
        *range(0x09, 0x0E),
        0x20,
        0x85,
        0xA0,
        0x1680,
        *range(0x2000, 0x200B),
        0x2028,
        0x2029,
        0x202F,
        0x205F,
        0x3000,
        0xFEFF,
    )
)
_ASCII_LOWER: Final = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
#: The libphonenumber metadata release phone numbers are validated with (the `phonenumbers` port's version).
PHONE_METADATA_VERSION: Final = phonenumbers.__version__

# PROTOCOL.md section 1.3, after trimming and ASCII lower-casing: dot-atom local part @ two or more DNS labels,
# the last of which starts with a letter and has at least two characters.
_ATEXT = r"[a-z0-9!#$%&'*+/=?^_`{|}~-]"
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_TLD = r"[a-z](?:[a-z0-9-]{0,61}[a-z0-9])"
_EMAIL = re.compile(rf"(?P<local>{_ATEXT}+(?:\.{_ATEXT}+)*)@(?:{_LABEL}\.)+{_TLD}", re.ASCII)
MAX_LOCAL, MAX_EMAIL = 64, 254
_HEX64 = re.compile(r"[0-9a-f]{64}", re.ASCII)


def trim(raw: str) -> str:
    """`raw` without leading and trailing TRIMMED code points (nothing else is removed)."""
    return raw.strip(TRIMMED)


def ascii_lower(text: str) -> str:
    """`text` with A-Z mapped to a-z; every other code point unchanged."""
    return text.translate(_ASCII_LOWER)


def is_missing(raw: str | None) -> bool:
    """Whether a value counts as missing: absent, empty, or only TRIMMED code points (for every type)."""
    return raw is None or not trim(raw)


def is_email(value: str) -> bool:
    """Whether an already trimmed and lower-cased `value` matches the email grammar of PROTOCOL.md."""
    match = _EMAIL.fullmatch(value)
    return match is not None and len(match["local"]) <= MAX_LOCAL and len(value) <= MAX_EMAIL


@dataclass(frozen=True)
class Normalizer:
    """Normalizes identifiers; `default_region` (ISO 3166 alpha-2) applies to phone numbers without a `+`."""

    default_region: str = "US"

    def __post_init__(self) -> None:
        if self.default_region.upper() not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"unknown phone region {self.default_region!r}; use an ISO 3166 code such as 'US' or 'CN'")

    def normalize(self, id_type: IdentifierType, raw: str) -> str:
        """The normalized form of `raw`; InvalidIdentifierError when it is missing or invalid."""
        if is_missing(raw):
            raise InvalidIdentifierError("missing")
        if id_type is IdentifierType.CUSTOM:
            return raw
        value = trim(raw)
        if id_type is IdentifierType.PHONE:
            return self._phone(value)
        value = ascii_lower(value)
        if id_type is IdentifierType.EMAIL and not is_email(value):
            raise InvalidIdentifierError("not an email address (see PROTOCOL.md section 1.3)")
        return value

    def _phone(self, value: str) -> str:
        try:
            number = phonenumbers.parse(value, self.default_region.upper())
        except phonenumbers.NumberParseException as exc:
            raise InvalidIdentifierError(f"not a phone number: {exc}") from None
        if not phonenumbers.is_valid_number(number):
            raise InvalidIdentifierError("not a valid phone number")
        return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


#: Share of a column's sampled values that may fail to normalize before the member is warned: above it, the match
#: silently loses people (a phone column read under the wrong region lost 29% of a real match).
INVALID_WARNING_SHARE = 0.2
#: Values sampled from each identifier column for that check (the first ones that are not empty).
INVALID_CHECK_SAMPLE = 2000
#: Regions tried to name the likely one when a phone column mostly fails under the default region.
LIKELY_PHONE_REGIONS = ("CN", "HK", "TW", "SG", "JP", "KR", "IN", "ID", "US", "GB", "DE", "FR", "BR", "AU")


class IdentifierQualityWarning(UserWarning):
    """Many values of an identifier column cannot be normalized: those people cannot match."""


def invalid_share_warning(
    normalizer: Normalizer, id_type: IdentifierType, column: str, values: list[str]
) -> str | None:
    """A one-line warning, with its likely cause and fix, when too many of `values` fail to normalize.

    `values` is a sample of the non-empty values of `column`; None when at most `INVALID_WARNING_SHARE` fail.
    """
    if not values or id_type is IdentifierType.CUSTOM:
        return None

    def failing(n: Normalizer) -> int:
        bad = 0
        for value in values:
            try:
                n.normalize(id_type, value)
            except InvalidIdentifierError:
                bad += 1
        return bad

    share = failing(normalizer) / len(values)
    if share <= INVALID_WARNING_SHARE:
        return None
    message = (
        f"{column} ({id_type.value}): {share:.0%} of {len(values)} sampled values are not valid {id_type.value}s "
        "and cannot match"
    )
    if id_type is IdentifierType.PHONE:
        region = normalizer.default_region.upper()
        scores = {r: failing(Normalizer(r)) / len(values) for r in LIKELY_PHONE_REGIONS if r != region}
        best = min(scores, key=lambda r: scores[r])
        if scores[best] < share / 2:
            return (
                f"{message} under phone region {region}; {1 - scores[best]:.0%} are valid under {best} — numbers "
                f"without a country code are read in the region you pass: use --region {best} "
                f"(SDK: CleanRoomClient(..., default_region={best!r}))"
            )
        return f"{message} under phone region {region}: check the column and the region (--region)"
    return f"{message}: check that the column holds {id_type.value}s"


def digest(normalized: str) -> bytes:
    """Step 2: SHA-256 of the normalized identifier's UTF-8 bytes."""
    return hashlib.sha256(normalized.encode("utf-8")).digest()


def parse_prehashed(value: str) -> bytes:
    """A pre-hashed identifier: 64 hex digits of SHA-256(normalized), either case, surrounding TRIMMED ignored."""
    text = ascii_lower(trim(value))
    if not _HEX64.fullmatch(text):
        raise InvalidIdentifierError("not a SHA-256 hex digest (64 hex characters)")
    return bytes.fromhex(text)


def curve_message(id_type: IdentifierType, digest_bytes: bytes) -> bytes:
    """Step 3's msg: id_type ‖ 0x00 ‖ digest, so equal digests of different types never collide."""
    return id_type.value.encode("ascii") + b"\x00" + digest_bytes
