"""The server's error mapping: a client that cancels is logged at INFO without a traceback; a bug at ERROR."""

from __future__ import annotations

import logging

import grpc
import pytest

from cleanroom.server.errors import _wrap_stream, _wrap_unary


class Context:
    """The part of grpc.ServicerContext the mapping uses."""

    def __init__(self, active: bool) -> None:
        self.active = active
        self.aborted: tuple[grpc.StatusCode, str] | None = None

    def is_active(self) -> bool:
        return self.active

    def abort(self, code: grpc.StatusCode, message: str) -> None:
        self.aborted = (code, message)
        raise RuntimeError("aborted")


class Cancelled(grpc.RpcError):
    pass


def _requests_cancelled(request, context):
    raise Cancelled()
    yield  # a generator, like a streaming method


def test_a_cancelled_stream_is_info_without_traceback(caplog):
    context = Context(active=False)
    with caplog.at_level(logging.INFO, logger="cleanroom.server.errors"):
        assert list(_wrap_stream(_requests_cancelled, "UploadPoints")(None, context)) == []
    assert context.aborted is None
    [record] = caplog.records
    assert record.levelno == logging.INFO
    assert record.exc_info is None
    assert "cancelled" in record.getMessage()


def test_a_bug_for_a_waiting_client_is_internal_and_logged_as_error(caplog):
    def broken(request, context):
        raise KeyError("oops")

    context = Context(active=True)
    with caplog.at_level(logging.INFO, logger="cleanroom.server.errors"), pytest.raises(RuntimeError):
        _wrap_unary(broken, "GetCollaboration")(None, context)
    assert context.aborted is not None
    assert context.aborted[0] is grpc.StatusCode.INTERNAL
    assert caplog.records[0].levelno == logging.ERROR
