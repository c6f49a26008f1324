"""DP analytics over the matched people: overlap, the 4A funnel and its flow, segment insight."""

from .engine import QueryAnswer, QueryEngine
from .queries import AttributionQuery, FunnelFlowQuery, FunnelQuery, LiftQuery, OverlapQuery, SegmentInsightQuery

__all__ = [
    "AttributionQuery",
    "FunnelFlowQuery",
    "FunnelQuery",
    "LiftQuery",
    "OverlapQuery",
    "QueryAnswer",
    "QueryEngine",
    "SegmentInsightQuery",
]
