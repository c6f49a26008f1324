"""DP analytics over the matched people, every release through `QueryEngine`.

Queries: overlap, Venn (three or more members), segment insight (TGI, penetration), funnel and funnel flow, GOAL
value and loyalty, attribution, lift, and the lookalike and activation audiences.
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
