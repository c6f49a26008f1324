"""DP analytics over the matched people: overlap, funnel, GOAL value and loyalty, attribution, lift, audiences."""

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
]
