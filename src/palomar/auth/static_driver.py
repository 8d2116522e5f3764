"""The static passdb: every user exists, with one password (or ``nopassword``) and fixed fields.

Useful on backends that trust their proxies, and for probe accounts whose password is
shared. As in Dovecot, a static password without a ``{SCHEME}`` prefix is PLAIN.
"""

from __future__ import annotations

from collections.abc import Mapping

from palomar.auth.driver import DriverLookup, compile_fields, parse_field_list
from palomar.auth.variables import Template, VariableError

STATIC_DEFAULT_SCHEME = "PLAIN"


class StaticArgsError(ValueError):
    """The static passdb's ``args`` are not usable."""


class StaticDriver:
    """``driver = static``, ``args = password=... | nopassword=y [key=value ...]``."""

    default_scheme = STATIC_DEFAULT_SCHEME

    def __init__(self, args: str) -> None:
        try:
            items = parse_field_list(args)
            password: Template | None = None
            fields = []
            for key, template in compile_fields(items):
                if key == "password":
                    password = template
                else:
                    fields.append((key, template))
        except (ValueError, VariableError) as exc:
            raise StaticArgsError(f"static: {exc}") from None
        self._password = password
        self._fields = tuple(fields)

    def __repr__(self) -> str:
        return f"StaticDriver(fields={[k for k, _ in self._fields]})"

    def lookup_nowait(self, user: str, values: Mapping[str, str]) -> DriverLookup:
        """No I/O at all: always answered inline."""
        return self.lookup(user, values)

    def lookup(self, user: str, values: Mapping[str, str]) -> DriverLookup:
        password = self._password.render(values) if self._password is not None else None
        return DriverLookup(found=True, password=password, fields=self._fields)
