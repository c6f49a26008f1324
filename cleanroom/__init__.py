"""Cleanroom server: private set intersection over gRPC, the stable one-to-one join, and DP analytics on it.

Domain modules (collaborations, matching, storage) never import grpc; `cleanroom.server` wires them to gRPC.
"""

__version__ = "0.1.0"
