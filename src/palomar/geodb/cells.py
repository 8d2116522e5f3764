"""Cassandra's cell reconciliation as pure functions, for engines that must emulate it.

A stored row is a row marker (the write time of the INSERT that created it), a deletion
time (the newest row or partition tombstone covering it) and per column a cell: a value
(None for a cell tombstone) with its write time. Merging a write into it follows
Cassandra's rules, so that an engine built on these functions converges exactly as a
Cassandra cluster would, whatever order the writes arrive in:

* the newer write time wins, per column;
* on equal write times a tombstone (None) beats a value, and between two values the one
  with the greater serialized bytes (unsigned) wins, so every replica picks the same one;
* a deletion at T hides the marker and every cell written at T or earlier; a later write
  revives the row with only what it writes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from palomar.geodb.schema import serialize_value

Cell = tuple[Any, int]
"""(value or None, write time in microseconds)."""


@dataclass
class StoredRow:
    """What an engine keeps for one primary key (already cleaned of shadowed cells)."""

    marker: int | None = None
    deleted: int | None = None
    cells: dict[str, Cell] = field(default_factory=dict)

    @property
    def live(self) -> bool:
        return self.marker is not None or any(v is not None for v, _ in self.cells.values())


def cell_wins(ctype: str, new: Cell, old: Cell | None) -> bool:
    """Whether cell `new` replaces `old` (Cassandra's reconcile; ties resolved by content)."""
    if old is None:
        return True
    new_value, new_ts = new
    old_value, old_ts = old
    if new_ts != old_ts:
        return new_ts > old_ts
    if new_value is None or old_value is None:
        return new_value is None and old_value is not None
    return serialize_value(ctype, new_value) > serialize_value(ctype, old_value)


def shadowed(ts: int, deleted: int | None) -> bool:
    """A write at `ts` is hidden by a tombstone at `deleted` when ts <= deleted."""
    return deleted is not None and ts <= deleted


def merge_write(
    row: StoredRow, types: Mapping[str, str], values: Mapping[str, Any], ts: int, *, marker: bool
) -> bool:
    """Apply one write (all `values` at time `ts`) to `row` in place; True if anything changed.

    `marker` says whether the write is an INSERT (it makes the row exist even with no
    values) or an UPDATE (the row exists only while one of its cells is live).
    """
    if shadowed(ts, row.deleted):
        return False
    changed = False
    if marker and (row.marker is None or ts > row.marker):
        row.marker = ts
        changed = True
    for col, value in values.items():
        new = (value, ts)
        if cell_wins(types[col], new, row.cells.get(col)):
            row.cells[col] = new
            changed = True
    return changed


def apply_deletion(row: StoredRow, ts: int) -> bool:
    """Apply a tombstone at `ts` to `row` in place: drop what it hides; True if anything changed."""
    changed = False
    if row.deleted is None or ts > row.deleted:
        row.deleted = ts
        changed = True
    if row.marker is not None and row.marker <= ts:
        row.marker = None
        changed = True
    for col in [c for c, (_, wt) in row.cells.items() if wt <= ts]:
        del row.cells[col]
        changed = True
    return changed
