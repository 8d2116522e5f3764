"""What a session's exception boundary needs to know: which errors are an expected outage, and
how a failure is logged — once, where it is answered (docs/design/failures.md).

A GeoDB or LocalDB that fails is an outage the cluster is built to survive: the client gets its
protocol's temporary failure and the log one line with the cause, however many sessions hit it.
Anything else escaping a session is a bug: it gets the same temporary answer and one traceback.
"""

from __future__ import annotations

import logging

from palomar.geodb.engine import GeoDBError
from palomar.geodb.guarded import GeoDBUnavailable
from palomar.localdb.store import LocalDBError

STORE_ERRORS: tuple[type[Exception], ...] = (GeoDBError, LocalDBError)
"""What the stores raise when they cannot answer (their engines wrap driver and SQLite errors)."""


def is_store_error(exc: BaseException) -> bool:
    return isinstance(exc, STORE_ERRORS)


def log_failure(log: logging.Logger, context: str, exc: BaseException) -> None:
    """One line for a store outage (its cause, no traceback); one traceback for anything else."""
    if isinstance(exc, GeoDBUnavailable):
        # The guarded engine logs the outage once when it begins and once when it ends.
        log.debug("%s: store unavailable: %s", context, exc)
    elif is_store_error(exc):
        log.warning("%s: store unavailable: %s", context, exc)
    else:
        log.error("%s: internal error: %s: %s", context, type(exc).__name__, exc, exc_info=exc)
