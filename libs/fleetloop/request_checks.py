"""The one validation path for gRPC requests: every handler of every service is wrapped in
`guarded`, which checks the request's fields against limits.yaml before the handler runs and
maps what goes wrong to a status with a message, never UNKNOWN with an exception's name.

- A field out of its limits (string longer than its `strings` limit, an undeclared enum value, a
  repeated field longer than the handler allows) or a `BadRequest` / `ValueError` raised by the
  handler's own checks -> INVALID_ARGUMENT, naming the field.
- A response the handler would build beyond its bound -> `TooLarge` -> RESOURCE_EXHAUSTED,
  saying how to narrow the request.
- Anything else -> INTERNAL "internal error (<kind>); see the service log", logged with its
  traceback. The handler's own `context.abort(...)` passes through unchanged.

The checks handlers share (`page_size`, `offset_token`, `window`, `one_of`, `required`,
`vehicle_id`) live here too, so one request field is checked one way everywhere.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Collection, Mapping
from typing import Any

import grpc
from google.protobuf.message import Message

from fleetloop.codec.limits import LIMITS
from fleetloop.codec.rejected import Rejected, check_fields

log = logging.getLogger(__name__)

MAX_OFFSET_TOKEN_DIGITS = 12


class BadRequest(ValueError):
    """A request field that cannot be served: INVALID_ARGUMENT with this message."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


class TooLarge(Exception):
    """The answer would exceed the handler's bound: RESOURCE_EXHAUSTED with this message."""


def check(request: Message, repeated_max: Mapping[str, int] | None = None) -> None:
    """Every field of `request` within limits.yaml; repeated fields at most `repeated_max[name]`."""
    try:
        check_fields(request, repeated_max)
    except Rejected as exc:
        raise BadRequest(type(request).__name__, exc.detail) from None


def page_size(value: int, *, default: int, maximum: int, field: str = "page_size") -> int:
    """0 means `default`; otherwise 1..maximum."""
    if value == 0:
        return default
    if not 0 < value <= maximum:
        raise BadRequest(field, f"{value} is outside 1..{maximum}")
    return value


def offset_token(token: str, field: str = "page_token") -> int:
    """A page token this server handed out: the decimal offset of the next item ("" = 0)."""
    if not token:
        return 0
    # digits only: int() would also take "-5", " 7" and "٣"
    if not (token.isascii() and token.isdigit()) or len(token) > MAX_OFFSET_TOKEN_DIGITS:
        raise BadRequest(field, f"{token[:40]!r} is not a token this service handed out")
    return int(token)


def window(start_ms: int, end_ms: int) -> tuple[int, int]:
    """[start_ms, end_ms) in epoch ms; end_ms 0 means open. Both inside the codec's time range."""
    lowest, highest = 0, LIMITS.time.max_event_ms
    for name, value in (("start_ms", start_ms), ("end_ms", end_ms)):
        if not lowest <= value <= highest:
            raise BadRequest(name, f"{value} is outside {lowest}..{highest}")
    if end_ms and end_ms <= start_ms:
        raise BadRequest("end_ms", "must be after start_ms")
    return start_ms, end_ms or highest


def one_of(field: str, value: str, allowed: Collection[str]) -> str:
    if value not in allowed:
        raise BadRequest(field, f"{value[:80]!r} is not one of {sorted(allowed)}")
    return value


def required(field: str, value: Any) -> Any:
    if not value:
        raise BadRequest(field, "is required")
    return value


def vehicle_id(value: str, field: str = "vehicle_id", *, optional: bool = True) -> str:
    """The fleet's vehicle-id syntax (limits.yaml strings.vehicle_id_pattern); "" when optional."""
    if not value and optional:
        return value
    if not LIMITS.strings.vehicle_id.fullmatch(value):
        raise BadRequest(field, f"{value[:80]!r} is not a vehicle id ({LIMITS.strings.vehicle_id_pattern})")
    return value


def guarded(repeated_max: Mapping[str, int] | None = None) -> Callable:
    """Decorate an async gRPC handler method `(self, request, context)`; see the module docstring."""

    def decorate(handler: Callable) -> Callable:
        @functools.wraps(handler)
        async def wrapper(self, request, context):
            try:
                check(request, repeated_max)
                return await handler(self, request, context)
            except grpc.aio.AbortError:
                raise
            except (BadRequest, ValueError) as exc:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc)[:1000])
            except TooLarge as exc:
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)[:1000])
            except Exception as exc:
                log.exception("%s failed", handler.__qualname__)
                await context.abort(grpc.StatusCode.INTERNAL,
                                    f"internal error ({type(exc).__name__}); see the service log")

        return wrapper

    return decorate
