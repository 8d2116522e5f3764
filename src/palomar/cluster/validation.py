"""Checks on admin-supplied cluster values, shared by the CLI, the controller and the services.

They are pure (no DNS, no database) so that every caller rejects the same inputs with the same
message; the one check that needs I/O, host name resolution, takes the resolver as an argument.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from uuid import UUID

from palomar.cluster.model import BACKEND_STATUSES, SITE_STATUSES


class ValidationError(ValueError):
    """An admin-supplied value is not acceptable; the message is one line meant for the operator."""


_HOST_LABEL = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")
_NAME = re.compile(r"^[^\s/]{1,255}$")


def parse_uuid(text: str, what: str = "ID") -> UUID:
    """A UUID in its canonical text form; anything else is an error naming `what`."""
    try:
        return UUID(text.strip())
    except (ValueError, AttributeError):
        raise ValidationError(f"invalid {what} {text!r}: not a UUID") from None


def looks_like_uuid(text: str) -> bool:
    """True when `text` parses as a UUID (used to tell `NAME|ID` arguments apart)."""
    try:
        UUID(text.strip())
    except ValueError:
        return False
    return True


def site_status(value: str) -> str:
    """One of the site statuses (online, offline, standby, evacuate)."""
    if value not in SITE_STATUSES:
        raise ValidationError(f"invalid site status {value!r}: expected one of {', '.join(SITE_STATUSES)}")
    return value


def backend_status(value: str) -> str:
    """One of the backend statuses (online, offline, standby)."""
    if value not in BACKEND_STATUSES:
        raise ValidationError(
            f"invalid backend status {value!r}: expected one of {', '.join(BACKEND_STATUSES)}"
        )
    return value


def _int_in_range(value: str | int, what: str, low: int, high: int) -> int:
    if isinstance(value, bool):
        raise ValidationError(f"invalid {what} {value!r}: expected an integer {low}..{high}")
    try:
        number = int(value) if isinstance(value, int) else int(str(value).strip(), 10)
    except ValueError:
        raise ValidationError(f"invalid {what} {value!r}: expected an integer {low}..{high}") from None
    if not low <= number <= high:
        raise ValidationError(f"invalid {what} {number}: must be between {low} and {high}")
    return number


def load_factor(value: str | int) -> int:
    """A backend load factor: 0 (take no new groups) .. 100 (full share)."""
    return _int_in_range(value, "load factor", 0, 100)


def percentage(value: str | int) -> int:
    """A force-move or recover percentage of users, 0..100."""
    return _int_in_range(value, "percentage", 0, 100)


def refresh_after(value: str) -> int | None:
    """`group update --refresh-after`: seconds (1..2^31-1, a Cassandra int), or `default` (None:
    the proxies' cache_ttl)."""
    if value.strip().lower() == "default":
        return None
    return _int_in_range(value, "--refresh-after seconds", 1, 2**31 - 1)


def yes_no(value: str, what: str) -> bool:
    """The `yes|no` flags of `group update`."""
    lowered = value.strip().lower()
    if lowered in ("yes", "y", "1", "true"):
        return True
    if lowered in ("no", "n", "0", "false"):
        return False
    raise ValidationError(f"invalid {what} {value!r}: expected yes or no")


def entity_name(value: str, what: str) -> str:
    """A site, tag, group or user name: non-empty, no whitespace or slash (they would break dict keys)."""
    if not _NAME.match(value or ""):
        raise ValidationError(f"invalid {what} {value!r}: must be 1-255 characters without spaces or '/'")
    return value


def is_literal_ip(value: str) -> bool:
    """True for an IPv4/IPv6 address literal (optionally in brackets)."""
    try:
        ipaddress.ip_address(value.strip("[]"))
    except ValueError:
        return False
    return True


def host_name(value: str) -> str:
    """A backend's host: a syntactically valid DNS name, or an IP address literal.

    Palomar insists on DNS names; palomar also takes a literal address, for clusters whose
    backends have no DNS entries (and for the loopback demo). Names stay the recommendation:
    the host is the backend's identity, and a name survives a change of address.
    """
    host = (value or "").strip().rstrip(".")
    if is_literal_ip(host):
        return str(ipaddress.ip_address(host.strip("[]")))
    if not host or len(host) > 253 or not all(_HOST_LABEL.match(label) for label in host.split(".")):
        raise ValidationError(f"invalid backend name {value!r}: not a valid host name")
    return host.lower()


def resolvable_host_name(value: str, resolve: Callable[[str], object]) -> str:
    """`host_name`, and `resolve(host)` must succeed (it raises OSError when the name is unknown)."""
    host = host_name(value)
    if is_literal_ip(host):
        return host
    try:
        resolve(host)
    except (OSError, UnicodeError):
        raise ValidationError(f"invalid backend name {value!r}: the name does not resolve") from None
    return host


def load_balancer(value: str) -> str:
    """A site's load balancer address: host name or IP, optionally with :port (where foreign proxies go)."""
    text = (value or "").strip()
    if not text or any(ch.isspace() for ch in text) or len(text) > 255:
        raise ValidationError(f"invalid load balancer {value!r}")
    return text
