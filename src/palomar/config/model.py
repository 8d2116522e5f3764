"""Typed views of the config sections (passdb, service, listeners) with defaults filled in."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# Field values under these names are credentials: masked in `repr` and `config show`.
_SECRET_FIELD = re.compile(r"password|secret|(^|_)key$|^pass$", re.I)


def is_secret_field(name: str) -> bool:
    """Whether a passdb field carries a credential (`password`, `master_password`, ...)."""
    return name.lower() != "nopassword" and bool(_SECRET_FIELD.search(name))


def _masked(fields: dict[str, str]) -> dict[str, str]:
    return {k: ("# hidden" if v and is_secret_field(k) else v) for k, v in fields.items()}


@dataclass(frozen=True)
class ListenerSettings:
    """An enabled inet listener (those with `port = 0` are left out of `ServiceSettings.listeners`)."""

    name: str
    port: int
    address: list[str]
    haproxy: bool = False
    ssl: bool = False

    def bind_addresses(self) -> list[str]:
        """The addresses to bind: Dovecot's `*` (every IPv4 address) is 0.0.0.0, the rest as written."""
        return ["0.0.0.0" if a == "*" else a for a in self.address]


@dataclass
class ServiceSettings:
    """`service NAME { ... }` merged over Dovecot's defaults for that service."""

    name: str
    listeners: dict[str, ListenerSettings] = field(default_factory=dict)
    disabled_listeners: list[str] = field(default_factory=list)
    process_min_avail: int = 0
    process_limit: int = 1
    client_limit: int = 10000


@dataclass
class _DbSettings:
    name: str
    driver: str
    args: str = ""
    fields: dict[str, str] = field(default_factory=dict)
    default_fields: dict[str, str] = field(default_factory=dict)
    override_fields: dict[str, str] = field(default_factory=dict)
    result_success: str = "return-ok"
    result_failure: str = "continue"
    result_internalfail: str = "continue"
    skip: str = "never"

    def __repr__(self) -> str:
        # Field values may hold passwords: show only masked values.
        return (
            f"{type(self).__name__}(name={self.name!r}, driver={self.driver!r}, args={self.args!r}, "
            f"fields={_masked(self.fields)!r}, default_fields={_masked(self.default_fields)!r}, "
            f"override_fields={_masked(self.override_fields)!r}, result_success={self.result_success!r}, "
            f"result_failure={self.result_failure!r}, result_internalfail={self.result_internalfail!r}, "
            f"skip={self.skip!r}{self._extra_repr()})"
        )

    def _extra_repr(self) -> str:
        return ""


@dataclass(repr=False)
class PassdbSettings(_DbSettings):
    """`passdb [NAME] { ... }`; `name` is the label, or the driver when there is none."""

    master: bool = False

    def _extra_repr(self) -> str:
        return f", master={self.master!r}"
