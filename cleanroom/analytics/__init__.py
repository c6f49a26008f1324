"""DP analytics over the matched people: overlap, the 4A funnel and its flow, segment insight."""

from .engine import QueryAnswer, QueryEngine
from .queries import FunnelFlowQuery, FunnelQuery, OverlapQuery, SegmentInsightQuery

__all__ = ["FunnelFlowQuery", "FunnelQuery", "OverlapQuery", "QueryAnswer", "QueryEngine", "SegmentInsightQuery"]
