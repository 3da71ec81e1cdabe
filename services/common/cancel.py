"""Cooperative cancellation: long library loops ask :func:`check_cancelled` between units of work.

An adapter (the gRPC interceptor) opens a :func:`cancel_scope` around a call with a
predicate that turns false when the client went away, its deadline passed or the server
is stopping; library code calls :func:`check_cancelled`, which raises :class:`Cancelled`
once that happens. Outside a scope (the CLI, batch jobs) the check costs one context
variable lookup and never raises. No gRPC here: the library stays adapter-free.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Callable, Iterator

from services.common.errors import FlatlandError


class Cancelled(FlatlandError):
    """The caller stopped waiting (cancelled, deadline passed) or the server is stopping."""

    grpc_status = "CANCELLED"


_SCOPE: contextvars.ContextVar[tuple[Callable[[], bool], threading.Event] | None] = contextvars.ContextVar(
    "flatland_cancel_scope", default=None
)
_NEVER = threading.Event()


@contextlib.contextmanager
def cancel_scope(is_active: Callable[[], bool], stopping: threading.Event | None = None) -> Iterator[None]:
    """Within the block, :func:`check_cancelled` raises once ``is_active()`` is false or ``stopping`` is set."""
    token = _SCOPE.set((is_active, stopping or _NEVER))
    try:
        yield
    finally:
        _SCOPE.reset(token)


def check_cancelled(what: str = "") -> None:
    """Raise :class:`Cancelled` if the enclosing scope's caller is gone; else return at once."""
    scope = _SCOPE.get()
    if scope is None:
        return
    is_active, stopping = scope
    if stopping.is_set():
        raise Cancelled(f"{what + ': ' if what else ''}stopped: the server is shutting down")
    if not is_active():
        raise Cancelled(f"{what + ': ' if what else ''}stopped: the caller cancelled or its deadline passed")


def server_stopping() -> threading.Event:
    """The enclosing scope's server-stopping event (never set outside a scope): for work that
    outlives the call that started it, such as a training run's thread."""
    scope = _SCOPE.get()
    return _NEVER if scope is None else scope[1]
