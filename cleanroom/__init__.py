"""Cleanroom server: private set intersection over gRPC, the one-to-one join, and (later) DP analytics.

Domain modules (collaborations, matching, storage) never import grpc; `cleanroom.server` wires them to gRPC.
"""

__version__ = "0.1.0"
