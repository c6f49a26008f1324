"""Length limits on every string of every request, checked at the edge before any servicer sees the request.

Guarantee: no request string (plain, repeated, or a map's key or value, at any depth) longer than
`MAX_STRING_CHARS` reaches a servicer, except the fields in `LONG_FIELDS`, which have limits of their own; no
repeated field or map holds more than `MAX_REPEATED_ITEMS` items. Bytes fields are bounded where their meaning is
known (chunks: `MAX_CHUNK_BYTES` in the matching servicer; the transport's own cap above that). The refusal is
INVALID_ARGUMENT naming the field and the limit, never echoing the value.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from ..collaborations import MAX_POLICY_BYTES
from ..errors import InvalidArgumentError
from .errors import rewrap

#: Longest string any request field may carry (names, dimensions, filters, tokens, dates...).
MAX_STRING_CHARS = 1024
#: Most items in any repeated field or map of a request.
MAX_REPEATED_ITEMS = 1000
#: Fields allowed to be longer, by full field name, with their own limit.
LONG_FIELDS: dict[str, int] = {
    "cleanroom.v1.CreateCollaborationRequest.policy_yaml": MAX_POLICY_BYTES,
    "cleanroom.v1.ProposePolicyRequest.policy_yaml": MAX_POLICY_BYTES,
}


def _check_string(field: FieldDescriptor, value: str, path: str) -> None:
    limit = LONG_FIELDS.get(field.full_name, MAX_STRING_CHARS)
    if len(value) > limit:
        raise InvalidArgumentError(f"`{path}` is {len(value)} characters long; the limit is {limit}")


def check_request(message: Message, path: str = "") -> None:
    """Raise InvalidArgumentError when any string or repeated field of `message` is over its limit."""
    for field, value in message.ListFields():
        where = f"{path}{field.name}"
        if field.is_repeated:
            if len(value) > MAX_REPEATED_ITEMS:
                raise InvalidArgumentError(f"`{where}` has {len(value)} items; the limit is {MAX_REPEATED_ITEMS}")
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                key_field = field.message_type.fields_by_name["key"]
                value_field = field.message_type.fields_by_name["value"]
                for key, item in value.items():
                    if isinstance(key, str):
                        _check_string(key_field, key, f"{where} key")
                    if isinstance(item, str):
                        _check_string(value_field, item, f"{where}[…]")
                    elif isinstance(item, Message):
                        check_request(item, f"{where}[…].")
                continue
            items = value
        else:
            items = [value]
        for item in items:
            if field.type == FieldDescriptor.TYPE_STRING:
                _check_string(field, item, where)
            elif field.type == FieldDescriptor.TYPE_MESSAGE:
                check_request(item, f"{where}.")


def _checked(requests: Iterator[Message]) -> Iterator[Message]:
    for request in requests:
        check_request(request)
        yield request


def _unary(fn: Callable[..., Any]) -> Callable[..., Any]:
    def handler(request: Message, context: grpc.ServicerContext) -> Any:
        check_request(request)
        return fn(request, context)

    return handler


def _streaming(fn: Callable[..., Any]) -> Callable[..., Any]:
    def handler(requests: Iterator[Message], context: grpc.ServicerContext) -> Any:
        return fn(_checked(requests), context)

    return handler


class RequestLimitsInterceptor(grpc.ServerInterceptor):
    """Checks every request message against the limits above; install inside `ErrorMappingInterceptor`."""

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        """Wrap the method so its request(s) are checked before the servicer reads them."""
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        return rewrap(handler, lambda fn, streams_in, _streams_out: (_streaming if streams_in else _unary)(fn))
