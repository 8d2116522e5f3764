"""Value types of settings: parse the text of a config file into typed Python values.

Each type parses with Dovecot's rules (yes/no booleans, `31 secs` times, `10M` sizes)
and raises `ValueError` with a message that says what was expected, so the loader
can prefix it with `file:line: setting:`.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

_TIME_UNITS: dict[str, float] = {}
for _names, _seconds in (
    (("ms", "msec", "msecs", "millisecond", "milliseconds"), 0.001),
    (("s", "sec", "secs", "second", "seconds"), 1.0),
    (("m", "min", "mins", "minute", "minutes"), 60.0),
    (("h", "hour", "hours"), 3600.0),
    (("d", "day", "days"), 86400.0),
    (("w", "week", "weeks"), 604800.0),
):
    for _name in _names:
        _TIME_UNITS[_name] = _seconds

_SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_NUMBER_UNIT = re.compile(r"(\d+(?:\.\d+)?)\s*([A-Za-z]*)\Z")
_HOSTNAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?\Z")


def parse_time(text: str) -> float:
    """`31 secs`, `31secs`, `31s`, `2 mins`, `500 ms`, `1h`, `5` (seconds) -> seconds."""
    match = _NUMBER_UNIT.match(text.strip())
    unit = match.group(2).lower() if match else ""
    if not match or (unit not in _TIME_UNITS and unit != ""):
        raise ValueError(f"expected a time such as '30 secs', '2 mins' or '500 ms', got {text!r}")
    return float(match.group(1)) * _TIME_UNITS.get(unit, 1.0)


def parse_size(text: str) -> int:
    """`10M`, `1 G`, `512k`, `100` (bytes), `2 GB`, `4 KiB` -> bytes (powers of 1024)."""
    match = _NUMBER_UNIT.match(text.strip())
    unit = match.group(2).lower() if match else ""
    if unit.endswith("ib"):
        unit = unit[:-2]
    elif len(unit) == 2 and unit.endswith("b"):
        unit = unit[:-1]
    if not match or unit not in _SIZE_UNITS or (unit == "" and "." in match.group(1)):
        raise ValueError(f"expected a size such as '10M', '1 G' or '512k', got {text!r}")
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


def format_time(seconds: float) -> str:
    """The shortest Dovecot spelling of a time, for `config show`."""
    for unit, size in (("weeks", 604800), ("days", 86400), ("hours", 3600), ("mins", 60), ("secs", 1)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)} {unit}"
    if seconds == 0:
        return "0"
    return f"{round(seconds * 1000)} ms"


def format_size(size: int) -> str:
    """The shortest exact Dovecot spelling of a size, for `config show`."""
    for unit, factor in (("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("k", 1 << 10)):
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


def split_list(text: str) -> list[str]:
    """Dovecot lists are separated by spaces and/or commas."""
    return [item for item in re.split(r"[\s,]+", text.strip()) if item]


@dataclass(frozen=True)
class ValueType:
    """A setting type: its name (for docs and errors) and how to parse and print it."""

    name: str

    def parse(self, text: str) -> Any:
        return text

    def format(self, value: Any) -> str:
        return str(value)


class _String(ValueType):
    pass


class _Bool(ValueType):
    def parse(self, text: str) -> bool:
        lowered = text.strip().lower()
        if lowered in ("yes", "y", "1"):
            return True
        if lowered in ("no", "n", "0"):
            return False
        raise ValueError(f"expected yes or no, got {text!r}")

    def format(self, value: Any) -> str:
        return "yes" if value else "no"


@dataclass(frozen=True)
class _Uint(ValueType):
    maximum: int | None = None

    def parse(self, text: str) -> int:
        stripped = text.strip()
        if not stripped or any(ch not in "0123456789" for ch in stripped):
            raise ValueError(f"expected a non-negative integer, got {text!r}")
        value = int(stripped)
        if self.maximum is not None and value > self.maximum:
            raise ValueError(f"expected at most {self.maximum}, got {text!r}")
        return value

    def format(self, value: Any) -> str:
        return str(value)


@dataclass(frozen=True)
class _Decimal(ValueType):
    def parse(self, text: str) -> float:
        try:
            value = float(text.strip())
        except ValueError:
            raise ValueError(f"expected a non-negative number, got {text!r}") from None
        if not value >= 0 or value == float("inf"):
            raise ValueError(f"expected a non-negative number, got {text!r}")
        return value

    def format(self, value: Any) -> str:
        return f"{value:g}"


class _Time(ValueType):
    def parse(self, text: str) -> float:
        return parse_time(text)

    def format(self, value: Any) -> str:
        return format_time(value)


class _Size(ValueType):
    def parse(self, text: str) -> int:
        return parse_size(text)

    def format(self, value: Any) -> str:
        return format_size(value)


class _Words(ValueType):
    def parse(self, text: str) -> list[str]:
        return split_list(text)

    def format(self, value: Any) -> str:
        return " ".join(value)


class _Networks(ValueType):
    def parse(self, text: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        networks = []
        for item in split_list(text):
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                raise ValueError(f"expected IP networks such as 10.0.0.0/8 or ::1, got {item!r}") from None
        return networks

    def format(self, value: Any) -> str:
        return " ".join(str(net) for net in value)


class _Addresses(ValueType):
    """Listen addresses: `*` (all IPv4), `::` (all IPv6), IP addresses or host names."""

    def parse(self, text: str) -> list[str]:
        addresses = []
        for item in split_list(text):
            bare = item[1:-1] if item.startswith("[") and item.endswith("]") else item
            if bare not in ("*", "::"):
                try:
                    ipaddress.ip_address(bare)
                except ValueError:
                    if not _HOSTNAME.match(bare):
                        raise ValueError(f"expected addresses such as '*, ::' or 127.0.0.1, got {item!r}") from None
            addresses.append(bare)
        return addresses

    def format(self, value: Any) -> str:
        return ", ".join(value)


class _Path(ValueType):
    def parse(self, text: str) -> str:
        if any(ord(ch) < 32 for ch in text):
            raise ValueError("expected a path, got text with control characters")
        return text


@dataclass(frozen=True)
class Enum(ValueType):
    """One of a fixed set of words."""

    choices: tuple[str, ...] = ()

    def parse(self, text: str) -> str:
        if text not in self.choices:
            raise ValueError(f"expected one of {', '.join(self.choices)}, got {text!r}")
        return text


STRING: ValueType = _String("string")
SECRET: ValueType = _String("secret")
BOOL: ValueType = _Bool("bool")
UINT: ValueType = _Uint("uint")
PORT: ValueType = _Uint("port", maximum=65535)
PERCENT: ValueType = _Uint("percent", maximum=100)
DECIMAL: ValueType = _Decimal("decimal")
TIME: ValueType = _Time("time")
SIZE: ValueType = _Size("size")
WORDS: ValueType = _Words("list")
NETWORKS: ValueType = _Networks("networks")
ADDRESSES: ValueType = _Addresses("addresses")
PATH: ValueType = _Path("path")


def enum(*choices: str) -> ValueType:
    """An enum type whose name lists its choices (`sqlite|cassandra`), for the docs."""
    return Enum("|".join(choices), choices)
