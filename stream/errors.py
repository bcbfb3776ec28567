"""Domain errors of the service and the one table that maps them to gRPC status codes."""

from __future__ import annotations

import grpc

from avsentry.pipelines.audio_io import AudioReadError
from avsentry.pipelines.session import StreamTooLong


class GuardError(Exception):
    """Base for errors the service reports to clients."""


class InvalidRequest(GuardError):
    """The request is malformed: no config first, bad rate/encoding, bad chunk, bad samples."""


class TooManyStreams(GuardError):
    """The server is at its concurrent-stream limit."""


class MessageTooLarge(GuardError):
    """A message or chunk is larger than the server accepts."""


class Draining(GuardError):
    """The server is shutting down and takes no new work."""


STATUS: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (AudioReadError, grpc.StatusCode.INVALID_ARGUMENT),
    (ValueError, grpc.StatusCode.INVALID_ARGUMENT),
    (TooManyStreams, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (MessageTooLarge, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (StreamTooLong, grpc.StatusCode.OUT_OF_RANGE),
    (Draining, grpc.StatusCode.UNAVAILABLE),
)


def status_for(exc: BaseException) -> grpc.StatusCode:
    """The status code for a domain error; INTERNAL for anything unexpected."""
    for kind, code in STATUS:
        if isinstance(exc, kind):
            return code
    return grpc.StatusCode.INTERNAL
