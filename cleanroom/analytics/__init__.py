"""DP analytics over the matched people, every release through `QueryEngine`.

Queries: overlap, Venn (three or more members), segment insight (TGI, penetration), funnel and funnel flow, GOAL
value and loyalty, attribution, lift, and the lookalike and activation audiences. Each family has its module
(`overlap`, `funnel`, `goal`, `attribution`, `lookalike`, `activation`) holding its SQL and its plan: what it reads,
the sensitivities, the epsilon split and the cells derived after the noise; `engine` is the release pipeline every
plan runs through (`plan` the values they share). The queries are declared once, for every surface, in
`cleanroom_client.query_types`.
"""

from .engine import QueryAnswer, QueryEngine
from .queries import (
    ActivationQuery,
    AttributionQuery,
    FunnelFlowQuery,
    FunnelQuery,
    LiftQuery,
    LookalikeQuery,
    LoyaltyQuery,
    OverlapQuery,
    SegmentInsightQuery,
    ValueQuery,
    VennQuery,
)

__all__ = [
    "ActivationQuery",
    "AttributionQuery",
    "FunnelFlowQuery",
    "FunnelQuery",
    "LiftQuery",
    "LookalikeQuery",
    "LoyaltyQuery",
    "OverlapQuery",
    "QueryAnswer",
    "QueryEngine",
    "SegmentInsightQuery",
    "ValueQuery",
    "VennQuery",
]
