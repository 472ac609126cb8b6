"""Which handler errors are transient (retry the same batch) and the backoff between tries.

Transient: the infrastructure a handler writes to is briefly away — Redis, ClickHouse, the broker,
a socket. Everything else is a property of the input and is dead-lettered (see consumer.py).
"""

from __future__ import annotations

import redis.exceptions
from aiokafka.errors import KafkaError
from tenacity import wait_exponential_jitter

# Backoff between tries of a stalled batch: 0.2 s doubling to 10 s, plus up to 1 s of jitter so
# replicas that stalled together do not retry in lockstep.
BACKOFF = wait_exponential_jitter(multiplier=0.2, max=10.0, jitter=1.0)


class Stall(Exception):
    """Raised by a handler that cannot handle any batch yet (e.g. its state is not restored): the
    batch is retried like a transient error, never dead-lettered."""


_TRANSIENT = (Stall, redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, TimeoutError,
              ConnectionError, OSError)


def _clickhouse_transient(exc: BaseException) -> bool:
    """clickhouse-connect's OperationalError is its 'server unreachable / connection lost'."""
    return type(exc).__name__ == "OperationalError" and type(exc).__module__.startswith("clickhouse_connect")


def is_transient(exc: BaseException) -> bool:
    """True for an infrastructure error worth retrying (also when it is the cause of `exc`)."""
    while exc is not None:
        if isinstance(exc, _TRANSIENT) or _clickhouse_transient(exc):
            return True
        if isinstance(exc, KafkaError) and exc.retriable:
            return True
        exc = exc.__cause__
    return False


def stall_reason(exc: BaseException) -> str:
    """A short name of what stalls, e.g. 'redis: TimeoutError'."""
    return f"{type(exc).__module__.split('.')[0]}: {type(exc).__name__}" if not isinstance(exc, Stall) else str(exc)
