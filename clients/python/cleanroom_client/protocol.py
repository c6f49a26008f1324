"""The wire contract, public and written once: the generated protobuf and gRPC modules, and the protocol's constants.

Servers, clients in other processes and tests import the generated code from here (never from the private
`cleanroom_client._proto`, which `make protos` regenerates from `protos/`). `protos/PROTOCOL.md` is the
specification these values come from.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._proto import (
    admin_pb2,
    admin_pb2_grpc,
    analytics_pb2,
    analytics_pb2_grpc,
    audit_pb2,
    audit_pb2_grpc,
    collaboration_pb2,
    collaboration_pb2_grpc,
    matching_pb2,
    matching_pb2_grpc,
)
from .identity import IdentifierType
from .sizes import POINT_SIZE

__all__ = [
    "ATTRIBUTION_MODELS",
    "CHAIN_KIND",
    "COLLABORATIONS",
    "DEFAULT_HALF_LIFE_DAYS",
    "DOUBLE_BLINDED",
    "ID_TYPE_CODES",
    "MAX_MESSAGE_BYTES",
    "POINTS",
    "POINT_SIZE",
    "PUBLIC_SERVICES",
    "RESULT_FIELDS",
    "TABLE_KIND",
    "admin_pb2",
    "admin_pb2_grpc",
    "analytics_pb2",
    "analytics_pb2_grpc",
    "attribution_model_name",
    "audit_pb2",
    "audit_pb2_grpc",
    "collaboration_name",
    "collaboration_pb2",
    "collaboration_pb2_grpc",
    "matching_pb2",
    "matching_pb2_grpc",
    "result_fields",
]

#: The largest gRPC message either side sends or accepts (a chunk of points or an Arrow table batch).
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
#: Wire codes of identifier types (protocol v1): their priority plus one (0 is "unspecified" in protobuf).
ID_TYPE_CODES = {t: t.priority + 1 for t in IdentifierType}
#: Upload kinds in `MatchStatus.uploads` (PROTOCOL.md sections 5 and 9): a member's points, its double-blinding of
#: the peer's (two members), its hop in a chain (`blinded:<origin>`, three or more), a table (`table:<name>`).
POINTS = "points"
DOUBLE_BLINDED = "double_blinded"
CHAIN_KIND = "blinded:"
TABLE_KIND = "table:"
#: The resource-name collection of collaborations: `collaborations/{id}`.
COLLABORATIONS = "collaborations/"
#: Full names of the services the clean room serves at its address (what it reports healthy and lists for
#: reflection); the operator's `AdminService` answers on the data directory's local socket only.
PUBLIC_SERVICES = tuple(
    service.full_name
    for module in (collaboration_pb2, matching_pb2, analytics_pb2, audit_pb2)
    for service in module.DESCRIPTOR.services_by_name.values()
)


#: The fields of a `QueryResult` beside its cells, named alike in the server's answer and the SDK's frame (`attrs`):
#: the ε charged and left, the noise scale per histogram, the audit entry's sequence number, the caller's own set
#: size, the audience released (lookalike, activation). `refresh_period` is optional: set only when an answer reads
#: data (a preview reads none).
RESULT_FIELDS = (
    "epsilon_spent",
    "epsilon_remaining",
    "noise_scale",
    "audit_sequence",
    "own_set_size",
    "audience",
    "typical",
)


def result_fields(answer: object) -> dict[str, Any]:
    """The `RESULT_FIELDS` of a server's answer or of a `QueryResult`, as plain values (a mapping as a dict)."""
    values = {name: getattr(answer, name) for name in RESULT_FIELDS}
    return {name: dict(v) if isinstance(v, Mapping) else v for name, v in values.items()}


def collaboration_name(collaboration_id: str) -> str:
    """`collaborations/{id}` for an id (a name is returned as it is)."""
    return collaboration_id if collaboration_id.startswith(COLLABORATIONS) else COLLABORATIONS + collaboration_id


#: Attribution models by name (`last_touch`, `first_touch`, `linear`, `time_decay`, `position_based`) and their wire
#: values, read from the generated `AttributionModel` enum (0, unspecified, is not a model).
ATTRIBUTION_MODELS: dict[str, analytics_pb2.AttributionModel.ValueType] = {
    name.removeprefix("ATTRIBUTION_MODEL_").lower(): value
    for name, value in analytics_pb2.AttributionModel.items()
    if value
}
#: Half-life of time-decay attribution when a request leaves it unset (0).
DEFAULT_HALF_LIFE_DAYS = 7.0


def attribution_model_name(value: analytics_pb2.AttributionModel.ValueType | int | str) -> str:
    """`last_touch` for the wire value or its enum name (`ATTRIBUTION_MODEL_LAST_TOUCH`); 0 is `unspecified`."""
    number = int(analytics_pb2.AttributionModel.Value(value)) if isinstance(value, str) else int(value)
    names = {int(v): k for k, v in ATTRIBUTION_MODELS.items()}
    return names.get(number, "unspecified")
