"""What every `palomar cluster` verb shares: the config, the GeoDB, output mode and error reporting.

Verbs raise `CommandError` (or a `ValidationError`) with a one-line message; the `cluster` group
turns it into `palomar cluster: <message>` on stderr and exit status 1, so an operator never
sees a traceback for a typo, a missing entity, a bad config or an unreachable GeoDB.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from uuid import UUID

import click

from palomar.cli import output
from palomar.cluster.model import Backend, Site, Tag
from palomar.cluster.validation import ValidationError, looks_like_uuid
from palomar.config import ConfigError
from palomar.config import load as load_config
from palomar.geodb import open_engine
from palomar.geodb.engine import GeoDBError
from palomar.geodb.repository import GeoDB
from palomar.service_runtime import geodb_engine_options

DEFAULT_CONFIG = "/etc/palomar/palomar.conf"
PROG = "palomar cluster"
NUMERIC_ARGS = {"ignore_unknown_options": True}
"""For verbs taking a PERCENT: `-1` must reach our range check, not be read as an option."""
T = TypeVar("T")


class CommandError(Exception):
    """A verb cannot be carried out; the message is one line for the operator."""


def resolve_host(host: str) -> object:
    """Resolve a backend name through the system resolver (hosts file, DNS); raises OSError."""
    return socket.getaddrinfo(host, None)


def _one_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return "; ".join(part.strip() for part in text.splitlines() if part.strip())


def report(error: BaseException) -> None:
    """Print the one-line error the way every cluster verb does."""
    click.echo(f"{PROG}: {_one_line(error)}", err=True)


def expected_errors() -> tuple[type[BaseException], ...]:
    """Errors that are the operator's or the environment's, not bugs: reported in one line."""
    return (
        CommandError,
        ValidationError,
        GeoDBError,
        sqlite3.Error,
        OSError,
        ConfigError,
    )


@dataclass
class ClusterContext:
    """Per-invocation state of `palomar cluster`, stored as the click context object."""

    config_path: str
    json_output: bool = False
    _config: Any = field(default=None, repr=False)

    # -- configuration ------------------------------------------------------------------------

    def config(self) -> Any:
        if self._config is None:
            if not os.path.exists(self.config_path):
                raise CommandError(
                    f"config file {self.config_path} does not exist (use -c or $PALOMAR_CONFIG)"
                )
            try:
                self._config = load_config(self.config_path)
            except ConfigError as err:
                message = _one_line(err)
                if self.config_path not in message:
                    message = f"config {self.config_path}: {message}"
                raise CommandError(message) from None
        return self._config

    def setting(self, name: str) -> str:
        """A config setting as text ('' when unset)."""
        value = self.config()[name]
        return "" if value is None else str(value)

    def local_site_name(self) -> str:
        name = self.setting("cluster_local_site")
        if not name:
            raise CommandError("cluster_local_site is not set in the config")
        return name

    def local_backend_name(self) -> str:
        name = self.setting("cluster_backend_name")
        if not name:
            raise CommandError("cluster_backend_name is not set in the config")
        return name

    # -- GeoDB --------------------------------------------------------------------------------

    async def open_geodb(self) -> GeoDB:
        driver, options = geodb_engine_options(self.config())
        try:
            engine = open_engine(driver, **options)
            await engine.open()
        except (GeoDBError, sqlite3.Error, OSError) as err:
            raise CommandError(f"cannot open the GeoDB ({driver}): {_one_line(err)}") from None
        return GeoDB(engine)

    def run(self, action: Callable[[GeoDB], Awaitable[T]]) -> T:
        """Open the GeoDB, run one verb against it, close it."""

        async def main() -> T:
            db = await self.open_geodb()
            try:
                return await action(db)
            finally:
                await db.close()

        return asyncio.run(main())

    # -- output -------------------------------------------------------------------------------

    def emit_list(self, records: Sequence[output.Record], columns: Sequence[str]) -> None:
        if self.json_output:
            click.echo(output.to_json([dict(r) for r in records]))
        elif records:
            click.echo(output.table(records, columns))

    def emit_record(self, record: output.Record) -> None:
        if self.json_output:
            click.echo(output.to_json(dict(record)))
        else:
            click.echo(output.fields(record))

    def emit_result(self, record: output.Record, line: str) -> None:
        """A verb's outcome: the record for scripts (--json), one line for people."""
        if self.json_output:
            self.emit_record(record)
        else:
            click.echo(line)

    def warn(self, message: str) -> None:
        click.echo(f"{PROG}: warning: {message}", err=True)


pass_ctx = click.make_pass_decorator(ClusterContext)


def default_config_path() -> str:
    return os.environ.get("PALOMAR_CONFIG") or DEFAULT_CONFIG


def self_or_given(self_flag: bool, given: str | None, what: str, local: Callable[[], str]) -> str:
    """`--self | <what>`: exactly one of them; --self means this host's own, from `local()`."""
    if self_flag and given:
        raise CommandError(f"give either --self or a {what}, not both")
    if self_flag:
        return local()
    if not given:
        raise CommandError(f"missing {what} (or --self)")
    return given


# -- lookups shared by the verbs ------------------------------------------------------------------


async def site_by_name(db: GeoDB, name: str) -> Site:
    site = await db.site_get_by_name(name)
    if site is None:
        raise CommandError(f"site '{name}' does not exist")
    return site


async def _by_name_or_id(
    text: str, noun: str, by_name: Callable[[str], Awaitable[T | None]], by_id: Callable[[UUID], Awaitable[T | None]]
) -> T:
    found = await by_name(text)
    if found is None and looks_like_uuid(text):
        found = await by_id(UUID(text))
    if found is None:
        raise CommandError(f"{noun} '{text}' does not exist")
    return found


async def site_by_name_or_id(db: GeoDB, text: str) -> Site:
    return await _by_name_or_id(text, "site", db.site_get_by_name, db.site_get)


async def backend_by_host(db: GeoDB, host: str) -> Backend:
    backend = await db.backend_find_by_host(host.strip().rstrip("."))
    if backend is None:
        raise CommandError(f"backend '{host}' does not exist")
    return backend


async def tag_by_name_or_id(db: GeoDB, text: str) -> Tag:
    return await _by_name_or_id(text, "tag", db.tag_get_by_name, db.tag_get)
