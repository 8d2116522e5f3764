"""What a passdb driver hands back to the chain, and the ``key=value key`` field-list syntax.

Drivers are synchronous on purpose: the chain runs a lookup that may block (a file read) in a
worker thread, so a driver never needs to know about the event loop. A driver that can often
answer without blocking also offers ``lookup_nowait`` (None: "I would block, use ``lookup``"),
which the chain calls inline first to spare the thread hand-off.

Drivers that talk to a database over the network may offer more (the chain looks for them):

* ``lookup_async`` — a coroutine used instead of ``lookup`` (PostgreSQL through asyncpg);
* ``verify_plain`` and ``checks_password = True`` — the driver checks the password itself
  (LDAP authentication binds) and says so in ``DriverLookup.verified``;
* ``cache_key(values)`` — the values of the variables its queries use: such a driver's
  answers go through the auth cache (``auth_cache_size``), keyed by them, as in Dovecot.
* ``warm()`` — blocking preparation run in a thread before the proxy listens (passwd-file
  builds its index), so the first login does not pay for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from palomar.auth.variables import Template


@dataclass(frozen=True)
class DriverLookup:
    """Outcome of one driver lookup.

    ``password`` is the stored password (None when the entry has none); ``fields`` keep
    their templates so the chain expands them with the request's variables.
    """

    found: bool
    password: str | None = field(default=None, repr=False)
    fields: tuple[tuple[str, Template], ...] = field(default=(), repr=False)
    error: str | None = None
    verified: bool | None = None
    """Set by a driver that checked the password itself: True matched, False did not."""


class PassdbDriver(Protocol):
    """A passdb backend: find a user, return the stored password and extra fields."""

    default_scheme: str

    def lookup(self, user: str, values: Mapping[str, str]) -> DriverLookup: ...


def parse_field_list(text: str) -> list[tuple[str, str]]:
    """Split Dovecot's space-separated ``key=value`` / ``key`` list; a bare key has value ``""``.

    Dovecot treats boolean fields as true when present at all, so ``proxy`` and
    ``proxy=y`` mean the same.
    """
    items: list[tuple[str, str]] = []
    for token in text.split():
        key, eq, value = token.partition("=")
        if not key:
            raise ValueError("field without a name")
        items.append((key, value if eq else ""))
    return items


def compile_fields(items: list[tuple[str, str]]) -> tuple[tuple[str, Template], ...]:
    """Parse each value as a variable template (raises VariableError naming the problem)."""
    return tuple((key, Template.parse(value)) for key, value in items)
