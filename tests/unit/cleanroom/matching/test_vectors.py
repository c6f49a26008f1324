"""The published vectors hold on the server's side too: wire examples decode and pass its checks."""

from __future__ import annotations

import json
from importlib.resources import files

import pytest
from google.protobuf import json_format

from cleanroom.matching.relay import _chunk_rows
from cleanroom.matching.tables import _check, _decode
from cleanroom_client.curve import check_points
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
