"""Dovecot's ``*.conf.ext`` files (``dovecot-sql.conf.ext``, ``dovecot-ldap.conf.ext``): ``key = value``.

The format is Dovecot's flat settings file: ``#`` comments, a trailing ``\\`` continues the
value on the next line (how long queries are written), and a value in double quotes has them
removed. Errors name the file and line, never the value (``connect`` and ``dnpass`` hold
passwords).
"""

from __future__ import annotations


class ExtFileError(ValueError):
    """The file cannot be read or a line is not ``key = value``."""


def parse_ext(text: str, source: str) -> dict[str, str]:
    """The settings of one file; a key given twice keeps its last value, as in Dovecot."""
    settings: dict[str, str] = {}
    pending = ""
    start = 0
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if not pending:
            start = lineno
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        line, pending = pending + line, ""
        key, eq, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not eq or not key or " " in key:
            raise ExtFileError(f"{source} line {start}: expected `key = value`")
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        settings[key] = value
    if pending:
        raise ExtFileError(f"{source} line {start}: the file ends inside a continued line")
    return settings


def read_ext(path: str) -> dict[str, str]:
    """Read and parse ``path``; a missing or unreadable file is an ExtFileError."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ExtFileError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    return parse_ext(text, path)


def refuse_unknown(settings: dict[str, str], known: frozenset[str], source: str) -> None:
    """Every key must be one we implement (or document as unused): no setting is silently ignored."""
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ExtFileError(f"{source}: unsupported setting(s): {', '.join(unknown)}")


def yes_no(settings: dict[str, str], key: str, default: bool, source: str) -> bool:
    """Dovecot's boolean: yes/no (also y/n, true/false, 1/0)."""
    value = settings.get(key, "").strip().lower()
    if not value:
        return default
    if value in ("yes", "y", "true", "1"):
        return True
    if value in ("no", "n", "false", "0"):
        return False
    raise ExtFileError(f"{source}: {key} must be yes or no")
