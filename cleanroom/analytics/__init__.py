"""DP analytics over the matched people: overlap, the 4A funnel and its flow, segment insight."""

from .engine import QueryAnswer, QueryEngine
from .queries import (
    ActivationQuery,
    AttributionQuery,
    FunnelFlowQuery,
    FunnelQuery,
    LiftQuery,
    LookalikeQuery,
    OverlapQuery,
    SegmentInsightQuery,
)

__all__ = [
    "ActivationQuery",
    "AttributionQuery",
    "FunnelFlowQuery",
    "FunnelQuery",
    "LiftQuery",
    "LookalikeQuery",
    "OverlapQuery",
    "QueryAnswer",
    "QueryEngine",
    "SegmentInsightQuery",
]
