"""Private set intersection relayed through the server, the one-to-one join, and uploads of pseudonymous tables."""

from .join import MatchStats, match_stats
from .progress import UploadProgress
from .relay import MatchStage, MatchStatus, Relay
from .tables import TableUploads

__all__ = ["MatchStage", "MatchStats", "MatchStatus", "Relay", "TableUploads", "UploadProgress", "match_stats"]
