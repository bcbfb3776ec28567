"""Domain errors of the service and the one table that maps them to gRPC status codes.

Client mistakes get a precise code; anything else is a server fault, reported as INTERNAL with
the request id (and logged with its traceback), never blamed on the client.
"""

from __future__ import annotations

import grpc

from avsentry.pipelines.audio_io import AudioReadError, AudioTooLong
from avsentry.pipelines.session import StreamTooLong
from avsentry.pipelines.video_io import VideoReadError, VideoTooLong


class GuardError(Exception):
    """Base for errors the service reports to clients."""


class InvalidRequest(GuardError):
    """The request is malformed: no config first, bad rate/encoding, bad chunk, bad samples."""


class PolicyViolation(GuardError):
    """The config asks for a defence setting the server's policy forbids (e.g. weakening it)."""


class TooManyStreams(GuardError):
    """The server is at its concurrent-call limit."""


class AtCapacity(GuardError):
    """Admitting the stream would commit more detector work than the server can do in real time."""


class MessageTooLarge(GuardError):
    """A message or chunk is larger than the server accepts."""


class SlowReader(GuardError):
    """The client stopped reading its verdicts."""


class IdleTimeout(GuardError):
    """No config, or no audio, within the server's timeouts."""


class Draining(GuardError):
    """The server is shutting down and takes no new work."""


class InternalError(GuardError):
    """A server-side fault while judging a window (the cause is logged, not sent)."""


STATUS: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (PolicyViolation, grpc.StatusCode.PERMISSION_DENIED),
    (AudioTooLong, grpc.StatusCode.OUT_OF_RANGE),
    (AudioReadError, grpc.StatusCode.INVALID_ARGUMENT),
    (VideoTooLong, grpc.StatusCode.OUT_OF_RANGE),
    (VideoReadError, grpc.StatusCode.INVALID_ARGUMENT),
    (TooManyStreams, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (AtCapacity, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (MessageTooLarge, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (SlowReader, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (StreamTooLong, grpc.StatusCode.OUT_OF_RANGE),
    (IdleTimeout, grpc.StatusCode.DEADLINE_EXCEEDED),
    (Draining, grpc.StatusCode.UNAVAILABLE),
)

MAX_DETAILS_CHARS = 300


def status_for(exc: BaseException) -> grpc.StatusCode:
    """The status code for a domain error; INTERNAL for anything unexpected."""
    for kind, code in STATUS:
        if isinstance(exc, kind):
            return code
    return grpc.StatusCode.INTERNAL


def details_for(exc: BaseException, request_id: str = "") -> str:
    """The one-line status message: the error's first line, bounded (client input can be echoed in
    it), or for a server fault only that it happened and under which request id."""
    if status_for(exc) == grpc.StatusCode.INTERNAL:
        return f"internal error (request {request_id or 'unknown'}); the server log has the cause"
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= MAX_DETAILS_CHARS else text[: MAX_DETAILS_CHARS - 3] + "..."


def clip(text: str, limit: int = 64) -> str:
    """A client-supplied string for an error message: printable and at most ``limit`` characters."""
    text = "".join(c if c.isprintable() else "?" for c in text)
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")
