"""`cleanroom conformance check`: the SDK's own outputs pass every field; a wrong normalization is caught."""

from __future__ import annotations

import json
import re

import phonenumbers
import pytest
from typer.testing import CliRunner

from cleanroom.cli import app
from cleanroom.conformance import (
    Expected,
    check,
    conformance_data,
    expected_overlap,
    first_wrong_pair,
    reference_outputs,
    vectors,
)
from cleanroom.conformance import _normalized as reference_normalize
from cleanroom_client.identity import IdentifierType, InvalidIdentifierError, Normalizer

_LAX_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def _python_strip_and_lower(id_type: str, region: str, raw: str) -> tuple[str, str | None]:
    """The mistake the issue reports: Python's strip() and lower() and a lax email pattern."""
    value = raw.strip()
    if not value:
        return "missing", None
    if id_type == "email":
        value = value.lower()
        return ("valid", value) if _LAX_EMAIL.match(value) else ("invalid", None)
    if id_type == "device_id":
        return "valid", value.lower()
    if id_type == "phone":
        try:
            return "valid", Normalizer(region).normalize(IdentifierType.PHONE, value)
        except InvalidIdentifierError:
            return "invalid", None
    return "valid", raw


def test_the_sdks_own_outputs_pass_every_field():
    report = check(reference_outputs())
    assert report.passed
    assert len(report.results) > 250
    assert {section for section, _ in report.by_field()} == {
        "normalization",
        "prehashed",
        "pipeline",
        "points",
        "chain",
        "phone_metadata",
    }


def test_the_chain_section_is_optional_and_checked_when_present():
    outputs = reference_outputs()
    two_members_only = {k: v for k, v in outputs.items() if k != "chain"}
    assert check(two_members_only).passed
    assert "chain" not in {section for section, _ in check(two_members_only).by_field()}
    wrong = [dict(e, blinded="00" * 32) if e["hop"] == 1 and e["origin"] == "jd" else e for e in outputs["chain"]]
    report = check({**outputs, "chain": wrong})
    assert {(r.case[2], r.case[3]) for r in report.failures()} == {("jd", 1)}


def test_a_wrong_normalization_fails_exactly_where_it_differs():
    report = check(reference_outputs(_python_strip_and_lower))
    assert not report.passed
    failed = {(r.section, r.case[2], r.field) for r in report.failures() if r.section == "normalization"}
    assert ("normalization", "\u001calice@example.com", "result") in failed  # Python strips U+001C
    assert ("normalization", "\u00c4LICE@example.com", "normalized") in failed  # Unicode lower-cases the Ä
    assert ("normalization", "a@b.c.", "result") in failed  # the lax grammar takes a trailing dot
    assert ("normalization", "ÉCOLE-\u0130D-\u212a", "digest") in failed
    passed = {r.case[2] for r in report.results if r.passed and r.section == "normalization"}
    assert "bob@example.org" in passed


def test_missing_cases_and_fields_fail():
    outputs = reference_outputs()
    del outputs["points"]
    outputs["prehashed"][0].pop("digest")
    report = check(outputs)
    missing = [r for r in report.failures() if not r.present]
    assert {r.section for r in missing} == {"points", "prehashed"}
    assert len([r for r in missing if r.section == "prehashed"]) == 1


def test_the_command_reports_per_field_and_exits_by_outcome(tmp_path):
    good, bad, broken = tmp_path / "good.json", tmp_path / "bad.json", tmp_path / "broken.json"
    good.write_text(json.dumps(reference_outputs()))
    bad.write_text(json.dumps(reference_outputs(_python_strip_and_lower)))
    broken.write_text('{"normalization": {"not": "a list"}}')
    runner = CliRunner()
    ok = runner.invoke(app, ["conformance", "check", str(good)])
    assert ok.exit_code == 0, ok.output
    assert "fields pass" in ok.output
    assert "FAIL" not in ok.output
    failing = runner.invoke(app, ["conformance", "check", str(bad)])
    assert failing.exit_code == 1
    assert 'FAIL normalization ["email", "US", "\\u001calice@example.com"] result: expected "invalid", got "valid"' in (
        failing.output
    )
    for path in (broken, tmp_path / "absent.json"):
        refused = runner.invoke(app, ["conformance", "check", str(path)])
        assert refused.exit_code == 2
        assert "Traceback" not in refused.output


def test_conformance_data_has_overlap_on_every_type_and_traps():
    ref, partner = conformance_data(100, seed=1)
    expected = expected_overlap(ref, partner)
    assert expected.pairs == {"email": 20, "phone": 10, "device_id": 10}
    assert expected.own_set_size == 80  # a fifth of the partner's users carry no valid identifier
    assert expected.peer_set_size == 100
    with pytest.raises(ValueError, match="rows must be between"):
        conformance_data(5, seed=1)


def test_first_wrong_pair_names_the_first_pair_in_reference_order_whose_segment_is_wrong():
    expected = Expected(3, 3, {"email": 3}, {"r0": "p0", "r1": "p1", "r2": "p2"})
    truth = {"p0": "a", "p1": "b", "p2": "c"}
    reference_rows = {7: "r0", 3: "r1", 5: "r2", 1: "r3"}
    right = {10: "a", 11: "b", 12: "c"}
    pairs = [(5, 12), (3, 11), (7, 10)]
    order = ["r0", "r1", "r2", "r3"]
    assert first_wrong_pair(pairs, reference_rows, right, expected, truth, order) is None
    swapped = {10: "a", 11: "c", 12: "b"}  # r1's and r2's partners carry each other's segment
    message = first_wrong_pair(pairs, reference_rows, swapped, expected, truth, order)
    assert message is not None
    assert message.startswith("reference user r1 is paired with your row 11")
    assert "your user p1, segment 'b'" in message
    unexpected = first_wrong_pair([*pairs, (1, 13)], reference_rows, right | {13: "a"}, expected, truth, order)
    assert unexpected is not None
    assert unexpected.startswith("reference user r3")
    assert "should match none" in unexpected
    missing = first_wrong_pair(pairs, reference_rows, {10: "a", 11: "b"}, expected, truth, order)
    assert missing is not None
    assert "your row 12 (no row)" in missing or "your row 12, whose users-table row gives no row" in missing


def _metadata_without_uk_mobiles(id_type: str, region: str, raw: str) -> tuple[str, str | None]:
    """Another metadata release, as a partner might have it: the same, except that UK mobile numbers are invalid."""
    result, normalized = reference_normalize(id_type, region, raw)
    if id_type == "phone" and normalized is not None and normalized.startswith("+447"):
        return "invalid", None
    return result, normalized


def test_the_phone_metadata_section_covers_every_region_and_catches_other_metadata():
    cases = vectors("phone-metadata-v1.json")["cases"]
    assert vectors("phone-metadata-v1.json")["phone_metadata"] == "libphonenumber metadata of phonenumbers 9.0.43"
    assert {c["region"] for c in cases} == set(phonenumbers.SUPPORTED_REGIONS)
    assert {c["result"] for c in cases} == {"valid", "invalid"}
    report = check(reference_outputs(_metadata_without_uk_mobiles))
    failed = {r.case for r in report.failures()}
    assert failed
    assert {r.section for r in report.failures()} == {"phone_metadata"}
    assert all(c[0] in ("GB", "GG", "IM", "JE") for c in failed)


def test_a_directory_used_before_starts_a_new_run(tmp_path):
    from cleanroom.conformance import start_session

    first = start_session(tmp_path, rows=20, seed=1)
    first.stop()
    first_token = first.partner_files["token"].read_text()
    second = start_session(tmp_path, rows=20, seed=2)  # it ended in AlreadyExistsError (a traceback from the CLI)
    try:
        assert second.collaboration != first.collaboration
        info = json.loads(second.partner_files["session.json"].read_text())
        assert info["collaboration"] == second.collaboration
        assert second.partner_files["token"].read_text() != first_token  # rotated: the old one works no more
    finally:
        second.stop()
