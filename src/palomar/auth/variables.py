"""Dovecot-style ``%`` variables in passdb args and fields (``%u``, ``%Ln``, ``%{user}``, ``%{rip}``...).

Templates are parsed once when the configuration loads, so a typo in a variable name is a
configuration error naming the variable instead of a surprise at login time. Both the 2.3
forms (``%Lu``, ``%L{user}``) and the 2.4 filter form (``%{user | lower}``) are accepted.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

SHORT_NAMES = {
    "u": "user",
    "n": "username",
    "d": "domain",
    "s": "service",
    "r": "rip",
    "l": "lip",
    "m": "mech",
    "w": "password",
    "c": "secured",
}
KNOWN_NAMES = frozenset(SHORT_NAMES.values()) | {
    "backend_host",
    "real_rip",
    "real_lip",
    "session",
    "login_user",
    "master_user",
}
_FILTERS = ("lower", "upper", "username", "domain")
_LONG_RE = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*((?:\|\s*[A-Za-z_]+\s*)*)$")


class VariableError(ValueError):
    """A template refers to an unknown variable or is not well-formed.

    The message never quotes the template: field values may hold passwords.
    """


@dataclass(frozen=True)
class _Var:
    name: str
    filters: tuple[str, ...]


@dataclass(frozen=True)
class Template:
    """A parsed template: literal strings interleaved with variable references."""

    parts: tuple[str | _Var, ...]

    @classmethod
    def parse(cls, text: str) -> Template:
        parts: list[str | _Var] = []
        literal: list[str] = []
        i = 0
        while i < len(text):
            ch = text[i]
            if ch != "%":
                literal.append(ch)
                i += 1
                continue
            i += 1
            if i < len(text) and text[i] == "%":
                literal.append("%")
                i += 1
                continue
            modifiers: list[str] = []
            while i < len(text) and text[i] in "LU":
                modifiers.append("lower" if text[i] == "L" else "upper")
                i += 1
            if i >= len(text):
                raise VariableError("template ends inside a % variable")
            if text[i] == "{":
                end = text.find("}", i)
                if end < 0:
                    raise VariableError("template has an unclosed %{")
                var = _parse_long(text[i + 1:end])
                var = _Var(var.name, tuple(modifiers) + var.filters)
                i = end + 1
            else:
                name = SHORT_NAMES.get(text[i])
                if name is None:
                    raise VariableError(f"unknown variable %{text[i]}")
                var = _Var(name, tuple(modifiers))
                i += 1
            if literal:
                parts.append("".join(literal))
                literal = []
            parts.append(var)
        if literal:
            parts.append("".join(literal))
        return cls(tuple(parts))

    @property
    def names(self) -> frozenset[str]:
        """Variable names the template uses."""
        return frozenset(p.name for p in self.parts if isinstance(p, _Var))

    @property
    def is_literal(self) -> bool:
        return all(isinstance(p, str) for p in self.parts)

    def render(self, values: Mapping[str, str], escape: Callable[[str], str] | None = None) -> str:
        """Expand with ``values``; a known variable without a value expands to ``""``.

        ``escape`` is applied to each expanded value (not to the literal text), as Dovecot
        escapes variables in SQL queries and LDAP filters."""
        out: list[str] = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
            else:
                value = _apply(values.get(part.name, ""), part.filters)
                out.append(escape(value) if escape is not None else value)
        return "".join(out)


def _parse_long(body: str) -> _Var:
    match = _LONG_RE.match(body)
    if not match:
        raise VariableError("malformed %{...} variable")
    name = match.group(1)
    if name not in KNOWN_NAMES:
        raise VariableError(f"unknown variable %{{{name}}}")
    filters = tuple(f.strip() for f in match.group(2).split("|") if f.strip())
    for f in filters:
        if f not in _FILTERS:
            raise VariableError(f"unknown filter {f!r}")
    return _Var(name, filters)


def _apply(value: str, filters: tuple[str, ...]) -> str:
    for f in filters:
        if f == "lower":
            value = value.lower()
        elif f == "upper":
            value = value.upper()
        elif f == "username":
            value = value.partition("@")[0]
        elif f == "domain":
            value = value.partition("@")[2]
    return value


def user_values(user: str) -> dict[str, str]:
    """``user``, ``username`` and ``domain`` for a login name (split at the first ``@``)."""
    username, _, domain = user.partition("@")
    return {"user": user, "username": username, "domain": domain}


def expand(text: str, values: Mapping[str, str]) -> str:
    """Parse and render in one step (for one-off strings; parse once when reused)."""
    return Template.parse(text).render(values)
