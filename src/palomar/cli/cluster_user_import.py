"""`palomar cluster user import FILE`: provision many users in the GeoDB at once.

Records are read and checked as the file streams (`cluster.user_import`), then written in batches:
one existence read and one batched write (`GeoDB.users_put_many`: one SQLite transaction) per
batch, while the next batch is parsed. Users that exist already are left alone unless ``--update`` is given, since rewriting an
existing user's group is a direct placement that skips the move machinery. Bad lines are
reported with their line number and skipped; the exit status is then 1.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TextIO
from uuid import UUID

import click

from palomar.cli.cluster_context import PROG, ClusterContext, CommandError, pass_ctx
from palomar.cluster.user_import import FORMATS, BadLine, ImportRecord, format_for, parse
from palomar.geodb.repository import GeoDB

MAX_REPORTED = 20
"""Bad lines printed one by one; the rest are counted."""


@dataclass
class ImportTally:
    imported: int = 0
    existing: int = 0
    bad: list[BadLine] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    @property
    def seen(self) -> int:
        return self.imported + self.existing + len(self.bad)

    def rate(self) -> float:
        return self.imported / max(time.monotonic() - self.started, 1e-9)


class Progress:
    """A progress line on stderr at most once a second (rewritten in place on a terminal)."""

    def __init__(self, enabled: bool, stream: TextIO) -> None:
        self.enabled = enabled
        self.stream = stream
        self.tty = stream.isatty()
        self._last = time.monotonic()

    def update(self, tally: ImportTally, *, final: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not final and now - self._last < 1.0):
            return
        self._last = now
        line = (f"{PROG}: {tally.seen} lines: {tally.imported} imported, {tally.existing} existing, "
                f"{len(tally.bad)} bad ({tally.rate():.0f} users/s)")
        if self.tty:
            self.stream.write("\r" + line + ("\n" if final else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


@contextmanager
def _open_input(path: str) -> Iterator[TextIO]:
    """The file (or stdin for ``-``) as text; bytes that are not UTF-8 reach the parser as
    surrogates, so it can name their line."""
    stdin = path == "-"
    try:
        fh = open(sys.stdin.fileno() if stdin else path, encoding="utf-8", errors="surrogateescape",  # noqa: SIM115
                  newline="", closefd=not stdin)
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror}") from None
    with fh:
        yield fh


async def import_users(db: GeoDB, records: Iterator[ImportRecord | BadLine], *, default_site: str | None,
                       update: bool, batch_size: int, progress: Progress) -> ImportTally:
    """Resolve sites, skip or rewrite existing users, write in batches."""
    sites = {s.name: s.id for s in await db.site_list()}
    if default_site is not None and default_site not in sites:
        raise CommandError(f"site '{default_site}' does not exist")
    tally = ImportTally()
    batch: list[tuple[str, dict[str, Any]]] = []
    writing: asyncio.Task[None] | None = None

    async def write(users: list[tuple[str, dict[str, Any]]]) -> None:
        existing = set() if update else await db.users_existing([name for name, _ in users])
        await db.users_put_many([(name, fields) for name, fields in users if name not in existing])
        tally.existing += len(existing)
        tally.imported += len(users) - len(existing)
        progress.update(tally)

    async def flush() -> None:
        """Hand the batch to the GeoDB and go on parsing the next one meanwhile (one batch in flight)."""
        nonlocal writing
        if writing is not None:
            await writing
        writing = asyncio.ensure_future(write(batch.copy()))
        batch.clear()

    try:
        for record in records:
            placed = record if isinstance(record, BadLine) else _placement(record, sites, default_site)
            if isinstance(placed, BadLine):
                tally.bad.append(placed)
                continue
            batch.append(placed)
            if len(batch) >= batch_size:
                await flush()
                await asyncio.sleep(0)  # let the write start before parsing on
        if batch:
            await flush()
    finally:
        if writing is not None:
            await writing
    progress.update(tally, final=True)
    return tally


def _placement(record: ImportRecord, sites: dict[str, UUID],
               default_site: str | None) -> tuple[str, dict[str, Any]] | BadLine:
    site = record.site or default_site
    if site is None:
        return BadLine(record.lineno, "no site: give one on the line, or --site, or set cluster_local_site")
    site_id = sites.get(site)
    if site_id is None:
        return BadLine(record.lineno, f"site '{site}' does not exist")
    fields: dict[str, Any] = {"preferred_site_id": site_id}
    if record.group is not None:
        fields["group_name"] = record.group
    return record.username, fields


@click.command("import")
@click.option("--format", "fmt", type=click.Choice(sorted(set(FORMATS.values()))),
              help="csv or jsonl (default: from the file's extension).")
@click.option("--site", metavar="SITE", help="Preferred site for lines that name none (default: cluster_local_site).")
@click.option("--update", is_flag=True,
              help="Also rewrite users that exist already (a direct placement, as `user move --direct`).")
@click.option("--batch-size", default=1000, show_default=True, type=click.IntRange(1, 100_000),
              help="Users per GeoDB write.")
@click.option("--no-progress", is_flag=True, help="Do not print progress on stderr.")
@click.argument("path", metavar="FILE")
@pass_ctx
def user_import(ctx: ClusterContext, fmt: str | None, site: str | None, update: bool, batch_size: int,
                no_progress: bool, path: str) -> None:
    """Create users from FILE (CSV or JSON lines: username, optional site and group; - for stdin)."""
    fmt = fmt or format_for(path)
    if fmt is None:
        raise CommandError(f"cannot tell the format of {path}: give --format csv or --format jsonl")
    default_site = site or ctx.setting("cluster_local_site") or None
    progress = Progress(not no_progress, sys.stderr)

    with _open_input(path) as lines:
        tally = ctx.run(lambda db: import_users(db, parse(lines, fmt), default_site=default_site, update=update,
                                                batch_size=batch_size, progress=progress))
    for bad in tally.bad[:MAX_REPORTED]:
        click.echo(f"{PROG}: {path} line {bad.lineno}: {bad.reason}", err=True)
    elapsed = time.monotonic() - tally.started
    ctx.emit_result(
        {"imported": tally.imported, "existing": tally.existing, "bad_lines": len(tally.bad),
         "seconds": round(elapsed, 3)},
        f"imported {tally.imported} users ({tally.existing} existing left alone) in {elapsed:.1f} s",
    )
    if tally.bad:
        more = len(tally.bad) - MAX_REPORTED
        raise CommandError(f"{len(tally.bad)} bad lines not imported" + (f" ({more} not shown)" if more > 0 else ""))
