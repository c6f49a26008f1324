"""Synthetic brand and platform data with a known ground truth, for the demo, the tests and the benchmarks.

A population of people is split into brand-only, platform-only and shared people. Shared people are written
differently on each side (case and spaces in emails, national vs. E.164 phones) so matching depends on
normalization, and some match on one identifier only: on the phone alone, the brand's email differs from the
platform's; on the email alone, the platform lacks the phone. A few identifiers are invalid on purpose. Truth:
exactly `shared` brand customers are platform users, and `truth` names the pairs.

This is test data: numpy's generator is fine here. It is never used for privacy noise.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa

if TYPE_CHECKING:
    from ..room import Room

AREA_CODES = (212, 312, 415, 617, 646, 702, 718, 305, 206, 512)
TIERS = ("gold", "silver", "basic")
AGE_BANDS = ("18-24", "25-34", "35-44", "45+")
STAGES = ("aware", "appeal", "act", "advocate")
FLOW_START, FLOW_END = "2026-10-01", "2026-11-01"
CAMPAIGNS = ("c-always-on", "c-2026-11", "c-2026-10")
LIFT_CAMPAIGN = "c-2026-11"
CHANNELS = ("search", "feed", "video")
KINDS = ("impression", "click")


@dataclass(frozen=True)
class SyntheticConfig:
    """Sizes and mix of the synthetic data."""

    brand_users: int = 10_000
    platform_users: int = 20_000
    shared: int = 3_000
    #: Of the shared people: fraction matching on phone only, and on email only.
    phone_only: float = 1 / 6
    email_only: float = 1 / 6
    #: Fraction of brand rows with a malformed email.
    invalid_email: float = 0.01
    conversions_per_user: float = 0.4
    seed: int = 7

    def __post_init__(self) -> None:
        if self.shared > min(self.brand_users, self.platform_users):
            raise ValueError("shared cannot exceed either side's number of users")
        if not 0 <= self.phone_only + self.email_only <= 1:
            raise ValueError("phone_only + email_only must lie in [0, 1]")


@dataclass(frozen=True)
class SyntheticData:
    """Both members' tables and the ground truth (brand customer_id, platform user_id) of the shared people.

    `platform_stage_history` has one row per user and snapshot date (FLOW_START, FLOW_END) on which the user had a
    4A stage; the users table's `stage_4a` is the stage on FLOW_END.
    """

    brand_users: pd.DataFrame
    brand_conversions: pd.DataFrame
    platform_users: pd.DataFrame
    platform_stage_history: pd.DataFrame
    truth: pd.DataFrame
    platform_exposures: pd.DataFrame = field(default_factory=pd.DataFrame)
    platform_test_groups: pd.DataFrame = field(default_factory=pd.DataFrame)
    #: Per row of `brand_conversions`: True for the orders the planted lift campaign caused (the ones its exposed
    #: people would not have placed without it), so a benchmark can compute the campaign's true effect on the
    #: exposed (each exposed person's revenue with and without these orders). Not part of either member's data.
    campaign_orders: pd.Series = field(default_factory=lambda: pd.Series(dtype=bool))


def _phone(person: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """National and E.164 forms of one distinct US number per person id."""
    area = np.array(AREA_CODES)[person % len(AREA_CODES)]
    line = 2_000_000 + person // len(AREA_CODES)
    national = [f"({a}) {n // 10000}-{n % 10000:04d}" for a, n in zip(area, line, strict=True)]
    e164 = [f"+1{a}{n}" for a, n in zip(area, line, strict=True)]
    return np.array(national, dtype=object), np.array(e164, dtype=object)


def generate(config: SyntheticConfig | None = None) -> SyntheticData:
    """Generate both members' data for `config`."""
    cfg = config or SyntheticConfig()
    rng = np.random.default_rng(cfg.seed)
    n_brand_only = cfg.brand_users - cfg.shared
    n_platform_only = cfg.platform_users - cfg.shared
    people = rng.permutation(cfg.shared + n_brand_only + n_platform_only)
    shared = people[: cfg.shared]
    brand_people = np.concatenate([shared, people[cfg.shared : cfg.shared + n_brand_only]])
    platform_people = np.concatenate([shared, people[cfg.shared + n_brand_only :]])

    n_phone_only = round(cfg.shared * cfg.phone_only)
    n_email_only = round(cfg.shared * cfg.email_only)

    b_national, _ = _phone(brand_people)
    brand_email = np.array([f"  Person.{p}@Example.COM " for p in brand_people], dtype=object)
    bad = rng.random(cfg.brand_users) < cfg.invalid_email
    bad[: cfg.shared] = False  # keep the truth exact: shared people's identifiers stay valid
    brand_email[bad] = "not-an-email"
    brand_order = rng.permutation(cfg.brand_users)
    brand_users = pd.DataFrame(
        {
            "customer_id": [f"C{i:08d}" for i in range(cfg.brand_users)],
            "email": brand_email[brand_order],
            "mobile": b_national[brand_order],
            "tier": rng.choice(TIERS, size=cfg.brand_users, p=[0.1, 0.3, 0.6]),
        }
    )
    brand_id_of_person = dict(zip(brand_people[brand_order], brand_users["customer_id"], strict=True))

    _, p_e164 = _phone(platform_people)
    platform_email = np.array([f"person.{p}@example.com" for p in platform_people], dtype=object)
    platform_email[:n_phone_only] = [f"other.{p}@example.net" for p in platform_people[:n_phone_only]]
    p_e164 = p_e164.copy()
    p_e164[n_phone_only : n_phone_only + n_email_only] = None
    platform_order = rng.permutation(cfg.platform_users)
    # 4A stage on the two snapshot dates: -1 is no stage; people mostly stay or move one step on.
    start = rng.choice(np.arange(-1, 4), size=cfg.platform_users, p=[0.35, 0.3, 0.2, 0.1, 0.05])
    step = rng.choice([-1, 0, 1], size=cfg.platform_users, p=[0.1, 0.6, 0.3])
    end = np.where(start < 0, rng.choice([-1, 0], size=cfg.platform_users, p=[0.7, 0.3]), np.clip(start + step, 0, 3))
    stage_names = np.array(STAGES, dtype=object)
    end_stage = np.array([stage_names[e] if e >= 0 else None for e in end], dtype=object)
    user_ids = np.array([f"U{i:08d}" for i in range(cfg.platform_users)], dtype=object)
    platform_users = pd.DataFrame(
        {
            "user_id": user_ids,
            "email": platform_email[platform_order],
            "phone": p_e164[platform_order],
            "age_band": rng.choice(AGE_BANDS, size=cfg.platform_users),
            "stage_4a": end_stage,
        }
    )
    history = pd.concat(
        [
            pd.DataFrame(
                {"user_id": user_ids[s >= 0], "date": dt.date.fromisoformat(day), "stage_4a": stage_names[s[s >= 0]]}
            )
            for s, day in ((start, FLOW_START), (end, FLOW_END))
        ],
        ignore_index=True,
    )
    platform_id_of_person = dict(zip(platform_people[platform_order], platform_users["user_id"], strict=True))
    # The lookalike signal: the brand's gold customers are platform users who visit a little more, skew to 25-34,
    # and (below) see more ads, click more often and watch more video; no single feature separates them.
    gold_people = {p for p, t in zip(brand_people[brand_order], brand_users["tier"], strict=True) if t == "gold"}
    is_gold = np.array([p in gold_people for p in platform_people[platform_order]])
    platform_users["visits_30d"] = np.where(
        is_gold, rng.poisson(14, cfg.platform_users), rng.poisson(8, cfg.platform_users)
    )
    age = platform_users["age_band"].to_numpy().copy()
    age[is_gold & (rng.random(cfg.platform_users) < 0.4)] = "25-34"
    platform_users["age_band"] = age

    truth = pd.DataFrame(
        {
            "customer_id": [brand_id_of_person[p] for p in shared],
            "user_id": [platform_id_of_person[p] for p in shared],
        }
    )
    first_day = np.datetime64("2026-10-01T00:00:00")
    seconds = 61 * 24 * 3600  # October and November

    # Exposures: a few per platform user over both months, from the always-on and the October campaign; the
    # November campaign reaches only its exposed test group. Test groups: 80% exposed, 20% holdout.
    # Gold customers (the lookalike's seeds) see twice the ads, mostly video, and click more than twice as often.
    n_exp = rng.poisson(np.where(is_gold, 5.0, 2.0))
    exp_users = np.repeat(user_ids, n_exp)
    exp_gold = np.repeat(is_gold, n_exp)
    channel_p = np.where(exp_gold[:, None], [[0.2, 0.2, 0.6]], [[0.4, 0.4, 0.2]]).cumsum(axis=1)
    click_p = np.where(exp_gold, 0.5, 0.2)
    exposures = pd.DataFrame(
        {
            "user_id": exp_users,
            "ts": first_day + rng.integers(0, seconds, len(exp_users)).astype("timedelta64[s]"),
            "campaign": rng.choice(np.array(CAMPAIGNS[::2], dtype=object), size=len(exp_users)),
            "channel": np.array(CHANNELS, dtype=object)[(rng.random((len(exp_users), 1)) > channel_p).sum(axis=1)],
            "kind": np.where(rng.random(len(exp_users)) < click_p, KINDS[1], KINDS[0]).astype(object),
        }
    )
    group = np.where(rng.random(cfg.platform_users) < 0.8, "exposed", "holdout").astype(object)
    test_groups = pd.DataFrame({"user_id": user_ids, "campaign": LIFT_CAMPAIGN, "test_group": group})
    exposed_ids = user_ids[group == "exposed"]
    n_campaign = rng.poisson(1.5, len(exposed_ids))
    campaign_users = np.repeat(exposed_ids, n_campaign)
    november = np.datetime64("2026-11-01T00:00:00")
    campaign_exposures = pd.DataFrame(
        {
            "user_id": campaign_users,
            "ts": november + rng.integers(0, 25 * 24 * 3600, len(campaign_users)).astype("timedelta64[s]"),
            "campaign": LIFT_CAMPAIGN,
            "channel": rng.choice(np.array(CHANNELS, dtype=object), size=len(campaign_users)),
            "kind": rng.choice(np.array(KINDS, dtype=object), size=len(campaign_users), p=[0.7, 0.3]),
        }
    )
    exposures = pd.concat([exposures, campaign_exposures], ignore_index=True)

    # Conversions: a baseline for every customer, plus the planted effect: shared people whose platform account
    # saw the November campaign convert again, within three days of their first campaign exposure, half of the time.
    n_conv = round(cfg.brand_users * cfg.conversions_per_user)
    baseline = pd.DataFrame(
        {
            "customer_id": brand_users["customer_id"].to_numpy()[rng.integers(0, cfg.brand_users, n_conv)],
            "ts": first_day + rng.integers(0, seconds, n_conv).astype("timedelta64[s]"),
            "value": rng.gamma(2.0, 40.0, n_conv).round(2),
        }
    )
    brand_of_user = dict(zip(truth["user_id"], truth["customer_id"], strict=True))
    first_seen = campaign_exposures.groupby("user_id")["ts"].min()
    lifted = first_seen[[u in brand_of_user for u in first_seen.index]]
    lifted = lifted[rng.random(len(lifted)) < 0.5]
    extra = pd.DataFrame(
        {
            "customer_id": [brand_of_user[u] for u in lifted.index],
            "ts": lifted.to_numpy() + rng.integers(0, 3 * 24 * 3600, len(lifted)).astype("timedelta64[s]"),
            "value": rng.gamma(2.0, 40.0, len(lifted)).round(2),
        }
    )
    conversions = pd.concat([baseline, extra], ignore_index=True).sort_values("ts")
    caused = pd.Series(conversions.index >= len(baseline), name="campaign")
    conversions = conversions.reset_index(drop=True)
    conversions["ts"] = conversions["ts"].astype("datetime64[us]")
    exposures["ts"] = exposures["ts"].astype("datetime64[us]")
    return SyntheticData(brand_users, conversions, platform_users, history, truth, exposures, test_groups, caused)


DEMO_POLICY = """\
name: brand-x-platform-demo
members:
  brand:    {abilities: [contribute, query, receive_results]}
  platform: {abilities: [contribute, receive_audiences]}
identifiers: [email, phone]
tables:
  brand.users:       {dimensions: {tier: [gold, silver, basic]}}
  brand.conversions: {time: ts, measures: {value: [0, 300]}, max_per_person: 3, per_person_max: {value: 300}}
  platform.users:    {dimensions: {age_band: ["18-24", "25-34", "35-44", "45+"],
                                   stage_4a: [aware, appeal, act, advocate]},
                      measures: {visits_30d: [0, 60]}}
  platform.stage_history: {time: date, dimensions: {stage_4a: [aware, appeal, act, advocate]}}
  platform.exposures: {time: ts, dimensions: {campaign: [c-always-on, c-2026-10, c-2026-11],
                                              channel: [search, feed, video], kind: [impression, click]},
                       max_per_person: 10}
  platform.test_groups: {dimensions: {campaign: [c-2026-11], test_group: [exposed, holdout]}}
queries: [overlap, funnel, funnel_flow, segment_insight, value, loyalty, attribution, lift, lookalike, activation]
activation: {recipient: platform, dimensions: [brand.tier, platform.stage_4a, platform.age_band], min_size: 100,
             events: [platform.exposures, brand.conversions]}
campaign_spend: {c-always-on: 20000, c-2026-10: 15000, c-2026-11: 25000}
min_group_size: 50
epsilon: {per_member_total: 10.0, per_query_max: 1.0}
delta: {per_member_total: 1.0e-6, per_query_max: 1.0e-7}
"""


def member_arguments(
    users: pd.DataFrame, key: str, phone: str, attributes: list[str], events: Mapping[str, pd.DataFrame]
) -> dict[str, Any]:
    """One member's `CleanRoomClient.match()` keyword arguments, in both synthetic worlds' layout.

    Its users keyed by `key`, matched by the email in column `email` and the phone in column `phone`, with
    `attributes` and its event tables.
    """
    identifiers = {"email": "email", "phone": phone}
    return {"users": users, "key": key, "identifiers": identifiers, "attributes": attributes, "events": dict(events)}


def match_arguments(data: SyntheticData) -> dict[str, dict[str, Any]]:
    """Each member's `CleanRoomClient.match()` keyword arguments for this world (the demo's and compose's)."""
    platform_events = {
        "stage_history": data.platform_stage_history,
        "exposures": data.platform_exposures,
        "test_groups": data.platform_test_groups,
    }
    return {
        "brand": member_arguments(
            data.brand_users, "customer_id", "mobile", ["tier"], {"conversions": data.brand_conversions}
        ),
        "platform": member_arguments(
            data.platform_users, "user_id", "phone", ["age_band", "stage_4a", "visits_30d"], platform_events
        ),
    }


#: The practice files `write_sample_files` writes: each member's own tables, named as the walkthrough uses them.
SAMPLE_FILES = {
    "crm.csv": "brand_users",
    "orders.csv": "brand_conversions",
    "users.csv": "platform_users",
    "stage_history.csv": "platform_stage_history",
    "exposures.csv": "platform_exposures",
    "test_groups.csv": "platform_test_groups",
}


#: The refresh section of the practice policy when it has new customers to add (`write_sample_files`).
DEMO_REFRESH = "refresh: {tables: [brand.users, brand.conversions], min_days_between: 7}\n"


def write_sample_files(directory: Path, config: SyntheticConfig, refresh_users: int = 0) -> list[Path]:
    """Write a synthetic world as the CSV files two members would hold, plus `policy.yaml` for them.

    The brand's files are crm.csv (customer_id, email, mobile, tier) and orders.csv; the platform's are users.csv,
    stage_history.csv, exposures.csv and test_groups.csv. The ground truth is not written. With `refresh_users`,
    the last that many of the brand's customers (shared people among them, as anywhere) are held back from
    crm.csv into crm_new.csv, their orders into orders_new.csv, for a refresh; the policy then allows one.
    """
    if not 0 <= refresh_users < config.brand_users:
        raise ValueError(f"refresh users must lie in [0, {config.brand_users}) (the brand's customers)")
    data = generate(config)
    directory.mkdir(parents=True, exist_ok=True)
    frames = {name: getattr(data, attr) for name, attr in SAMPLE_FILES.items()}
    if refresh_users:
        crm, orders = frames["crm.csv"], frames["orders.csv"]
        later = crm["customer_id"].isin(crm["customer_id"].iloc[-refresh_users:])
        held = orders["customer_id"].isin(crm.loc[later, "customer_id"])
        frames |= {
            "crm.csv": crm[~later],
            "orders.csv": orders[~held],
            "crm_new.csv": crm[later],
            "orders_new.csv": orders[held],
        }
    written = []
    for name, frame in frames.items():
        path = directory / name
        frame.to_csv(path, index=False)
        written.append(path)
    policy = directory / "policy.yaml"
    policy.write_text(DEMO_POLICY + (DEMO_REFRESH if refresh_users else ""))
    return [*written, policy]


def load_direct(
    room: Room,
    collaboration_id: str,
    tables: Mapping[tuple[str, str], pa.Table],
    brand_rows: np.ndarray,
    platform_rows: np.ndarray,
) -> None:
    """Write members' tables and a finished match straight into a data directory, skipping the PSI.

    For benchmarks and tests of what comes after matching at sizes the PSI would take too long to reach. The
    members must be called `brand` and `platform`; `brand_rows[i]` is matched to `platform_rows[i]`. Each member's
    set size (disclosed at a real match) is recorded as its users table's number of rows.
    """
    from ..matching.join import record_pairs
    from ..matching.progress import UploadProgress, save_progress
    from ..matching.tables import register_table

    with room.store.of(collaboration_id).transaction() as cur:
        for (member, name), table in tables.items():
            cur.register("t", table)
            register_table(cur, collaboration_id, member, name, "t", table.num_rows)
            cur.unregister("t")
        cur.register("pairs", pa.table({"a": brand_rows.astype(np.int64), "b": platform_rows.astype(np.int64)}))
        record_pairs(cur, collaboration_id, ("brand", "platform"), "pairs")
        cur.unregister("pairs")
        for (member, name), table in tables.items():
            if name == "users":
                done = UploadProgress("points", 0, table.num_rows, True)
                save_progress(cur, collaboration_id, member, done, set_size=table.num_rows)


def load_keyed_match(room: Room, collaboration_id: str, n: int) -> None:
    """An n x n match whose join keys are stored too: brand row i and platform row i share email key i + 1.

    `load_direct` stores a matching without the keys it came from; a retirement or refresh rejoins from the keys,
    so this writes them (the same matching `join_matches` finds from them). For tests and benchmarks of retirement
    at sizes the PSI would take too long to reach. Users tables hold only `row_id`.
    """
    from cleanroom_client.identity import IdentifierType

    from ..matching.join import ID_TYPE_CODES, add_keys, label_pairs
    from ..matching.progress import record_total_rows

    rows = np.arange(n, dtype=np.int64)
    users = pa.table({"row_id": rows})
    load_direct(room, collaboration_id, {("brand", "users"): users, ("platform", "users"): users}, rows, rows)
    with room.store.of(collaboration_id).transaction() as cur:
        for member in ("brand", "platform"):
            record_total_rows(cur, collaboration_id, member, 0, n)  # the rows 0 .. n-1 a retirement may name
            add_keys(
                cur,
                "SELECT ?, ?, ?, range, range + 1 FROM range(?)",
                [collaboration_id, member, ID_TYPE_CODES[IdentifierType.EMAIL], n],
            )
        email = ID_TYPE_CODES[IdentifierType.EMAIL]  # the type that links every pair (load_direct writes code 1)
        label_pairs(cur, collaboration_id, email)
