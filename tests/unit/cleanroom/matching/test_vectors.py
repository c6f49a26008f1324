"""The published vectors hold on the server's side too: wire examples decode and pass its checks, the join vectors
are the server's join, the mask derivation is as written, and `make test` fails on stale vectors."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from importlib.resources import files
from pathlib import Path

import pytest
from google.protobuf import json_format

from cleanroom.matching.join import join_of_rows
from cleanroom.matching.relay import _chunk_rows
from cleanroom.matching.tables import _check, _decode
from cleanroom_client.chain_mask import ORDER, as_scalar, clamp
from cleanroom_client.curve import check_points
from cleanroom_client.identity import IdentifierType
from cleanroom_client.policy import parse_policy
from cleanroom_client.protocol import matching_pb2 as pb

VECTORS = files("cleanroom_client") / "vectors"
WIRE = json.loads((VECTORS / "wire-v1.json").read_text())
POINTS = json.loads((VECTORS / "points-v1.json").read_text())


@pytest.mark.parametrize("example", WIRE["messages"], ids=lambda e: e["name"])
def test_each_wire_example_is_its_json_serialized(example):
    cls = getattr(pb, example["message"].rsplit(".", 1)[1])
    decoded = cls.FromString(bytes.fromhex(example["hex"]))
    assert decoded == json_format.ParseDict(example["json"], cls())


def test_the_present_bitmap_example_names_rows_1_and_4():
    [chunk] = [m for m in WIRE["messages"] if m["name"].startswith("points chunk with `present`")]
    req = pb.UploadBlindedPointsRequest.FromString(bytes.fromhex(chunk["hex"]))
    assert _chunk_rows(req.first_row, req.present, len(req.points) // 32, "example").tolist() == [1, 4]
    assert req.total_rows == 10
    assert req.last


@pytest.mark.parametrize("example", [m for m in WIRE["messages"] if m["name"].startswith("table chunk")])
def test_table_examples_pass_the_servers_checks_under_their_policy(example):
    policy = parse_policy(WIRE["policy"])
    req = pb.UploadTableRequest.FromString(bytes.fromhex(example["hex"]))
    member = example["name"].split(": ")[1].split(".")[0]
    spec = policy.table(member, req.table)
    assert spec is not None
    checked = _check(_decode(req.arrow_ipc, "example"), spec, "example")
    assert set(checked.column_names) <= {"row_id", *spec.columns}


def test_point_vectors_agree_with_the_servers_validation():
    codes = check_points(b"".join(bytes.fromhex(c["point"]) for c in POINTS["cases"])).tolist()
    assert [code == 0 for code in codes] == [c["accept"] for c in POINTS["cases"]]
    assert all(c["tag"] == "00" * 8 for c in POINTS["cases"] if not c["accept"])


# -- the join (PROTOCOL.md section 6) and the spec's statements checked against the code ------------------------------

ROOT = Path(__file__).resolve().parents[4]
JOIN = json.loads((VECTORS / "join-v1.json").read_text())
CHAIN = json.loads((VECTORS / "chain-v1.json").read_text())


def _rows(rows: list[dict[str, str]]) -> list[dict[IdentifierType, int]]:
    """Key labels as distinct non-zero integers (a label stands for one doubly blinded tag)."""
    return [
        {IdentifierType(t): 1 + int(hashlib.sha256(k.encode()).hexdigest()[:12], 16) for t, k in r.items()}
        for r in rows
    ]


def _rule_as_written(a: list[dict[str, str]], b: list[dict[str, str]], types: list[str]) -> set[tuple[int, int]]:
    """Section 6 as its text states it: keys on exactly one row of each side link; a pair is a component {a, b}."""
    links = set()
    for t in types:
        on_a = [i for i, r in enumerate(a) if t in r]
        for i in on_a:
            same_a = [x for x in on_a if a[x][t] == a[i][t]]
            same_b = [j for j, r in enumerate(b) if r.get(t) == a[i][t]]
            if len(same_a) == 1 and len(same_b) == 1:
                links.add((i, same_b[0]))
    return {
        (i, j) for i, j in links if {y for x, y in links if x == i} == {j} and {x for x, y in links if y == j} == {i}
    }


@pytest.mark.parametrize("case", JOIN["cases"], ids=lambda c: c["name"])
def test_each_join_vector_is_the_servers_join_and_the_rule_as_written(case):
    types = [IdentifierType(t) for t in case["types"]]
    found = join_of_rows(_rows(case["a"]), _rows(case["b"]), types)
    assert {(a, b): t.value for (a, b), t in found.items()} == {(p[0], p[1]): p[2] for p in case["pairs"]}
    assert set(found) == _rule_as_written(case["a"], case["b"], case["types"])


def test_the_join_vectors_show_duplicate_keys_pairing_nobody():
    """Where a rank rule would pair min(k, m) rows, the real rule pairs none of them."""
    cases = {c["name"]: c for c in JOIN["cases"]}
    assert len(cases["duplicate key on both sides"]["a"]) == 2
    assert cases["duplicate key on both sides"]["pairs"] == []
    assert cases["duplicate key on one side"]["pairs"] == []
    assert cases["a conflict is not settled by priority"]["pairs"] == []


def test_the_committed_vectors_and_protocol_tables_are_what_the_code_produces():
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_vectors.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_spec_states_the_join_rule_and_no_rank_pairing():
    protocol, readme = (ROOT / "protos" / "PROTOCOL.md").read_text(), (ROOT / "README.md").read_text()
    for text in (protocol, readme):
        assert "by rank" not in text
        assert "min(k, m)" not in text
    assert "exactly one row of each member" in protocol


@pytest.mark.parametrize("member", sorted(CHAIN["members"]))
def test_the_chain_mask_derivation_reads_sha512_little_endian(member):
    spec = CHAIN["members"][member]
    key = bytes.fromhex(spec["key"])
    derived = spec["mask"]
    data = b"cleanroom-v1 chain mask\x00" + key + derived["counter"].to_bytes(4, "big")
    assert hashlib.sha512(data).hexdigest() == derived["sha512"]
    r = int.from_bytes(bytes.fromhex(derived["sha512"]), "little") % ORDER
    assert r == int(derived["r"])
    assert int.from_bytes(bytes.fromhex(derived["sha512"]), "big") % ORDER != r
    assert (as_scalar(clamp(key) * r), as_scalar(pow(r, -1, ORDER))) == (
        bytes.fromhex(spec["upload_scalar"]),
        bytes.fromhex(spec["unmask_scalar"]),
    )
