"""Controller events as one log line each: `event=NAME key=value ...`, values quoted when needed."""

from __future__ import annotations

from typing import Any


def _value(value: Any) -> str:
    text = "-" if value is None else str(value)
    if text == "" or any(c in text for c in ' "=\\\n'):
        escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'
    return text


def event_line(event: str, **fields: Any) -> str:
    """`event=<event> k1=v1 k2="v 2"`, fields in the order given."""
    return " ".join([f"event={event}", *(f"{k}={_value(v)}" for k, v in fields.items())])
