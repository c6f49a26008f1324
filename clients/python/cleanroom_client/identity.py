"""Identifiers: normalization per type, digests, and the message that is hashed to the curve.

Protocol v1 steps 1 and 2; protos/PROTOCOL.md section 1 is the specification and this module implements exactly
it. Normalization decides which records match, so it is deterministic and idempotent (normalizing a normalized
identifier returns it unchanged): trimming uses a fixed list of code points and lower-casing maps ASCII A-Z only.
Internationalized email addresses (RFC 6531) are the one place Unicode tables enter: the local part is put in NFC
(stable across Unicode versions for assigned code points) and a non-ASCII domain is converted to A-labels by UTS #46
(the pinned `idna` package). A value is *missing* when it is absent or holds only trimmed code points; a present
value that cannot be normalized is *invalid*, with a reason (`InvalidIdentifierError`'s message, one of a few fixed
texts). Both are counted per type and reported, never silently dropped and never fatal.
"""

from __future__ import annotations

import enum
import hashlib
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa


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

# PROTOCOL.md section 1.3, after normalizing: a dot-atom local part whose atoms may hold any non-ASCII code point
# (RFC 6532's UTF8-non-ascii, less the categories in _BANNED_CATEGORIES) @ two or more ASCII DNS labels, the last of
# which starts with a letter and has at least two characters.
_ATEXT_ASCII = r"a-z0-9!#$%&'*+/=?^_`{|}~"  # RFC 5322's atext after lower-casing, less "-" (last in each class)
_ATEXT = rf"[{_ATEXT_ASCII}\x80-\U0010ffff-]"
_LOCAL = re.compile(rf"{_ATEXT}+(?:\.{_ATEXT}+)*")
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_TLD = r"[a-z](?:[a-z0-9-]{0,61}[a-z0-9])"
_DOMAIN_PATTERN = rf"(?:{_LABEL}\.)+{_TLD}"
_DOMAIN = re.compile(_DOMAIN_PATTERN, re.ASCII)
#: The same grammar for an all-ASCII address, whole, in RE2's syntax (Arrow's regex kernels; `$` is the text's end).
_ASCII_EMAIL_RE2 = rf"^[{_ATEXT_ASCII}-]+(?:\.[{_ATEXT_ASCII}-]+)*@{_DOMAIN_PATTERN}$"
#: The TRIMMED code points an all-ASCII value can hold (tab, line feed, vertical tab, form feed, return, space).
_ASCII_TRIMMED: Final = "".join(c for c in TRIMMED if c.isascii())
#: Limits in UTF-8 bytes (RFC 5321 counts octets; for an ASCII address, characters).
MAX_LOCAL, MAX_EMAIL = 64, 254
#: The two limits for an ASCII address, in RE2 (one character a byte): at most MAX_LOCAL before its one @, in all
#: at most MAX_EMAIL.
_ASCII_LOCAL_LIMIT_RE2 = rf"^[^@]{{1,{MAX_LOCAL}}}@"
_ASCII_EMAIL_LIMIT_RE2 = rf"^(?s:.){{1,{MAX_EMAIL}}}$"
#: General categories a non-ASCII code point of a local part may not have: controls, format characters,
#: surrogates, private use, unassigned, and separators (spaces, line and paragraph separators).
_BANNED_CATEGORIES: Final = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zs", "Zl", "Zp"})
#: The Unicode version of the tables NFC and the categories are read from (Python's `unicodedata`).
UNICODE_VERSION: Final = unicodedata.unidata_version


# `phonenumbers` and `idna` load where a phone number or a non-ASCII domain is normalized: a blinding worker that
# only sees ASCII emails never pays their import (part of every worker's start-up otherwise).
def phone_metadata_version() -> str:
    """The libphonenumber metadata release phone numbers are validated with (the `phonenumbers` port's version)."""
    import phonenumbers

    return str(phonenumbers.__version__)


def idna_version() -> str:
    """The `idna` release whose UTS #46 tables convert internationalized domains (pinned: they decide who matches)."""
    import idna

    return str(idna.__version__)


#: Why an email address is invalid: the reasons InvalidIdentifierError carries for the email type.
NO_AT = "not an email address: no @"
BAD_LOCAL = "not an email address: a space, control or other character not allowed before the @, or a stray dot"
LONG_LOCAL = f"not an email address: more than {MAX_LOCAL} bytes (UTF-8) before the @"
BAD_IDN = "not an email address: the domain is not a valid internationalized domain name (IDNA2008)"
BAD_DOMAIN = "not an email address: the domain is not a host name (dot-separated letters, digits, inner hyphens)"
LONG_EMAIL = f"not an email address: longer than {MAX_EMAIL} bytes (UTF-8)"
_HEX64 = re.compile(r"[0-9a-f]{64}", re.ASCII)


def trim(raw: str) -> str:
    """`raw` without leading and trailing TRIMMED code points (nothing else is removed)."""
    return raw.strip(TRIMMED)


def ascii_lower(text: str) -> str:
    """`text` with A-Z mapped to a-z; every other code point unchanged."""
    return text.translate(_ASCII_LOWER)


def redact(value: str) -> str:
    """An invalid value as reports show it: its first character and its length, never more (`张… (11 characters)`).

    Enough to find the rows in one's own data (and see the kind of problem), too little to leak an identifier.
    """
    text = trim(value)
    return f"{text[:1]}… ({len(text)} characters)"


def is_missing(raw: str | None) -> bool:
    """Whether a value counts as missing: absent, empty, or only TRIMMED code points (for every type)."""
    return raw is None or not trim(raw)


def is_email(value: str) -> bool:
    """Whether an already normalized `value` matches the email grammar of PROTOCOL.md section 1.3."""
    return email_problem(value) is None


def email_problem(value: str) -> str | None:
    """Why a normalized address breaks the grammar of PROTOCOL.md section 1.3 (one of the reasons above), or None."""
    local, at, domain = value.rpartition("@")
    if not at:
        return NO_AT
    if not _LOCAL.fullmatch(local) or any(
        not c.isascii() and unicodedata.category(c) in _BANNED_CATEGORIES for c in local
    ):
        return BAD_LOCAL
    if len(local.encode("utf-8")) > MAX_LOCAL:
        return LONG_LOCAL
    if not _DOMAIN.fullmatch(domain):
        return BAD_DOMAIN
    if len(value.encode("utf-8")) > MAX_EMAIL:
        return LONG_EMAIL
    return None


def normalize_email(value: str) -> str:
    """A trimmed address in its normalized form (PROTOCOL.md section 1.3); InvalidIdentifierError with the reason.

    The local part: NFC, ASCII lower-casing, NFC again (lower-casing can let a letter compose with a following
    mark: W + ring stays two code points, w + ring is U+1E98), so canonically equivalent inputs give one form and
    normalizing twice changes nothing. The domain: ASCII lower-casing when it is ASCII; otherwise UTS #46 to
    A-labels (`xn--...`), which also maps full-width letters and the ideographic full stop.
    """
    local, at, domain = value.rpartition("@")
    if not at:
        raise InvalidIdentifierError(NO_AT)
    if not local.isascii():
        if any(0xD800 <= ord(c) <= 0xDFFF for c in local):  # not text: cannot be put in NFC nor in UTF-8
            raise InvalidIdentifierError(BAD_LOCAL)
        local = unicodedata.normalize("NFC", ascii_lower(unicodedata.normalize("NFC", local)))
    else:
        local = ascii_lower(local)
    if domain.isascii():
        domain = ascii_lower(domain)
    else:
        import idna

        try:
            domain = idna.encode(domain, uts46=True, std3_rules=True, transitional=False).decode("ascii")
        except (UnicodeError, ValueError):  # idna.IDNAError is a UnicodeError
            raise InvalidIdentifierError(BAD_IDN) from None
    normalized = f"{local}@{domain}"
    problem = email_problem(normalized)
    if problem:
        raise InvalidIdentifierError(problem)
    return normalized


def normalize_ascii_emails(values: pa.StringArray) -> tuple[np.ndarray, pa.BinaryArray, pa.StringArray]:
    """`Normalizer.normalize` for a chunk of the common emails: which values it takes, their normal forms, the rest.

    Returns a boolean mask over `values`; for the rows it marks, in order, the UTF-8 bytes of the normalized address;
    and the values of the rows it does not mark, in order. All computed with Arrow's string kernels for the whole
    chunk: ASCII trim of TRIMMED, ASCII lower-casing, and the grammar of PROTOCOL.md section 1.3 as RE2 expressions
    (the structure, the local part's and the address's byte limits). It marks exactly the values that are ASCII and
    valid; for those, and since an ASCII address needs neither NFC nor IDNA, the bytes are those of
    `Normalizer().normalize(IdentifierType.EMAIL, value)` (a differential property test holds the two paths equal).
    Every other value (missing, invalid, non-ASCII) is left for `Normalizer.normalize`, which gives the reason or
    the Unicode form.

    No Python scalar reaches Arrow and nothing converts to numpy through Arrow: pyarrow imports pandas for either
    (0.15 CPU-s and 38 MB in a blinding worker that otherwise never loads it).
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    lowered = pc.ascii_lower(pc.ascii_trim(values, characters=_ASCII_TRIMMED))
    ok = pc.match_substring_regex(lowered, _ASCII_EMAIL_RE2)  # only ASCII matches it, and ASCII trim left no other
    ok = pc.and_(ok, pc.match_substring_regex(lowered, _ASCII_LOCAL_LIMIT_RE2))
    ok = pc.and_(ok, pc.match_substring_regex(lowered, _ASCII_EMAIL_LIMIT_RE2))
    ok = pc.and_kleene(pc.is_valid(values), ok)  # a missing value (null) is unmarked, not null
    as_bytes = pc.cast(ok, pa.uint8())
    mask = np.frombuffer(as_bytes.buffers()[1], dtype=np.uint8, count=len(ok), offset=as_bytes.offset).astype(bool)
    return mask, pc.cast(lowered.filter(ok), pa.binary()), values.filter(pc.invert(ok))


@dataclass(frozen=True)
class Normalizer:
    """Normalizes identifiers; `default_region` (ISO 3166 alpha-2) applies to phone numbers without a `+`."""

    default_region: str = "US"

    def __post_init__(self) -> None:
        import phonenumbers

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
        if id_type is IdentifierType.EMAIL:
            return normalize_email(value)
        return ascii_lower(value)

    def _phone(self, value: str) -> str:
        import phonenumbers

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


def curve_messages(id_type: IdentifierType, normalized: Iterable[bytes]) -> list[bytes]:
    """Steps 2 and 3 for many identifiers: `curve_message(id_type, SHA-256(value))` of each normalized UTF-8 value.

    The same bytes as `digest` and `curve_message` one by one, in one loop without their calls (tested equal).
    """
    prefix, sha256 = curve_message(id_type, b""), hashlib.sha256
    return [prefix + sha256(value).digest() for value in normalized]
