"""Synthetic data of a brand and two platforms (a commerce platform, `jd`, and a social one, `tencent`).

For the three-member demo and tests. Each of the brand's customers is a user of jd, of tencent, of both or of
neither (independently, so every region of the Venn diagram is populated); each platform also has users the brand
does not know. Identifiers are written differently on each side (case and spaces in emails, national vs. E.164
phones), so matching depends on normalization, and some shared people match on one identifier only. Truth: the
`truth` frame names, for every brand customer, its jd user and its tencent user (or none).

This is test data: numpy's generator is fine here. It is never used for privacy noise.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .synthetic import AGE_BANDS, CHANNELS, KINDS, STAGES, TIERS, member_arguments

HUB, COMMERCE, SOCIAL = "brand", "jd", "tencent"
PLATFORMS = (COMMERCE, SOCIAL)
INTERESTS = ("beauty", "sports", "gaming", "travel")
PLATFORM_CAMPAIGNS = {COMMERCE: ("jd-618", "jd-1111"), SOCIAL: ("wx-moments", "wx-channels")}

#: A policy for the brand and both platforms: the brand is the hub; jd may query with the brand's data only;
#: activation lists go to tencent.
POLICY = """\
name: Brand x JD x Tencent (demo)
members:
  brand:
    abilities: [contribute, query, receive_results]
  jd:
    abilities: [contribute, query, receive_results, receive_audiences]
    reads: [brand]
  tencent:
    abilities: [contribute, receive_audiences]
hub: brand
identifiers: [email, phone]
tables:
  brand.users:
    dimensions:
      tier: [gold, silver, basic]
  brand.conversions:
    time: ts
    measures:
      value: [0, 500]
    max_per_person: 3
  jd.users:
    dimensions:
      stage_4a: [aware, appeal, act, advocate]
  jd.exposures:
    time: ts
    dimensions:
      campaign: [jd-618, jd-1111]
      channel: [search, feed, video]
      kind: [impression, click]
  tencent.users:
    dimensions:
      age_band: ["18-24", "25-34", "35-44", "45+"]
      interest: [beauty, sports, gaming, travel]
  tencent.exposures:
    time: ts
    dimensions:
      campaign: [wx-moments, wx-channels]
      channel: [search, feed, video]
      kind: [impression, click]
queries: [overlap, venn, funnel, segment_insight, value, attribution, lookalike, activation]
activation:
  recipient: tencent
  dimensions: [brand.tier, jd.stage_4a]
  min_size: 50
min_group_size: 10
epsilon:
  per_member_total: 50
  per_query_max: 5
delta:
  per_member_total: 1.0e-6
  per_query_max: 1.0e-7
"""


@dataclass(frozen=True)
class PlatformsData:
    """The three members' tables and the truth: each brand customer's jd user and tencent user (or None)."""

    brand_users: pd.DataFrame
    brand_conversions: pd.DataFrame
    jd_users: pd.DataFrame
    jd_exposures: pd.DataFrame
    tencent_users: pd.DataFrame
    tencent_exposures: pd.DataFrame
    #: customer_id, tier, jd_user (or None), tencent_user (or None).
    truth: pd.DataFrame


def _phones(person: np.ndarray) -> tuple[list[str], list[str]]:
    """Spaced international and E.164 forms of one distinct Chinese mobile number per person id."""
    digits = [f"139{p:08d}" for p in person]
    return [f"+86 {d[:3]} {d[3:7]} {d[7:]}" for d in digits], [f"+86{d}" for d in digits]


def generate(brand_users: int = 3000, seed: int = 11, p_jd: float = 0.5, p_tencent: float = 0.4) -> PlatformsData:
    """The brand's `brand_users` customers, about `p_jd` of them on jd and `p_tencent` on tencent, independently."""
    rng = np.random.default_rng(seed)
    n = brand_users
    brand_people = np.arange(n)
    on_jd = rng.random(n) < p_jd
    on_tencent = rng.random(n) < p_tencent
    jd_people = np.concatenate([brand_people[on_jd], np.arange(n, n + n // 2)])
    tencent_people = np.concatenate([brand_people[on_tencent], np.arange(2 * n, 2 * n + n // 2)])

    national, _ = _phones(brand_people)
    brand = pd.DataFrame(
        {
            "customer_id": [f"C{p:07d}" for p in brand_people],
            "email": [f"  Shopper.{p}@Example.COM " for p in brand_people],
            "mobile": national,
            "tier": rng.choice(TIERS, size=n, p=[0.15, 0.35, 0.5]),
        }
    )

    def platform(people: np.ndarray, prefix: str, email_only: float) -> pd.DataFrame:
        _, e164 = _phones(people)
        phone = np.array(e164, dtype=object)
        phone[rng.random(len(people)) < email_only] = None  # these match on the email alone
        email = np.array([f"shopper.{p}@example.com" for p in people], dtype=object)
        phone_only = rng.random(len(people)) < 0.1
        email[phone_only & (phone != None)] = None  # noqa: E711 - elementwise; these match on the phone alone
        return pd.DataFrame({"user_id": [f"{prefix}{p:07d}" for p in people], "email": email, "phone": phone})

    jd = platform(jd_people, "jd-", 0.2)
    jd["stage_4a"] = rng.choice(STAGES, size=len(jd), p=[0.4, 0.3, 0.2, 0.1])
    tencent = platform(tencent_people, "wx-", 0.3).rename(columns={"user_id": "openid"})
    tencent["age_band"] = rng.choice(AGE_BANDS, size=len(tencent))
    tencent["interest"] = rng.choice(INTERESTS, size=len(tencent))

    def shuffled(frame: pd.DataFrame) -> pd.DataFrame:
        return frame.iloc[rng.permutation(len(frame))].reset_index(drop=True)

    start = dt.datetime(2026, 11, 1)

    def exposures(ids: pd.Series, member: str) -> pd.DataFrame:
        count = rng.poisson(1.5, size=len(ids))
        who = np.repeat(ids.to_numpy(), count)
        return pd.DataFrame(
            {
                "user_id" if member == COMMERCE else "openid": who,
                "ts": [start + dt.timedelta(hours=float(h)) for h in rng.uniform(0, 24 * 20, size=len(who))],
                "campaign": rng.choice(PLATFORM_CAMPAIGNS[member], size=len(who)),
                "channel": rng.choice(CHANNELS, size=len(who)),
                "kind": rng.choice(KINDS, size=len(who), p=[0.8, 0.2]),
            }
        )

    buyers = brand["customer_id"].to_numpy()[rng.random(n) < 0.3]
    conversions = pd.DataFrame(
        {
            "customer_id": buyers,
            "ts": [start + dt.timedelta(hours=float(h)) for h in rng.uniform(24 * 5, 24 * 25, size=len(buyers))],
            "value": np.round(rng.uniform(20, 400, size=len(buyers)), 2),
        }
    )
    truth = pd.DataFrame(
        {
            "customer_id": brand["customer_id"],
            "tier": brand["tier"],
            "jd_user": [f"jd-{p:07d}" if on else None for p, on in zip(brand_people, on_jd, strict=True)],
            "tencent_user": [f"wx-{p:07d}" if on else None for p, on in zip(brand_people, on_tencent, strict=True)],
        }
    )
    return PlatformsData(
        brand_users=shuffled(brand),
        brand_conversions=conversions,
        jd_users=shuffled(jd),
        jd_exposures=exposures(jd["user_id"], COMMERCE),
        tencent_users=shuffled(tencent),
        tencent_exposures=exposures(tencent["openid"], SOCIAL),
        truth=truth,
    )


def match_arguments(data: PlatformsData) -> dict[str, dict[str, object]]:
    """Each member's `CleanRoomClient.match()` keyword arguments for this data."""
    brand_events = {"conversions": data.brand_conversions}
    return {
        HUB: member_arguments(data.brand_users, "customer_id", "mobile", ["tier"], brand_events),
        COMMERCE: member_arguments(data.jd_users, "user_id", "phone", ["stage_4a"], {"exposures": data.jd_exposures}),
        SOCIAL: member_arguments(
            data.tencent_users, "openid", "phone", ["age_band", "interest"], {"exposures": data.tencent_exposures}
        ),
    }


def write_sample_files(directory: Path, brand_users: int) -> list[Path]:
    """Write each member's files as it would hold them, and no policy: each member drafts its side from its files.

    The brand's crm.csv (customer_id, email, mobile, tier) and orders.csv; jd's jd_users.csv (user_id, email, phone,
    stage_4a) and jd_exposures.csv; tencent's tencent_users.csv (openid, email, phone, age_band, interest) and
    tencent_exposures.csv. The truth is not written.
    """
    data = generate(brand_users=brand_users)
    directory.mkdir(parents=True, exist_ok=True)
    files = {
        "crm.csv": data.brand_users,
        "orders.csv": data.brand_conversions,
        f"{COMMERCE}_users.csv": data.jd_users,
        f"{COMMERCE}_exposures.csv": data.jd_exposures,
        f"{SOCIAL}_users.csv": data.tencent_users,
        f"{SOCIAL}_exposures.csv": data.tencent_exposures,
    }
    for name, frame in files.items():
        frame.to_csv(directory / name, index=False)
    return [directory / name for name in files]


def venn_truth(data: PlatformsData) -> dict[str, int]:
    """The exact Venn intersections (`brand`, `brand∩jd`, `brand∩tencent`, `brand∩jd∩tencent`), from the truth."""
    t = data.truth
    jd, wx = t["jd_user"].notna(), t["tencent_user"].notna()
    return {
        HUB: len(t),
        f"{HUB}∩{COMMERCE}": int(jd.sum()),
        f"{HUB}∩{SOCIAL}": int(wx.sum()),
        f"{HUB}∩{COMMERCE}∩{SOCIAL}": int((jd & wx).sum()),
    }
