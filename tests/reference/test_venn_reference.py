"""The Venn diagram of a brand and two platforms against a pandas reference.

The data is the three-member demo's (cleanroom.devtools.synthetic_platforms), with identifiers normalized as the
SDK does and matched by the real join in-process. Without noise the engine's cells equal the reference exactly;
with OpenDP's noise, at least 90% of the released cells fall within their stated 95% bounds.
"""

from __future__ import annotations

import pandas as pd
from privacy_data import BRAND, MemberData, RecordingNoise

from cleanroom.analytics.queries import DimensionRef, VennQuery
from cleanroom.devtools import synthetic_platforms as sp
from cleanroom_client.identity import IdentifierType, Normalizer

C = "privacy-test"


def members(data: sp.PlatformsData) -> dict[str, MemberData]:
    """Each member's users as the in-process builder takes them: normalized identifiers, declared attributes."""
    normalizer = Normalizer("US")

    def norm(id_type: IdentifierType, value: str | float | None) -> str | None:
        return None if value is None or pd.isna(value) else normalizer.normalize(id_type, str(value))

    def rows(frame: pd.DataFrame, email: str, phone: str, attributes: list[str]) -> MemberData:
        return MemberData(
            [
                {
                    "email": norm(IdentifierType.EMAIL, r[email]),
                    "phone": norm(IdentifierType.PHONE, r[phone]),
                    **{a: r[a] for a in attributes},
                }
                for r in frame.to_dict("records")
            ]
        )

    return {
        "brand": rows(data.brand_users, "email", "mobile", ["tier"]),
        "jd": rows(data.jd_users, "email", "phone", ["stage_4a"]),
        "tencent": rows(data.tencent_users, "email", "phone", ["age_band", "interest"]),
    }


def reference(data: sp.PlatformsData) -> dict[tuple[str, str, str], int]:
    """(tier, region, measure) -> exact count, from the truth with pandas."""
    t = data.truth.assign(jd=data.truth["jd_user"].notna(), wx=data.truth["tencent_user"].notna())
    out: dict[tuple[str, str, str], int] = {}
    regions = {
        "brand": (lambda f: ~f.jd & ~f.wx, lambda f: f.jd | ~f.jd),
        "brand∩jd": (lambda f: f.jd & ~f.wx, lambda f: f.jd),
        "brand∩tencent": (lambda f: ~f.jd & f.wx, lambda f: f.wx),
        "brand∩jd∩tencent": (lambda f: f.jd & f.wx, lambda f: f.jd & f.wx),
    }
    for tier in (*sp.TIERS, "none"):
        group = t[t["tier"] == tier]
        for region, (exactly, at_least) in regions.items():
            out[(str(tier), region, "people_exactly")] = int(exactly(group).sum())
            out[(str(tier), region, "people")] = int(at_least(group).sum())
    return out


def test_without_noise_the_venn_equals_the_reference(rooms):
    data = sp.generate(brand_users=600, seed=3)
    room = rooms(sp.POLICY, members(data), RecordingNoise())
    answer = room.queries.venn(BRAND, C, VennQuery(DimensionRef.parse("brand.tier"), 5.0))
    got = {(*c.keys, c.measure): c.value for c in answer.cells}
    expected = {k: float(v) if v >= 10 else 0.0 for k, v in reference(data).items()}  # under 10: withheld
    assert got == expected
    assert sum(1 for k, v in expected.items() if v and k[0] != "none") == 24  # every tier x region x measure
    assert answer.dimensions == ("brand.tier", "region")


def test_noisy_venn_cells_are_within_their_bounds(rooms):
    data = sp.generate(brand_users=600, seed=4)
    truth = reference(data)
    room = rooms(sp.POLICY, members(data))
    hits = total = 0
    for _ in range(12):
        answer = room.queries.venn(BRAND, C, VennQuery(DimensionRef.parse("brand.tier"), 1.0))
        for c in answer.cells:
            if not c.suppressed:
                hits += abs(c.value - truth[(*c.keys, c.measure)]) <= c.error_95
                total += 1
    print(f"venn coverage: {hits}/{total} = {hits / total:.3f}")
    assert total >= 250
    assert hits / total >= 0.9
