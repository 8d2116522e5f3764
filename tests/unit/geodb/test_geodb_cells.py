"""Cell reconciliation rules (pure): any arrival order of the same writes gives the same row."""

from __future__ import annotations

import itertools

import pytest

from palomar.geodb.cells import StoredRow, apply_deletion, cell_wins, merge_write

TYPES = {"a": "text", "n": "int"}


@pytest.mark.parametrize(
    ("new", "old", "wins"),
    [
        (("x", 2), ("y", 1), True),
        (("x", 1), ("y", 2), False),
        ((None, 2), ("y", 1), True),
        ((None, 1), ("y", 1), True),  # tombstone beats a value at the same time
        (("y", 1), (None, 1), False),
        (("b", 1), ("a", 1), True),  # greater bytes win a tie
        (("a", 1), ("b", 1), False),
        (("a", 1), ("a", 1), False),  # identical: nothing to do
        (("x", 1), None, True),
    ],
)
def test_cell_wins(new: tuple, old: tuple | None, wins: bool) -> None:
    assert cell_wins("text", new, old) is wins


def test_int_ties_compare_twos_complement_bytes_like_cassandra() -> None:
    # -1 is 0xffffffff on the wire, so it beats 1 on an equal write time
    assert cell_wins("int", (-1, 5), (1, 5))
    assert not cell_wins("int", (1, 5), (-1, 5))


def _replay(events: list[tuple]) -> StoredRow:
    row = StoredRow()
    for kind, *rest in events:
        if kind == "write":
            values, ts = rest
            merge_write(row, TYPES, values, ts, marker=True)
        else:
            apply_deletion(row, rest[0])
    return row


def test_every_arrival_order_converges() -> None:
    events = [
        ("write", {"a": "one", "n": 1}, 10),
        ("write", {"a": "two"}, 20),
        ("write", {"n": None}, 15),
        ("delete", 12),
        ("write", {"a": "tie-a"}, 20),
        ("write", {"n": 7}, 11),
    ]
    outcomes = set()
    for order in itertools.permutations(events):
        row = _replay(list(order))
        outcomes.add((row.marker, row.deleted, tuple(sorted(row.cells.items()))))
    assert len(outcomes) == 1
    row = _replay(events)
    assert row.cells == {"a": ("two", 20), "n": (None, 15)}
    assert row.marker == 20 and row.deleted == 12 and row.live


def test_deletion_hides_marker_and_cells_at_or_before_it() -> None:
    row = StoredRow()
    merge_write(row, TYPES, {"a": "x"}, 5, marker=True)
    merge_write(row, TYPES, {"n": 3}, 9, marker=False)
    assert apply_deletion(row, 5)
    assert row.marker is None and row.cells == {"n": (3, 9)} and row.live
    assert not merge_write(row, TYPES, {"a": "late"}, 5, marker=True)
    assert apply_deletion(row, 9)
    assert not row.live
    assert not apply_deletion(row, 9)


def test_update_without_marker_lives_only_through_its_cells() -> None:
    row = StoredRow()
    merge_write(row, TYPES, {"a": None}, 3, marker=False)
    assert not row.live
    merge_write(row, TYPES, {"a": "v"}, 4, marker=False)
    assert row.live and row.marker is None
