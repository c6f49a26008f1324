"""Chinese email addresses match across spellings, and every rejected value is reported (SDK and CLI).

A partner's test data lost 153 of 3,000 shared people to addresses with a non-ASCII local part, silently. Now
internationalized addresses are normalized (PROTOCOL.md section 1.3), and `match()` and `cleanroom-client match`
report per identifier type how many values were invalid, why, with one redacted example (first character and
length: never the value).
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from cleanroom_client.cli import app
from cleanroom_client.identity import BAD_LOCAL, NO_AT, redact
from cleanroom_client.matching import Rejected

POLICY: dict[str, Any] = {
    "name": "intl",
    "members": {
        "brand": {"abilities": ["contribute", "query", "receive_results"]},
        "platform": {"abilities": ["contribute"]},
    },
    "identifiers": ["email", "phone"],
    "tables": {"brand.users": {}, "platform.users": {}},
    "queries": ["overlap"],
    "min_group_size": 1,
    "epsilon": {"per_member_total": 2.0, "per_query_max": 1.0},
}
PEOPLE = 40


def brand_users() -> pd.DataFrame:
    """40 people with Chinese addresses, 5 with a space in the local part, 3 with no @; 10 phones, 2 not numbers."""
    emails = [f"用户{i}@例子.中国" for i in range(PEOPLE)]
    emails += [f"张 三{i}@qq.com" for i in range(5)] + [f"bad{i}" for i in range(3)]
    phones = [f"+86 138 0013 80{i:02d}" for i in range(10)] + [None] * (len(emails) - 12) + ["12", "call me"]
    return pd.DataFrame({"key": [f"b{i}" for i in range(len(emails))], "email": emails, "phone": phones})


def platform_users() -> pd.DataFrame:
    """The same 40 people, spelled in A-labels, or with a full-width domain and an ideographic full stop."""
    emails = [f"用户{i}@xn--fsqu00a.xn--fiqs8s" if i % 2 else f" 用户{i}@例子。中国\u3000" for i in range(PEOPLE)]
    return pd.DataFrame({"key": [f"p{i}" for i in range(PEOPLE)], "email": emails})


def start(client: Any, other: Any, name: str) -> str:
    c = client.create_collaboration(yaml.safe_dump({**POLICY, "name": name}), name)
    client.approve_policy(c.id)
    other.approve_policy(c.id)
    return c.id


def pairs(server: Any, cid: str) -> int:
    row = (
        server.room.store.of(cid)
        .cursor()
        .execute("SELECT count(*) FROM matches WHERE collab = ? AND period_to IS NULL", [cid])
        .fetchone()
    )
    return int(row[0])


def test_chinese_addresses_match_and_rejections_are_reported_with_a_redacted_example(server, make_client) -> None:
    b, p = make_client("brand"), make_client("platform")
    cid = start(b, p, "intl")
    users = brand_users()
    with ThreadPoolExecutor(2) as pool:
        mine = pool.submit(b.match, cid, users, "key", {"email": "email", "phone": "phone"}, wait_timeout=60)
        theirs = pool.submit(p.match, cid, platform_users(), "key", {"email": "email"}, wait_timeout=60)
        summary, _ = mine.result(), theirs.result()
    assert pairs(server, cid) == PEOPLE  # every Chinese address matched its other spelling
    email = summary.identifiers["email"]
    assert (email.sent, email.invalid, email.missing) == (PEOPLE, 8, 0)
    assert email.rejected == (
        Rejected(BAD_LOCAL, 5, redact("张 三0@qq.com")),
        Rejected(NO_AT, 3, redact("bad0")),
    )
    assert redact("张 三0@qq.com") == "张… (11 characters)"  # the first character and the length, nothing more
    phone = summary.identifiers["phone"]
    assert (phone.sent, phone.invalid, phone.missing) == (10, 2, len(users) - 12)
    assert sorted((r.count, r.example) for r in phone.rejected) == [(1, "1… (2 characters)"), (1, "c… (7 characters)")]
    assert all(r.reason.startswith("not a") for r in phone.rejected)
    assert summary.to_dict()["identifiers"]["email"]["rejected"][0]["count"] == 5


def test_the_cli_prints_how_many_were_rejected_why_and_an_example(server, tokens, pki, make_client, tmp_path) -> None:
    b, p = make_client("brand"), make_client("platform")
    cid = start(b, p, "intl-cli")
    brand_users().to_csv(tmp_path / "crm.csv", index=False)
    env = {
        "CLEANROOM_TARGET": f"localhost:{server.port}",
        "CLEANROOM_TOKEN": tokens["brand"],
        "CLEANROOM_CA": str(pki.ca),
        "CLEANROOM_STATE_DIR": str(tmp_path / "state-cli"),
        "COLUMNS": "120",
    }
    args = ["match", cid, "--users", str(tmp_path / "crm.csv"), "--key", "key", "--identifier", "email=email"]
    args += ["--identifier", "phone=phone"]
    with ThreadPoolExecutor(1) as pool:  # the platform through the SDK (CliRunner owns this thread's stdout)
        theirs = pool.submit(p.match, cid, platform_users(), "key", {"email": "email"}, wait_timeout=60)
        r = CliRunner().invoke(app, ["--no-progress", *args], env=env)
        theirs.result()
    assert r.exit_code == 0, r.output
    assert f"email: 5 invalid: {BAD_LOCAL} (e.g. 张… (11 characters))" in r.output
    assert f"email: 3 invalid: {NO_AT} (e.g. b… (4 characters))" in r.output
    assert "张 三" not in r.output  # never a value
    assert "bad0" not in r.output

    # As JSON: the counts per type, and each reason with its count and example.
    r = CliRunner().invoke(app, ["-o", "json", "--no-progress", *args], env=env)  # a repeat resumes: same counts
    assert r.exit_code == 0, r.output
    rows = {row["identifier"]: row for row in json.loads(r.output)["rows"]}
    assert rows["email"]["invalid"] == 8
    assert rows["email"]["rejected"] == [
        {"reason": BAD_LOCAL, "count": 5, "example": "张… (11 characters)"},
        {"reason": NO_AT, "count": 3, "example": "b… (4 characters)"},
    ]


def test_text_that_is_not_unicode_is_refused_before_anything_is_sent(server, make_client) -> None:
    """A lone surrogate (U+D800–U+DFFF) has no UTF-8 form, so it can be neither hashed nor sent.

    Only a caller's own DataFrame can hold one (files are read as UTF-8). It used to stop the match half-way, inside
    the upload, with Python's UnicodeEncodeError; now the plan refuses it first, naming the column and row (never the
    value), and nothing reaches the server.
    """
    b, p = make_client("brand"), make_client("platform")
    cid = start(b, p, "intl-surrogate")
    users = brand_users().astype(object)  # pandas' own string columns cannot hold one: a column of objects can
    users.loc[7, "email"] = "\ud800x@qq.com"
    with pytest.raises(ValueError, match=r"column 'email', row 7: text that is not valid Unicode") as refused:
        b.match(cid, users, "key", {"email": "email"}, wait_timeout=5)
    assert "qq.com" not in str(refused.value)
    users = brand_users()
    users["tier"] = pd.Series(["gold"] * (len(users) - 1) + ["\udfff"], dtype=object)
    with pytest.raises(ValueError, match=rf"column 'tier', row {len(users) - 1}: text that is not valid Unicode"):
        b.match(cid, users, "key", {"email": "email"}, attributes=["tier"], wait_timeout=5)
    events = pd.DataFrame(
        {"key": ["b0"], "ts": [pd.Timestamp("2026-11-01")], "note": pd.Series(["\ud83d"], dtype=object)}
    )
    with pytest.raises(ValueError, match=r"table 'conversions', column 'note', row 0: text that is not valid Unicode"):
        b.match(cid, brand_users(), "key", {"email": "email"}, events={"conversions": events}, wait_timeout=5)
    assert pairs(server, cid) == 0
    sent = (
        server.room.store.of(cid)
        .cursor()
        .execute("SELECT count(*) FROM audit_log WHERE collab = ? AND action = 'upload.start'", [cid])
        .fetchone()
    )
    assert sent == (0,)  # no upload ever started
