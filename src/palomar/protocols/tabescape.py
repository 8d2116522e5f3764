"""Dovecot's `str_tabescape` / `str_tabunescape` (src/lib/strescape.c): how its line protocols
(doveadm, dict) carry a TAB, CR, LF, NUL or \\x01 inside one field: \\x01 then t, r, n, 0 or 1."""

from __future__ import annotations

_CODES = {"\x01": "1", "\t": "t", "\r": "r", "\n": "n", "\x00": "0"}
_CHARS = {code: char for char, code in _CODES.items()}


class BadEscape(ValueError):
    """\\x01 followed by something `str_tabescape` never writes."""


def tab_escape(field: str) -> str:
    """The field as one TAB-separated field of a line."""
    if not any(char in field for char in _CODES):
        return field
    return "".join("\x01" + _CODES[char] if char in _CODES else char for char in field)


def tab_unescape(field: str, *, strict: bool = False) -> str:
    """Undo `tab_escape`. Dovecot keeps the character after an unknown escape (and a trailing \\x01);
    `strict` refuses them instead, for peers whose own writer could never produce them."""
    if "\x01" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        char = field[i]
        if char == "\x01" and i + 1 < len(field):
            code = field[i + 1]
            if strict and code not in _CHARS:
                raise BadEscape(code)
            out.append(_CHARS.get(code, code))
            i += 2
        elif char == "\x01" and strict:
            raise BadEscape("")
        else:
            out.append(char)
            i += 1
    return "".join(out)
