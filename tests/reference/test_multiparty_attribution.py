"""Attribution across two platforms' exposures, against a pandas reference (three members, in-process).

The brand's conversions are credited to the touches of every platform that reached the same person: one person
however many platforms know them (de-duplicated reach), the brand's users matched with at least one platform. Last
touch without noise equals a plain pandas reading of the same rule; a conversion whose latest touch is on jd goes to
jd's campaign even when tencent reached the person too.
"""

from __future__ import annotations

import pandas as pd
from privacy_data import BRAND, RecordingNoise
from test_venn_reference import members

from cleanroom.analytics.queries import AttributionQuery
from cleanroom.devtools import synthetic_platforms as sp

C = "privacy-test"
LOOKBACK = 30


def with_events(data: sp.PlatformsData) -> dict:
    """The members of `test_venn_reference.members`, with the brand's conversions and both platforms' exposures."""
    out = members(data)
    index = {
        "brand": {k: i for i, k in enumerate(data.brand_users["customer_id"])},
        "jd": {k: i for i, k in enumerate(data.jd_users["user_id"])},
        "tencent": {k: i for i, k in enumerate(data.tencent_users["openid"])},
    }
    out["brand"].events["conversions"] = [
        {"user": index["brand"][r["customer_id"]], "ts": r["ts"], "value": r["value"]}
        for r in data.brand_conversions.to_dict("records")
    ]
    for member, frame, key in (("jd", data.jd_exposures, "user_id"), ("tencent", data.tencent_exposures, "openid")):
        out[member].events["exposures"] = [
            {"user": index[member][r[key]], **{c: r[c] for c in ("ts", "campaign", "channel", "kind")}}
            for r in frame.to_dict("records")
        ]
    return out


def reference_last_touch(data: sp.PlatformsData, cap: int) -> dict[str, int]:
    """Conversions per campaign of the latest touch within the lookback, on either platform; `none` without one."""
    t = data.truth
    reached = t[t["jd_user"].notna() | t["tencent_user"].notna()]
    touches = pd.concat(
        [
            data.jd_exposures.merge(reached[["customer_id", "jd_user"]], left_on="user_id", right_on="jd_user"),
            data.tencent_exposures.merge(
                reached[["customer_id", "tencent_user"]], left_on="openid", right_on="tencent_user"
            ),
        ]
    )[["customer_id", "ts", "campaign", "channel", "kind"]]
    conversions = data.brand_conversions[data.brand_conversions["customer_id"].isin(reached["customer_id"])]
    conversions = conversions.sort_values(["customer_id", "ts", "value"]).groupby("customer_id").head(cap)
    out: dict[str, int] = {}
    for customer, ts in zip(conversions["customer_id"], conversions["ts"], strict=True):
        when = pd.Timestamp(ts)
        mine = touches[
            (touches["customer_id"] == customer)
            & (touches["ts"] <= when)
            & (touches["ts"] >= when - pd.Timedelta(days=LOOKBACK))
        ]
        if mine.empty:
            campaign = "none"
        else:
            order = mine.assign(click=mine["kind"] == "click").sort_values(["ts", "click", "campaign", "channel"])
            campaign = str(order.iloc[-1]["campaign"])
        out[campaign] = out.get(campaign, 0) + 1
    return out


def test_last_touch_credits_both_platforms_campaigns_as_one_reach(rooms):
    data = sp.generate(brand_users=500, seed=5)
    noise = RecordingNoise()
    room = rooms(sp.POLICY, with_events(data), noise)
    q = AttributionQuery("last_touch", LOOKBACK, "campaign", 2.0)
    answer = room.queries.attribution(BRAND, C, q)
    got = {c.keys[0]: c.value for c in answer.cells if c.measure == "attributed_conversions"}
    expected = reference_last_touch(data, cap=3)
    assert set(got) == {*sp.PLATFORM_CAMPAIGNS["jd"], *sp.PLATFORM_CAMPAIGNS["tencent"], "none"}
    assert got == {k: float(expected.get(k, 0)) if expected.get(k, 0) >= 10 else 0.0 for k in got}
    assert all(expected.get(c, 0) >= 10 for cs in sp.PLATFORM_CAMPAIGNS.values() for c in cs)  # both platforms credited
    # the stated sensitivity is that of the population, the hub's users matched with either of two platforms:
    # 2 x k x c people (k = 2 joins, c = 4 for email and phone), times 1000 x cap thousandths or cap x 50000 cents
    assert {call.sensitivity for call in noise.calls} == {2 * 2 * 4 * 1000 * 3, 2 * 2 * 4 * 3 * 50000}
