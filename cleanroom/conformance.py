"""Conformance kit for a partner's own implementation of the matching protocol (PROTOCOL.md section 7).

`check` compares a partner's outputs for the published vector inputs with the expected values, field by field:
every expected case must be present, every field equal (the phone numbers of `phone-metadata-v1.json` included:
the one way a partner shows that its libphonenumber has the pinned metadata). `reference_outputs` is what the
Python SDK computes for the same inputs (the file a correct implementation writes). `run` starts a local TLS server
with a Python reference member on the other side, writes the partner's data with a known exact overlap, and checks
the server's join once the partner's client has matched: set sizes, pairs per type, and the partner's attribute on
every matched pair.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

import pandas as pd
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from cleanroom_client import CleanRoomClient, SerialExecutor
from cleanroom_client.blinding import ZERO_TAG, blind_point, join_tag
from cleanroom_client.curve import check_points, hash_to_u
from cleanroom_client.identity import (
    IdentifierType,
    InvalidIdentifierError,
    Normalizer,
    curve_message,
    digest,
    is_missing,
    parse_prehashed,
)
from cleanroom_client.matching import ROWS_FILE

from .devtools.devpki import make_dev_pki
from .errors import AlreadyExistsError
from .matching import match_stats
from .matching.join import join_of_rows, spoke_pairs
from .matching.tables import USERS_TABLE, uploaded_tables
from .principals import Principal, Principals, Role
from .server import ServerConfig, create_server
from .server.app import TlsConfig
from .storage.database import quote_ident

#: Sections of a partner's file: (vector file, list in it, fields that identify a case, fields to compare).
SECTIONS: Mapping[str, tuple[str, str, tuple[str, ...], tuple[str, ...]]] = {
    "normalization": (
        "normalization-v1.json",
        "cases",
        ("id_type", "region", "raw"),
        ("result", "normalized", "digest"),
    ),
    "prehashed": ("normalization-v1.json", "prehashed", ("raw",), ("result", "digest")),
    "pipeline": (
        "matching-v1.json",
        "vectors",
        ("id_type", "raw"),
        ("normalized", "digest", "msg", "point", "blinded_a", "blinded_b", "double_blinded", "tag"),
    ),
    "points": ("points-v1.json", "cases", ("point",), ("accept", "tag")),
    "chain": ("chain-v1.json", "vectors", ("id_type", "raw", "origin", "hop"), ("blinded",)),
    "phone_metadata": ("phone-metadata-v1.json", "cases", ("region", "raw"), ("result", "normalized")),
}
#: Sections checked only when the file has them: the chain of three or more members (PROTOCOL.md section 9) is not
#: needed by an implementation that joins two-member collaborations only.
OPTIONAL_SECTIONS = frozenset({"chain"})


class ConformanceInputError(ValueError):
    """A partner's file that cannot be read as the format of PROTOCOL.md section 7."""


def vectors(name: str) -> dict[str, Any]:
    """One published vector file (as shipped in the SDK, identical to protos/vectors)."""
    data: dict[str, Any] = json.loads((files("cleanroom_client") / "vectors" / name).read_text())
    return data


def _case_key(entry: Mapping[str, Any], keys: tuple[str, ...]) -> tuple[Any, ...]:
    return tuple(entry.get(k) for k in keys)


@dataclass(frozen=True)
class FieldResult:
    """One compared field of one case."""

    section: str
    case: tuple[Any, ...]
    field: str
    expected: Any
    got: Any
    present: bool

    @property
    def passed(self) -> bool:
        """Whether the partner gave the expected value."""
        return self.present and self.got == self.expected


@dataclass
class Report:
    """Every compared field; `passed` when all of them pass."""

    results: list[FieldResult] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """Whether every field passed."""
        return all(r.passed for r in self.results)

    def failures(self) -> list[FieldResult]:
        """The fields that failed, in vector order."""
        return [r for r in self.results if not r.passed]

    def by_field(self) -> dict[tuple[str, str], tuple[int, int]]:
        """(section, field) -> (passed, failed)."""
        out: dict[tuple[str, str], tuple[int, int]] = {}
        for r in self.results:
            ok, bad = out.get((r.section, r.field), (0, 0))
            out[(r.section, r.field)] = (ok + 1, bad) if r.passed else (ok, bad + 1)
        return out


def check(partner: Any) -> Report:
    """Compare a partner's outputs (parsed JSON) with the vectors; a section the file lacks fails every field."""
    if not isinstance(partner, dict):
        raise ConformanceInputError("the file must hold a JSON object with the lists " + ", ".join(SECTIONS))
    report = Report()
    report.unknown = sorted(set(partner) - set(SECTIONS))
    for section, (file, key, ident, compared) in SECTIONS.items():
        if section in OPTIONAL_SECTIONS and section not in partner:
            continue
        entries = partner.get(section, [])
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise ConformanceInputError(f"`{section}` must be a list of JSON objects")
        given = {_case_key(e, ident): e for e in entries}
        for case in vectors(file)[key]:
            case_key = _case_key(case, ident)
            got = given.get(case_key)
            for name in compared:
                report.results.append(
                    FieldResult(
                        section,
                        case_key,
                        name,
                        case.get(name),
                        None if got is None else got.get(name),
                        got is not None and name in got,
                    )
                )
    return report


def _normalized(id_type: str, region: str, raw: str) -> tuple[str, str | None]:
    if is_missing(raw):
        return "missing", None
    try:
        return "valid", Normalizer(region).normalize(IdentifierType(id_type), raw)
    except InvalidIdentifierError:
        return "invalid", None


def reference_outputs(normalize: Callable[[str, str, str], tuple[str, str | None]] = _normalized) -> dict[str, Any]:
    """What the reference implementation computes for every vector input, in the format `check` reads.

    `normalize(id_type, region, raw) -> (result, normalized)` is step 1; tests swap in a wrong one.
    """
    out: dict[str, Any] = {section: [] for section in SECTIONS}
    for case in vectors("normalization-v1.json")["cases"]:
        result, norm = normalize(case["id_type"], case["region"], case["raw"])
        out["normalization"].append(
            {
                **{k: case[k] for k in ("id_type", "region", "raw")},
                "result": result,
                "normalized": norm,
                "digest": digest(norm).hex() if norm is not None else None,
            }
        )
    for case in vectors("normalization-v1.json")["prehashed"]:
        value: bytes | None = None
        if is_missing(case["raw"]):
            result = "missing"
        else:
            try:
                value, result = parse_prehashed(case["raw"]), "valid"
            except InvalidIdentifierError:
                result = "invalid"
        out["prehashed"].append({"raw": case["raw"], "result": result, "digest": value.hex() if value else None})
    matching = vectors("matching-v1.json")
    key_a = X25519PrivateKey.from_private_bytes(bytes.fromhex(matching["key_a"]))
    key_b = X25519PrivateKey.from_private_bytes(bytes.fromhex(matching["key_b"]))
    for case in matching["vectors"]:
        _, norm = normalize(case["id_type"], matching["default_phone_region"], case["raw"])
        entry: dict[str, Any] = {"id_type": case["id_type"], "raw": case["raw"], "normalized": norm}
        if norm is not None:
            d = digest(norm)
            msg = curve_message(IdentifierType(case["id_type"]), d)
            point = hash_to_u(msg)
            blinded_a = blind_point(key_a, point)
            double = blind_point(key_b, blinded_a)
            entry |= {
                "digest": d.hex(),
                "msg": msg.hex(),
                "point": point.hex(),
                "blinded_a": blinded_a.hex(),
                "blinded_b": blind_point(key_b, point).hex(),
                "double_blinded": double.hex(),
                "tag": join_tag(double).hex(),
            }
        out["pipeline"].append(entry)
    points = vectors("points-v1.json")
    key = X25519PrivateKey.from_private_bytes(bytes.fromhex(points["key"]))
    for case in points["cases"]:
        point = bytes.fromhex(case["point"])
        [code] = check_points(point).tolist()
        tag = join_tag(blind_point(key, point)) if code == 0 else ZERO_TAG
        out["points"].append({"point": case["point"], "accept": code == 0, "tag": tag.hex()})
    chain = vectors("chain-v1.json")
    order = chain["chain_order"]
    for case in chain["vectors"]:
        _, norm = normalize(case["id_type"], chain["default_phone_region"], case["raw"])
        value = hash_to_u(curve_message(IdentifierType(case["id_type"]), digest(norm or "")))
        start = order.index(case["origin"])
        origin = chain["members"][case["origin"]]
        for hop in range(case["hop"] + 1):
            if hop == 0:
                scalar = origin["upload_scalar"]
            elif hop == len(order):
                scalar = origin["unmask_scalar"]
            else:
                scalar = chain["members"][order[(start + hop) % len(order)]]["key"]
            value = blind_point(X25519PrivateKey.from_private_bytes(bytes.fromhex(scalar)), value)
        out["chain"].append({k: case[k] for k in ("id_type", "raw", "origin", "hop")} | {"blinded": value.hex()})
    for case in vectors("phone-metadata-v1.json")["cases"]:
        result, norm = normalize("phone", case["region"], case["raw"])
        out["phone_metadata"].append(
            {"region": case["region"], "raw": case["raw"], "result": result, "normalized": norm}
        )
    return out


# -- end to end -------------------------------------------------------------------------------------------------------

REFERENCE, PARTNER = "brand", "platform"
CONFORMANCE_POLICY = """\
name: conformance
members:
  brand:    {abilities: [contribute, query, receive_results]}
  platform: {abilities: [contribute]}
identifiers: [email, phone, device_id]
tables:
  brand.users:    {dimensions: {tier: [gold, basic]}}
  platform.users: {dimensions: {segment: [a, b, c]}}
queries: [overlap]
min_group_size: 10
epsilon: {per_member_total: 1.0, per_query_max: 1.0}
"""
ID_COLUMNS = {"email": "email", "phone": "phone", "device_id": "device_id"}


MAX_ROWS = 10_000
#: Seconds `run` waits after the match for the partner's users table, which may follow the match (section 5).
USERS_TABLE_GRACE = 60.0


def _phone(area: int, i: int) -> tuple[str, str]:
    """Row i's US number in `area` (valid in the pinned metadata; distinct per row), as E.164 and national."""
    return f"+1{area}234{i:04d}", f"({area}) 234-{i:04d}"


def conformance_data(rows: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The reference member's and the partner's users, with overlaps on each type and traps for loose normalizers.

    Each overlap uses a different spelling on each side (case, white space of section 1.1, phone formats); traps
    are values that match only under a wrong rule (Python's strip(), Unicode lower-casing, a lax email grammar).
    """
    if not 10 <= rows <= MAX_ROWS:
        raise ValueError(f"rows must be between 10 and {MAX_ROWS}, got {rows}")
    rng = random.Random(seed)
    ref: list[dict[str, Any]] = []
    partner: list[dict[str, Any]] = []

    def uuid() -> str:
        return "-".join(f"{rng.getrandbits(b * 4):0{b}x}" for b in (8, 4, 4, 4, 12))

    def person(i: int, side: str, area: int) -> dict[str, Any]:
        return {"email": f"{side}{i}@example.com", "phone": _phone(area, i)[0], "device_id": uuid()}

    spaces = ["", " ", "\u00a0", "\u3000", "\ufeff", "\t", "\u0085"]
    for i in range(rows):
        a, b = person(i, "r", 212), person(i, "p", 312)
        kind = i % 10
        if kind in (0, 1):  # email overlap, partner spells it loudly
            b["email"] = rng.choice(spaces) + a["email"].upper() + rng.choice(spaces)
        elif kind == 2:  # phone overlap only, national format on the partner's side
            e164, national = _phone(415, i)
            a["phone"], b["phone"] = e164, rng.choice(spaces) + national
        elif kind == 3:  # device overlap only
            b["device_id"] = a["device_id"].upper()
        elif (
            kind == 4
        ):  # traps: each would match under a wrong rule only (Unicode lower-casing, strip(), a lax grammar)
            a["email"], b["email"] = rng.choice(
                [
                    (f"\u00e4{i}@example.com", f"\u00c4{i}@example.com"),
                    (f"k{i}@example.com", f"\u001ck{i}@example.com"),
                    (f"k{i}@example.com", f"k{i}@example.com."),
                ]
            )
        elif kind == 5:  # missing and invalid values on the partner's side
            b["email"], b["phone"], b["device_id"] = rng.choice(["", "   ", None]), "12", None
        elif kind == 6:  # partner without any identifier: numbered, never matched
            b["email"] = b["phone"] = b["device_id"] = None
        ref.append({"key": f"r{i}", **a, "tier": rng.choice(["gold", "basic"])})
        partner.append({"key": f"p{i}", **b, "segment": rng.choice(["a", "b", "c"])})
    return pd.DataFrame(ref), pd.DataFrame(partner)


@dataclass(frozen=True)
class Expected:
    """What a correct partner gets: both set sizes, the pairs the join finds per identifier type, and who pairs.

    `partner_of` maps each matched reference user's key to the key of the partner's user it is paired with.
    """

    own_set_size: int
    peer_set_size: int
    pairs: dict[str, int]
    partner_of: dict[str, str] = field(default_factory=dict)

    @property
    def total_pairs(self) -> int:
        """Matched people."""
        return sum(self.pairs.values())


def _normalized_column(users: pd.DataFrame, id_type: str) -> list[str | None]:
    return [
        _normalized(id_type, "US", v)[1] if isinstance(v, str) else None for v in users[ID_COLUMNS[id_type]].tolist()
    ]


def _join_key(id_type: str, normalized: str) -> int:
    """A stand-in for the doubly blinded tag: equal exactly when type and normalized value are (never 0)."""
    return int.from_bytes(hashlib.sha256(f"{id_type}\0{normalized}".encode()).digest()[:8], "little", signed=True) or 1


def expected_overlap(ref: pd.DataFrame, partner: pd.DataFrame) -> Expected:
    """The server's join (PROTOCOL.md section 6, `join_of_rows`) on the correctly normalized values of both sides."""
    norm = {side: {t: _normalized_column(df, t) for t in ID_COLUMNS} for side, df in (("r", ref), ("p", partner))}

    def rows(side: str, n: int) -> list[dict[IdentifierType, int]]:
        return [
            {IdentifierType(t): _join_key(t, v) for t in ID_COLUMNS if (v := norm[side][t][i]) is not None}
            for i in range(n)
        ]

    found = join_of_rows(rows("r", len(ref)), rows("p", len(partner)), [IdentifierType(t) for t in ID_COLUMNS])
    pairs = {t: sum(1 for kind in found.values() if kind.value == t) for t in ID_COLUMNS}
    ref_keys, partner_keys = ref["key"].tolist(), partner["key"].tolist()
    partner_of = {str(ref_keys[i]): str(partner_keys[j]) for i, j in sorted(found)}

    def set_size(side: str, n: int) -> int:
        return sum(any(norm[side][t][i] is not None for t in ID_COLUMNS) for i in range(n))

    return Expected(set_size("p", len(partner)), set_size("r", len(ref)), pairs, partner_of)


@dataclass(frozen=True)
class RunResult:
    """The server's join against the expectation.

    `wrong_pair` names the first matched pair (in the reference member's user order) whose partner-side attribute
    is not the one of the partner's user the reference user should be paired with, or None when every pair holds
    the right one. It catches a partner whose points and users table number rows differently: every count right,
    every attribute on the wrong person.
    """

    expected: Expected
    pairs: dict[str, int]
    peer_set_size: int
    own_set_size: int
    wrong_pair: str | None = None

    @property
    def passed(self) -> bool:
        """Whether the join, the pairs' attributes and both set sizes are exactly as expected."""
        return (
            self.pairs == self.expected.pairs
            and self.own_set_size == self.expected.own_set_size
            and self.peer_set_size == self.expected.peer_set_size
            and self.wrong_pair is None
        )


def first_wrong_pair(
    server_pairs: list[tuple[int, int]],
    reference_rows: Mapping[int, str],
    partner_attributes: Mapping[int, str | None],
    expected: Expected,
    truth: Mapping[str, str],
    order: list[str],
) -> str | None:
    """The first stored pair (by `order`, the reference users' keys) whose partner attribute is wrong, described.

    `server_pairs` are (reference row number, partner row number); `reference_rows` maps the reference member's row
    numbers to its keys; `partner_attributes` is the partner's uploaded users table (row number -> `segment`);
    `truth` maps each partner key to its `segment`.
    """
    position = {key: i for i, key in enumerate(order)}
    named = sorted(((reference_rows[a], b) for a, b in server_pairs), key=lambda p: position[p[0]])
    for ref_key, row in named:
        got = partner_attributes.get(row)
        shown = "no row" if row not in partner_attributes else f"segment {got!r}"
        want_key = expected.partner_of.get(ref_key)
        if want_key is None:
            return f"reference user {ref_key} is paired with your row {row} ({shown}) but should match none of yours"
        if got != truth[want_key]:
            return (
                f"reference user {ref_key} is paired with your row {row}, whose users-table row gives {shown}; "
                f"it should be your user {want_key}, segment {truth[want_key]!r} (is your users table numbered "
                "with the same row numbers as your points?)"
            )
    return None


@dataclass
class Session:
    """A running conformance session: the server, the reference member's thread, and what the partner needs."""

    directory: Path
    target: str
    collaboration: str
    expected: Expected
    stop: Callable[[], None]
    wait: Callable[[float], RunResult | None]
    partner_files: dict[str, Path]


def _member_token(principals: Principals, name: str) -> str:
    """A fresh token for the member `name`: registered on a new directory, rotated on one a run used before."""
    try:
        return principals.add(name, Role.MEMBER)
    except AlreadyExistsError:
        return principals.rotate(name)


def start_session(
    directory: Path,
    host: str = "127.0.0.1",
    port: int = 0,
    rows: int = 1000,
    seed: int = 15,
    approve: bool = True,
    users_table_grace: float = USERS_TABLE_GRACE,
) -> Session:
    """Start the server and the reference member, write the partner's files, and return at once.

    A directory used by an earlier run is reused: its server keeps its data, the two members get new tokens and a
    new collaboration, and the partner's files are rewritten for it.

    The partner's directory (`directory/partner`) gets `users.jsonl` (its users, JSON escapes for every code point
    outside ASCII), `token`, `ca.pem` and `session.json` (target, collaboration, member, expected overlap).
    """
    ref, partner = conformance_data(rows, seed)  # first: refuses a bad row count before anything starts
    expected = expected_overlap(ref, partner)
    directory.mkdir(parents=True, exist_ok=True)
    pki = make_dev_pki(directory / "pki", hosts=(host,))
    tls = TlsConfig(pki.server_cert.read_bytes(), pki.server_key.read_bytes(), None)
    running = create_server(ServerConfig(data_dir=directory / "server", address=f"{host}:{port}", tls=tls))
    try:
        target = f"localhost:{running.port}"
        tokens = {name: _member_token(running.room.principals, name) for name in (REFERENCE, PARTNER)}
        reference = CleanRoomClient(
            target,
            token=tokens[REFERENCE],
            root_certificates=pki.ca,
            state_dir=directory / "reference-state",
            executor=SerialExecutor(),
            progress=False,
        )
        collaboration = reference.create_collaboration(CONFORMANCE_POLICY)
        reference.approve_policy(collaboration.id)
        if approve:
            with CleanRoomClient(target, token=tokens[PARTNER], root_certificates=pki.ca, progress=False) as other:
                other.approve_policy(collaboration.id)

        out = directory / "partner"
        out.mkdir(exist_ok=True)
        files_ = {name: out / name for name in ("users.jsonl", "token", "ca.pem", "session.json")}
        records = ({k: (None if pd.isna(v) else v) for k, v in r.items()} for r in partner.to_dict("records"))
        files_["users.jsonl"].write_text("".join(json.dumps(r) + "\n" for r in records))
        files_["token"].write_text(tokens[PARTNER] + "\n")
        files_["token"].chmod(0o600)
        files_["ca.pem"].write_bytes(pki.ca.read_bytes())
        session_info = {
            "target": target,
            "collaboration": f"collaborations/{collaboration.id}",
            "member": PARTNER,
            "default_phone_region": "US",
            "identifiers": ID_COLUMNS,
            "attributes": ["segment"],
            "key_column": "key",
            "expected": {
                "own_set_size": expected.own_set_size,
                "peer_set_size": expected.peer_set_size,
                "pairs": expected.pairs,
                "total_pairs": expected.total_pairs,
            },
        }
        files_["session.json"].write_text(json.dumps(session_info, indent=1) + "\n")
    except BaseException:
        running.stop(None)
        raise

    failure: list[BaseException] = []

    def reference_side() -> None:
        try:
            reference.match(
                collaboration.id, ref, key="key", identifiers=ID_COLUMNS, attributes=["tier"], wait_timeout=24 * 3600.0
            )
        except BaseException as exc:  # noqa: BLE001 - reported by `wait`
            failure.append(exc)

    thread = threading.Thread(target=reference_side, name="conformance-reference", daemon=True)
    thread.start()

    truth = dict(zip(partner["key"].astype(str), partner["segment"], strict=True))

    def partner_users(cur: Any) -> dict[int, str | None] | None:
        physical = uploaded_tables(cur, collaboration.id).get((PARTNER, USERS_TABLE))
        if physical is None:
            return None
        columns = [d[0] for d in cur.execute(f"SELECT * FROM {quote_ident(physical)} LIMIT 0").description]
        segment = "segment" if "segment" in columns else "NULL"  # a table without it: every pair is wrong
        rows = cur.execute(f"SELECT row_id, {segment} FROM {quote_ident(physical)}").fetchall()
        return {int(r): s for r, s in rows}

    def wrong_pair(deadline: float) -> str | None:
        cur = running.room.store.of(collaboration.id).cursor()
        attributes = partner_users(cur)
        while attributes is None and time.monotonic() < deadline:  # a table may follow the match (section 5)
            time.sleep(0.2)
            attributes = partner_users(cur)
        if attributes is None:
            return (
                f"your users table (with `segment`) was not uploaded within {users_table_grace:g} s of the match: "
                "the attributes of the pairs cannot be checked"
            )
        ledger = pd.read_parquet(reference.collaboration_dir(collaboration.id) / ROWS_FILE)
        reference_rows = dict(zip(ledger["row_id"].astype(int), ledger["key"].astype(str), strict=True))
        server_pairs = cur.execute(
            f"SELECT row_{REFERENCE}, row_{PARTNER} FROM {spoke_pairs(0, REFERENCE, PARTNER, '?')}",
            [collaboration.id],
        ).fetchall()
        return first_wrong_pair(
            [(int(a), int(b)) for a, b in server_pairs],
            reference_rows,
            attributes,
            expected,
            truth,
            ref["key"].astype(str).tolist(),
        )

    def wait(timeout: float) -> RunResult | None:
        thread.join(timeout)
        if thread.is_alive():
            return None
        if failure:
            raise RuntimeError(f"the reference member failed: {failure[0]}") from failure[0]
        stats, _ = match_stats(running.store.of(collaboration.id).cursor(), collaboration.id)
        status = running.room.relay.status(
            running.room.collaborations.get(Principal(PARTNER, Role.MEMBER), collaboration.id), PARTNER
        )
        return RunResult(
            expected,
            {s.id_type.value: s.pairs for s in stats if s.id_type.value in ID_COLUMNS},
            status.peer_set_size,
            status.own_set_size,
            wrong_pair(time.monotonic() + users_table_grace),
        )

    def stop() -> None:
        reference.close()
        running.stop(None)

    return Session(directory, target, f"collaborations/{collaboration.id}", expected, stop, wait, files_)


def run_reference_partner(session: Session) -> None:
    """Play the partner with the Python SDK (the self-test of `cleanroom conformance run --self-test`)."""
    info = json.loads(session.partner_files["session.json"].read_text())
    users = pd.read_json(session.partner_files["users.jsonl"], lines=True, dtype=False)
    with CleanRoomClient(
        info["target"],
        token=session.partner_files["token"].read_text().strip(),
        root_certificates=session.partner_files["ca.pem"],
        state_dir=session.directory / "partner-state",
        executor=SerialExecutor(),
        progress=False,
        default_region=info["default_phone_region"],
    ) as client:
        client.match(
            info["collaboration"],
            users,
            key=info["key_column"],
            identifiers=info["identifiers"],
            attributes=info["attributes"],
        )
