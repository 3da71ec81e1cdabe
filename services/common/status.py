"""One mapping from library exceptions to gRPC status codes, used by every servicer and the interceptor.

An exception class may name its own code with a ``grpc_status`` attribute (for example
``RenderBackendError.grpc_status = "FAILED_PRECONDITION"``), so stage-specific errors need no
special case here.
"""

from __future__ import annotations

from typing import NoReturn

import grpc
from pydantic import ValidationError

from services.common.errors import (
    FlatlandError,
    IntegrityError,
    InvalidKeyError,
    ObjectNotFoundError,
    ResourceLimitError,
    SpecError,
)


def status_for_exception(exc: BaseException) -> grpc.StatusCode:
    """The gRPC status code a library exception maps to."""
    declared = getattr(type(exc), "grpc_status", None)
    if declared:
        return grpc.StatusCode[declared]
    if isinstance(exc, (ObjectNotFoundError, FileNotFoundError)):
        return grpc.StatusCode.NOT_FOUND
    if isinstance(exc, (ValidationError, SpecError, InvalidKeyError, ValueError, TypeError, KeyError)):
        return grpc.StatusCode.INVALID_ARGUMENT  # KeyError: an unknown dataset/run/benchmark name
    if isinstance(exc, ResourceLimitError):
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    if isinstance(exc, IntegrityError):
        return grpc.StatusCode.DATA_LOSS
    if isinstance(exc, FlatlandError):
        return grpc.StatusCode.FAILED_PRECONDITION  # e.g. an input stage has not finished yet
    return grpc.StatusCode.INTERNAL


#: Status messages travel in a header that gRPC caps at 16 KiB, percent-encoding every byte
#: outside printable ASCII (3 bytes each): longer ones reach the client as an unrelated
#: RESOURCE_EXHAUSTED ("metadata size exceeds hard limit"), so they are cut to this many.
MAX_STATUS_BYTES = 8 * 1024


def bounded_message(text: str, limit: int = MAX_STATUS_BYTES) -> str:
    """``text`` cut so its encoded size in the grpc-message header stays under ``limit`` bytes."""
    size = 0
    for i, ch in enumerate(text):
        size += 1 if " " <= ch <= "~" and ch != "%" else 3 * len(ch.encode("utf-8", "surrogatepass"))
        if size > limit - 40:
            return text[:i] + f" ... ({len(text) - i} more characters)"
    return text


def message_for(exc: BaseException) -> str:
    """A message a person can act on (field paths for validation errors), bounded in size."""
    if isinstance(exc, ValidationError):
        from services.common.spec import format_validation_error

        return bounded_message(format_validation_error(exc))
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else (str(exc) or type(exc).__name__)
    if status_for_exception(exc) == grpc.StatusCode.INTERNAL:
        return bounded_message(f"internal error: {type(exc).__name__}: {text}")
    return bounded_message(text)


def abort_with(context: grpc.ServicerContext, exc: BaseException) -> NoReturn:
    """End the RPC with the status and message ``exc`` maps to (raises, as ``abort`` does)."""
    context.abort(status_for_exception(exc), message_for(exc))
    raise AssertionError("unreachable")  # context.abort always raises
