"""One member holding both conversions and exposures: its exposures join on its own rows (found in red-team review).

Before, the engine joined the exposures on the other member's row numbers, so an unmatched brand row's exposure
moved another person's credit beyond the stated sensitivity. Removing that row must stay within it.
"""

from __future__ import annotations

import datetime as dt

from privacy_data import BRAND, MemberData, RecordingNoise

from cleanroom.analytics.queries import AttributionQuery

POLICY = """\
name: red team attribution
members:
  brand: {abilities: [contribute, query, receive_results]}
  platform: {abilities: [contribute]}
identifiers: [email]
tables:
  brand.users: {dimensions: {tier: [gold, basic]}}
  brand.conversions: {time: ts, measures: {value: [0, 100]}, max_per_person: 1}
  brand.exposures: {time: ts, dimensions: {campaign: [c1, c2], channel: [search, feed], kind: [impression, click]}}
  platform.users: {dimensions: {age: [young, old]}}
queries: [attribution]
min_group_size: 1
epsilon: {per_member_total: 1000, per_query_max: 50}
"""
TS = dt.datetime(2026, 11, 1, 12)


def _data() -> dict[str, MemberData]:
    # brand row 0: a matched person (e0) who converted; brand row 1: unmatched (e9), exposed to c1.
    brand = MemberData(
        [{"email": "e0", "tier": "gold"}, {"email": "e9", "tier": "basic"}],
        {
            "conversions": [{"user": 0, "ts": TS, "value": 10.0}],
            "exposures": [
                {"user": 1, "ts": TS - dt.timedelta(hours=1), "campaign": "c1", "channel": "feed", "kind": "click"}
            ],
        },
    )
    # platform row 1 is e0 (so the person's platform row number, 1, names brand row 1's exposures).
    platform = MemberData([{"email": "x", "age": "old"}, {"email": "e0", "age": "young"}])
    return {"brand": brand, "platform": platform}


def test_an_unmatched_brand_row_stays_within_the_stated_sensitivity(rooms) -> None:
    q = AttributionQuery("last_touch", 7, "campaign", 1.0)
    runs = []
    for data in (_data(), {**_data(), "brand": _data()["brand"].without_user(1)}):
        noise = RecordingNoise()
        room = rooms(POLICY, data, noise)
        room.queries.attribution(BRAND, "privacy-test", q)
        runs.append(noise.calls[0])
    diff = sum(abs(a - b) for a, b in zip(runs[0].counts, runs[1].counts, strict=True))
    assert diff <= runs[0].sensitivity, (
        f"removing an unmatched brand row moved {diff} thousandths; stated {runs[0].sensitivity}: {runs[0].counts} vs "
        f"{runs[1].counts}"
    )
