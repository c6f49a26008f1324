import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cleanroom_client.identity import (
    TRIMMED,
    IdentifierType,
    InvalidIdentifierError,
    Normalizer,
    ascii_lower,
    curve_message,
    digest,
    is_email,
    is_missing,
    parse_prehashed,
    trim,
)

N = Normalizer("US")


@pytest.mark.parametrize(
    ("id_type", "raw", "expected"),
    [
        (IdentifierType.EMAIL, "  Alice@Example.COM ", "alice@example.com"),
        (IdentifierType.PHONE, "(415) 555-0132", "+14155550132"),
        (IdentifierType.PHONE, "+1 415-555-0132", "+14155550132"),
        (IdentifierType.PHONE, "+86 138 0013 8000", "+8613800138000"),
        (IdentifierType.DEVICE_ID, " AB12-CD34 ", "ab12-cd34"),
        (IdentifierType.CUSTOM, " Keep Exact ", " Keep Exact "),
    ],
)
def test_normalize(id_type, raw, expected):
    assert N.normalize(id_type, raw) == expected


@pytest.mark.parametrize(
    ("id_type", "raw"),
    [
        (IdentifierType.EMAIL, "not-an-email"),
        (IdentifierType.EMAIL, "a b@example.com"),
        (IdentifierType.PHONE, "12"),
        (IdentifierType.PHONE, "call me"),
        (IdentifierType.DEVICE_ID, "   "),
        (IdentifierType.CUSTOM, ""),
        (IdentifierType.EMAIL, "a@b.c."),
        (IdentifierType.EMAIL, "\u212a@example.com."),
        (IdentifierType.PHONE, "+1 200 555 0100"),
    ],
)
def test_invalid_identifiers_raise(id_type, raw):
    with pytest.raises(InvalidIdentifierError):
        N.normalize(id_type, raw)


def test_default_region_applies_to_national_numbers():
    assert Normalizer("CN").normalize(IdentifierType.PHONE, "138 0013 8000") == "+8613800138000"
    with pytest.raises(ValueError, match="unknown phone region"):
        Normalizer("XX")


@given(st.sampled_from(list(IdentifierType)), st.text(max_size=40))
def test_normalization_is_idempotent(id_type, raw):
    try:
        once = N.normalize(id_type, raw)
    except InvalidIdentifierError:
        return
    assert N.normalize(id_type, once) == once


@given(st.emails())
def test_valid_emails_normalize_to_ascii_lower_case(email):
    try:
        out = N.normalize(IdentifierType.EMAIL, email.upper())
    except InvalidIdentifierError:
        return  # e.g. a one-letter top-level label, refused by the grammar of PROTOCOL.md
    assert out == ascii_lower(email)


WHITESPACE = st.text(st.sampled_from(TRIMMED), max_size=4)


@given(st.sampled_from(list(IdentifierType)), WHITESPACE)
def test_only_trimmed_code_points_is_missing_for_every_type(id_type, blank):
    assert is_missing(blank)
    with pytest.raises(InvalidIdentifierError, match="missing"):
        N.normalize(id_type, blank)


@given(WHITESPACE, st.text(max_size=20), WHITESPACE)
def test_trim_removes_exactly_the_listed_code_points_at_the_ends(left, middle, right):
    core = trim(middle)
    assert trim(left + core + right) == core
    assert not core or (core[0] not in TRIMMED and core[-1] not in TRIMMED)
    assert core in middle


@given(st.text(max_size=30))
def test_lower_casing_touches_ascii_letters_only(text):
    out = ascii_lower(text)
    assert len(out) == len(text)
    for before, after in zip(text, out, strict=True):
        assert after == (before.lower() if "A" <= before <= "Z" else before)


def test_the_code_points_language_trims_disagree_on():
    assert trim("\u001calice\u001f") == "\u001calice\u001f"  # Python's strip() removes these; we do not
    assert trim("\u0085\ufeffalice\u00a0") == "alice"  # JavaScript's trim() keeps U+0085; we remove it
    assert trim("\u200balice") == "\u200balice"  # zero-width space is not white space


@given(st.from_regex(r"[a-z0-9.!#$%&'*+/=?^_`{|}~@-]{1,30}", fullmatch=True))
def test_email_grammar_never_accepts_what_the_protocol_forbids(text):
    if is_email(text):
        local, _, domain = text.partition("@")
        labels = domain.split(".")
        assert "@" not in domain
        assert ".." not in local
        assert local[0] != "."
        assert local[-1] != "."
        assert len(labels) >= 2
        assert all(labels)
        assert labels[-1][0].isalpha()
        assert len(labels[-1]) >= 2
        assert all(not label.startswith("-") and not label.endswith("-") for label in labels)


def test_prehashed_equals_hash_of_normalized():
    normalized = N.normalize(IdentifierType.EMAIL, " Bob@Example.org")
    hexdigest = hashlib.sha256(normalized.encode()).hexdigest()
    assert parse_prehashed(hexdigest.upper() + " ") == digest(normalized)
    with pytest.raises(InvalidIdentifierError):
        parse_prehashed("abc")


def test_curve_message_separates_types():
    d = digest("x")
    assert curve_message(IdentifierType.EMAIL, d) != curve_message(IdentifierType.CUSTOM, d)
    assert curve_message(IdentifierType.EMAIL, d) == b"email\x00" + d


def test_unknown_type_names_known_ones():
    with pytest.raises(ValueError, match="email, phone, device_id, custom"):
        IdentifierType.parse("fax")


# Internationalized addresses (RFC 6531), PROTOCOL.md section 1.3: the local part in NFC with ASCII letters
# lower-cased, a domain with any non-ASCII code point in A-labels (UTS #46). A partner's test data lost 153 of
# 3,000 shared people when any non-ASCII code point made an address invalid.
@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("张三@例子.中国", "张三@xn--fsqu00a.xn--fiqs8s"),
        ("张三@例子。中国", "张三@xn--fsqu00a.xn--fiqs8s"),  # an ideographic full stop is a dot (UTS #46)
        ("张三@xn--fsqu00a.xn--fiqs8s", "张三@xn--fsqu00a.xn--fiqs8s"),  # the same person, in A-labels
        ("用户@QQ.com", "用户@qq.com"),
        (" 用户@ＱＱ．ｃｏｍ\u3000", "用户@qq.com"),  # a full-width domain maps to ASCII
        ("Zhang.San@例子.中国", "zhang.san@xn--fsqu00a.xn--fiqs8s"),
        ("alice@exämple.com", "alice@xn--exmple-cua.com"),
        ("E\u0301lodie@x.com", "\u00c9lodie@x.com"),  # NFC composes; no Unicode case mapping
        ("\u00c9lodie@x.com", "\u00c9lodie@x.com"),
        ("\u212a@example.com", "k@example.com"),  # NFC maps KELVIN SIGN to K, then ASCII lower-casing
        ("W\u030a@x.com", "\u1e98@x.com"),  # lower-cased, then NFC again: w + ring composes
    ],
)
def test_internationalized_emails_normalize_to_one_pinned_form(raw, expected):
    assert N.normalize(IdentifierType.EMAIL, raw) == expected
    assert N.normalize(IdentifierType.EMAIL, expected) == expected


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("张三", "no @"),
        ("张 三@例子.中国", "before the @"),  # a space inside
        ("张三\u200b@例子.中国", "before the @"),  # a format character (Cf)
        ("张三@例子..中国", "domain"),
        ("张三@例子.中国.", "domain"),
        ("a@ex_ample.中国", "domain"),
        ("张" * 22 + "@x.com", "64 bytes"),  # 22 characters, 66 bytes of UTF-8
        ("\ud800@x.com", "before the @"),  # a lone surrogate cannot be UTF-8
        ("\U000e0fff@x.com", "before the @"),  # unassigned
    ],
)
def test_internationalized_emails_that_stay_invalid_say_why(raw, why):
    with pytest.raises(InvalidIdentifierError, match=why):
        N.normalize(IdentifierType.EMAIL, raw)


_UNICODE_LOCAL = st.text(
    st.characters(codec="utf-8", categories=["L", "M", "N", "P", "S"]) | st.sampled_from("AZaz09._+-"),
    min_size=1,
    max_size=12,
)


@given(_UNICODE_LOCAL, st.sampled_from(["例子.中国", "qq.com", "Example.COM", "exämple.com", "ＱＱ．ｃｏｍ"]))
def test_normalizing_an_internationalized_email_is_idempotent_and_canonical(local, domain):
    import unicodedata

    raw = f"{local}@{domain}"
    try:
        once = N.normalize(IdentifierType.EMAIL, raw)
    except InvalidIdentifierError:
        return
    assert N.normalize(IdentifierType.EMAIL, once) == once
    assert once.encode("utf-8")  # always encodable: step 2 hashes its UTF-8
    # Canonically equivalent inputs (NFC, NFD) are one identifier.
    for form in ("NFC", "NFD"):
        assert N.normalize(IdentifierType.EMAIL, unicodedata.normalize(form, local) + "@" + domain) == once


def test_ascii_addresses_normalize_exactly_as_before():
    # Nothing changed for addresses without a non-ASCII code point: the same cases as section 1.3's examples.
    assert N.normalize(IdentifierType.EMAIL, "User+Tag@Sub.Example.CO.UK") == "user+tag@sub.example.co.uk"
    for bad in ("a@b.c.", "a@b.c", "a..b@x.com", '"quoted"@x.com', "a@-b.com", "l" * 65 + "@x.com"):
        with pytest.raises(InvalidIdentifierError):
            N.normalize(IdentifierType.EMAIL, bad)


# Email-like values for the differential tests of the batch path: ASCII and not, every kind of padding, case,
# plus-addressing and dots (kept, PROTOCOL.md 1.3), stray @, controls, lengths either side of the 64- and 254-byte
# limits, arbitrary text.
_LOCAL_CHARS = "abcXYZ019.+-_!#$%&'*/=?^`{|}~@ \t\"(),:;<>[\\]\x00\x7féÄ张\u200b\u00a0"
_DOMAIN_CHARS = "abcXYZ019-._@ é例\u3002ＱＱ"
_PAD = st.text(st.sampled_from(TRIMMED + "\x1c\u200b"), max_size=3) | st.text(
    st.sampled_from(" \t\n\x0b\x0c\r"), max_size=2
)
_LABELS = st.lists(
    st.text(st.sampled_from(_DOMAIN_CHARS), max_size=8) | st.integers(0, 66).map("a".__mul__), max_size=6
)


def _of_length(total: int) -> str:
    """A valid address of `total` bytes if the limits allowed it: a short local part, labels of up to 63 letters."""
    labels, rest = [], total - len("local@")
    while rest > 63:
        labels.append("a" * min(63, rest - 3))
        rest -= len(labels[-1]) + 1
    return "Local@" + ".".join([*labels, "c" * rest])


_ASCII_ADDRESS = st.builds(
    lambda left, local, labels, tld, right: f"{left}{local}@{'.'.join([*labels, tld])}{right}",
    _PAD,
    st.from_regex(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]{1,8}(\.[A-Za-z0-9+_-]{1,4}){0,3}", fullmatch=True)
    | st.integers(62, 66).map("L".__mul__),
    st.lists(st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9-]{0,4}[A-Za-z0-9])?", fullmatch=True), min_size=1, max_size=3)
    | st.integers(61, 65).map(lambda n: ["a" * n]),
    st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,3}[A-Za-z0-9]", fullmatch=True) | st.integers(61, 65).map("c".__mul__),
    _PAD,
)
_EMAILISH = st.one_of(
    _ASCII_ADDRESS,
    st.integers(250, 258).map(_of_length),
    st.emails(),
    st.builds(
        lambda left, local, domain, right: f"{left}{local}@{'.'.join(domain)}{right}",
        _PAD,
        st.text(st.sampled_from(_LOCAL_CHARS), max_size=12) | st.integers(60, 68).map("l".__mul__),
        _LABELS,
        _PAD,
    ),
    st.sampled_from(
        [
            *("First.Last+Tag@GMail.com", "f.i.r.s.t@gmail.com", "a+b+c@x.co", "a@b.c.", "A@" + "b" * 63 + ".com"),
            *("L" * 64 + "@x.com", "L" * 65 + "@x.com", _of_length(254), _of_length(255), "\tA@B.co\r\n"),
        ]
    ),
    st.text(max_size=40),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_EMAILISH | st.none(), max_size=12))
def test_the_batch_email_path_marks_exactly_the_valid_ascii_addresses_and_normalizes_them_the_same(values):
    import pyarrow as pa

    from cleanroom_client.identity import normalize_ascii_emails

    mask, normalized, left = normalize_ascii_emails(pa.array(values, type=pa.string()))
    expected = []
    for i, value in enumerate(values):
        try:
            one = None if value is None else Normalizer().normalize(IdentifierType.EMAIL, value)
        except InvalidIdentifierError:
            one = None
        marked = one is not None and value is not None and value.isascii()
        assert mask[i] == marked, value
        if one is not None and marked:
            expected.append(one.encode("utf-8"))
    assert normalized.to_pylist() == expected
    assert left.to_pylist() == [value for value, marked in zip(values, mask, strict=True) if not marked]


@given(st.sampled_from(list(IdentifierType)), st.lists(st.binary(max_size=40), max_size=5))
def test_curve_messages_are_digest_and_curve_message_one_by_one(id_type, values):
    from cleanroom_client.identity import curve_messages

    expected = [curve_message(id_type, hashlib.sha256(value).digest()) for value in values]
    assert curve_messages(id_type, values) == expected


@settings(max_examples=100, deadline=None)
@given(st.lists(_EMAILISH | st.none(), max_size=12), st.booleans())
def test_blinding_an_arrow_chunk_of_emails_equals_blinding_it_value_by_value(values, count_only):
    # An Arrow chunk (what a match sends) takes the batch path for its valid ASCII addresses; a list of the same
    # values goes value by value. Points, bitmap, counts and reasons (with their examples, in order) are the same.
    import pyarrow as pa

    from cleanroom_client.blinding import BlindJob, blind_identifiers

    key = bytes(range(32))
    by_value = BlindJob(key=key, id_type=IdentifierType.EMAIL, values=values, count_only=count_only)
    arrow = BlindJob(
        key=key, id_type=IdentifierType.EMAIL, values=pa.array(values, type=pa.string()), count_only=count_only
    )
    assert blind_identifiers(arrow) == blind_identifiers(by_value)


def _layouts(values: list[str | None]) -> dict[str, object]:
    """The same values in the Arrow layouts a chunk can take: offsets, nulls over data, other string types."""
    import pyarrow as pa
    import pyarrow.compute as pc

    plain = pa.array(["Pad@Example.com", *values], type=pa.string()).slice(1)  # a sliced array: offset 1
    hidden = pa.array([v if v is not None else "hidden@example.com" for v in values], type=pa.string())
    nulls = pc.if_else(pa.array([v is None for v in values]), pa.scalar(None, pa.string()), hidden)  # data under nulls
    return {
        "offset": plain,
        "nulls over valid addresses": nulls,
        "large_string": plain.cast(pa.large_string()),
        "dictionary": plain.dictionary_encode(),
    }


@settings(max_examples=60, deadline=None)
@given(st.lists(_EMAILISH | st.none(), max_size=12))
def test_every_arrow_layout_of_a_chunk_blinds_as_its_values_do(values):
    # The batch path reads Arrow's buffers (the mask) and filters by it: an offset, a null whose slot holds a valid
    # address, or another string type must give exactly the value-by-value result (other types take that path).
    from cleanroom_client.blinding import BlindJob, blind_identifiers

    key = bytes(range(32))
    expected = blind_identifiers(BlindJob(key=key, id_type=IdentifierType.EMAIL, values=values))
    for layout, array in _layouts(values).items():
        job = BlindJob(key=key, id_type=IdentifierType.EMAIL, values=array)
        assert blind_identifiers(job) == expected, layout
