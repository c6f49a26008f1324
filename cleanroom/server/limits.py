"""Limits on every request, checked at the edge before any servicer sees the request.

Guarantees, for every request message of every RPC, found from the message descriptors (a new field is covered
without being named here):
- no string (plain, repeated, or a map's key or value, at any depth) longer than `MAX_STRING_CHARS` reaches a
  servicer, except the fields in `LONG_FIELDS`, which have limits of their own; no repeated field or map holds
  more than `MAX_REPEATED_ITEMS` items. Bytes fields are bounded where their meaning is known (chunks:
  `MAX_CHUNK_BYTES` in the matching servicer; the transport's own cap above that);
- no float or double (plain, repeated, or a map's value, at any depth) is NaN or infinite: nothing past the edge
  has to reason about them (a NaN fails every comparison, so a check written `x > limit` would let it through).
The refusal is INVALID_ARGUMENT naming the field and the rule, never echoing a long value. It is audited as every
refusal is (`on_refusal`, wired by the server: the caller's collaboration chain, else the server's), when the caller
authenticates; it spends nothing, since nothing past the edge ran.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from cleanroom_client.protocol import COLLABORATIONS

from ..collaborations import MAX_POLICY_BYTES
from ..errors import InvalidArgumentError
from .errors import BehaviourInterceptor

log = logging.getLogger(__name__)

#: Longest string any request field may carry (names, dimensions, filters, tokens, dates...).
MAX_STRING_CHARS = 1024
#: Most items in any repeated field or map of a request.
MAX_REPEATED_ITEMS = 1000
#: Fields allowed to be longer, by full field name, with their own limit.
LONG_FIELDS: dict[str, int] = {
    "cleanroom.v1.CreateCollaborationRequest.policy_yaml": MAX_POLICY_BYTES,
    "cleanroom.v1.ProposePolicyRequest.policy_yaml": MAX_POLICY_BYTES,
}


#: Field types that hold floating-point numbers.
_FLOATS = (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT)
#: Fields that name the collaboration a request is about, as `collaborations/{id}`.
_NAMING_FIELDS = ("parent", "collaboration", "name")


def _check_float(value: float, path: str) -> None:
    if not math.isfinite(value):
        raise InvalidArgumentError(f"`{path}` must be a finite number, not {value}")


def _check_string(field: FieldDescriptor, value: str, path: str) -> None:
    limit = LONG_FIELDS.get(field.full_name, MAX_STRING_CHARS)
    if len(value) > limit:
        raise InvalidArgumentError(f"`{path}` is {len(value)} characters long; the limit is {limit}")


def check_request(message: Message, path: str = "") -> None:
    """InvalidArgumentError when a string or repeated field of `message` is over its limit, or a float not finite."""
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
                    elif value_field.type in _FLOATS:
                        _check_float(item, f"{where}[…]")
                    elif isinstance(item, Message):
                        check_request(item, f"{where}[…].")
                continue
            items = value
        else:
            items = [value]
        for item in items:
            if field.type == FieldDescriptor.TYPE_STRING:
                _check_string(field, item, where)
            elif field.type in _FLOATS:
                _check_float(item, where)
            elif field.type == FieldDescriptor.TYPE_MESSAGE:
                check_request(item, f"{where}.")


def named_collaboration(message: Message) -> str | None:
    """The `collaborations/{id}` a request names, or None: to audit a refusal in the right chain.

    Its own `parent`, `collaboration` or `name`, else a nested message's (a preview's query).
    """
    for field_name in _NAMING_FIELDS:
        field = message.DESCRIPTOR.fields_by_name.get(field_name)
        if field is not None and field.type == FieldDescriptor.TYPE_STRING and not field.is_repeated:
            value = getattr(message, field_name)
            if value.startswith(COLLABORATIONS):
                return str(value)
    for field, value in message.ListFields():
        if field.type == FieldDescriptor.TYPE_MESSAGE and not field.is_repeated:
            found = named_collaboration(value)
            if found is not None:
                return found
    return None


#: Called with the call's context, its method and the refused request before the refusal is raised.
OnRefusal = Callable[[grpc.ServicerContext, str, Message, InvalidArgumentError], None]


class RequestLimitsInterceptor(BehaviourInterceptor):
    """Checks every request message against the limits above; install inside `ErrorMappingInterceptor`.

    `on_refusal` records a refusal (the server audits it); whatever it does, the refusal stands, and an error of
    its own is logged, never answered in place of the refusal.
    """

    def __init__(self, on_refusal: OnRefusal | None = None) -> None:
        self._on_refusal = on_refusal

    def _check(self, request: Message, context: grpc.ServicerContext, method: str) -> None:
        try:
            check_request(request)
        except InvalidArgumentError as exc:
            if self._on_refusal is not None:
                try:
                    self._on_refusal(context, method, request, exc)
                except Exception:  # the refusal is the answer; its audit failing is for the operator's log
                    log.exception("could not audit a refusal at the edge of %s", method)
            raise

    def _unary(self, fn: Callable[..., Any], method: str) -> Callable[..., Any]:
        def handler(request: Message, context: grpc.ServicerContext) -> Any:
            self._check(request, context, method)
            return fn(request, context)

        return handler

    def _streaming(self, fn: Callable[..., Any], method: str) -> Callable[..., Any]:
        def checked(requests: Iterator[Message], context: grpc.ServicerContext) -> Iterator[Message]:
            for request in requests:
                self._check(request, context, method)
                yield request

        def handler(requests: Iterator[Message], context: grpc.ServicerContext) -> Any:
            return fn(checked(requests, context), context)

        return handler

    def wrap(self, fn: Callable[..., Any], method: str, streams_in: bool, streams_out: bool) -> Callable[..., Any]:
        """Wrap the method so its request(s) are checked before the servicer reads them."""
        return (self._streaming if streams_in else self._unary)(fn, method)
