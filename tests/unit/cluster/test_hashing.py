"""Stable hashes: group pool assignment, force-move buckets, weighted rendezvous."""

from __future__ import annotations

import math
import subprocess
import sys
from collections import Counter
from uuid import UUID

import pytest

from palomar.cluster.hashing import default_group_name, force_move_bucket, weighted_rendezvous

MOVE_ID = UUID("12345678-1234-5678-1234-567812345678")
OTHER_MOVE_ID = UUID("87654321-4321-8765-4321-876543218765")
USERS = [f"user{i}@example.com" for i in range(10_000)]


# --- default_group_name ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("username", "count", "expected"),
    [
        pytest.param("alice", 100, "default-8", id="alice-of-100"),
        pytest.param("bob@example.com", 100, "default-89", id="bob-of-100"),
        pytest.param("jürgen", 100, "default-6", id="non-ascii-of-100"),
        pytest.param("alice", 7, "default-2", id="alice-of-7"),
        pytest.param("anyone", 1, "default-1", id="single-group"),
    ],
)
def test_default_group_name_is_pinned(username: str, count: int, expected: str) -> None:
    # Golden values: a change here would re-home every existing deployment's new users.
    assert default_group_name(username, count) == expected


def test_default_group_name_is_the_same_in_another_process() -> None:
    # Python's hash() is salted per process; the rule must not depend on it.
    code = "from palomar.cluster.hashing import default_group_name as d; print(d('carol', 100))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        check=True, capture_output=True, text=True, env={"PYTHONHASHSEED": "12345"},
    ).stdout.strip()
    assert out == default_group_name("carol", 100)


@pytest.mark.parametrize("count", [0, -3], ids=["zero", "negative"])
def test_default_group_name_rejects_empty_pool(count: int) -> None:
    with pytest.raises(ValueError, match="cluster_default_group_count"):
        default_group_name("alice", count)


def test_default_groups_cover_the_pool_roughly_evenly() -> None:
    counts = Counter(default_group_name(u, 100) for u in USERS)
    assert set(counts) == {f"default-{n}" for n in range(1, 101)}
    # Expected 100 per group, standard deviation ~10: 60..140 is four sigma.
    assert min(counts.values()) >= 60
    assert max(counts.values()) <= 140


def test_default_group_name_distinguishes_case() -> None:
    # Usernames are normalised by the passdb before routing, not here.
    names = {default_group_name(u, 1000) for u in ("Alice", "alice", "ALICE")}
    assert len(names) > 1


# --- force_move_bucket ----------------------------------------------------------------------


def test_force_move_bucket_is_pinned_and_in_range() -> None:
    assert force_move_bucket(MOVE_ID, "alice") == 24
    buckets = [force_move_bucket(MOVE_ID, u) for u in USERS]
    assert min(buckets) == 0
    assert max(buckets) == 99


@pytest.mark.parametrize("percentage", [10, 25, 50, 90], ids=lambda p: f"{p}pct")
def test_force_move_bucket_selects_the_percentage(percentage: int) -> None:
    selected = sum(force_move_bucket(MOVE_ID, u) < percentage for u in USERS)
    assert abs(selected - percentage * 100) < 300


def test_force_move_buckets_of_different_moves_are_unrelated() -> None:
    first = {u for u in USERS if force_move_bucket(MOVE_ID, u) < 20}
    second = {u for u in USERS if force_move_bucket(OTHER_MOVE_ID, u) < 20}
    overlap = len(first & second) / len(first)
    # Independent 20 % selections overlap in about 20 % of users.
    assert 0.15 < overlap < 0.25


# --- weighted_rendezvous --------------------------------------------------------------------


@pytest.mark.parametrize(
    "candidates",
    [
        pytest.param([], id="empty"),
        pytest.param([("a", 0.0), ("b", 0.0)], id="all-zero"),
        pytest.param([("a", -5.0)], id="negative"),
    ],
)
def test_rendezvous_without_positive_weight_picks_nothing(candidates: list[tuple[str, float]]) -> None:
    assert weighted_rendezvous("default-1", candidates) is None


def test_rendezvous_ignores_zero_weight_candidates() -> None:
    picks = {weighted_rendezvous(f"g{i}", [("a", 0.0), ("b", 100.0)]) for i in range(200)}
    assert picks == {"b"}


def test_rendezvous_does_not_depend_on_candidate_order() -> None:
    cands = [("a", 100.0), ("b", 50.0), ("c", 75.0), ("d", 100.0)]
    for i in range(500):
        assert weighted_rendezvous(f"g{i}", cands) == weighted_rendezvous(f"g{i}", cands[::-1])


@pytest.mark.parametrize(
    ("weights", "expected_share"),
    [
        pytest.param({"a": 100, "b": 50}, {"a": 2 / 3, "b": 1 / 3}, id="100-vs-50"),
        pytest.param({"a": 100, "b": 100, "c": 100}, {"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}, id="equal"),
        pytest.param({"a": 100, "b": 75, "c": 25}, {"a": 0.5, "b": 0.375, "c": 0.125}, id="100-75-25"),
    ],
)
def test_rendezvous_distribution_follows_weights(
    weights: dict[str, int], expected_share: dict[str, float]
) -> None:
    keys = [f"default-{i}" for i in range(3000)]
    counts = Counter(weighted_rendezvous(k, [(n, float(w)) for n, w in weights.items()]) for k in keys)
    for name, share in expected_share.items():
        sigma = math.sqrt(len(keys) * share * (1 - share))
        assert abs(counts[name] - share * len(keys)) < 4 * sigma, (name, counts)


def test_rendezvous_ratio_is_about_two_to_one() -> None:
    counts = Counter(weighted_rendezvous(f"default-{i}", [("a", 100.0), ("b", 50.0)]) for i in range(3000))
    assert 1.75 < counts["a"] / counts["b"] < 2.3


def test_adding_a_candidate_moves_only_its_share() -> None:
    keys = [f"default-{i}" for i in range(4000)]
    before = [("a", 100.0), ("b", 100.0), ("c", 100.0)]
    after = [*before, ("d", 100.0)]
    moved = [
        (k, weighted_rendezvous(k, after))
        for k in keys
        if weighted_rendezvous(k, before) != weighted_rendezvous(k, after)
    ]
    # Every key that moved went to the new candidate, and about 1/4 of keys did.
    assert {dest for _, dest in moved} == {"d"}
    assert abs(len(moved) / len(keys) - 0.25) < 0.03


def test_removing_a_candidate_moves_only_its_keys() -> None:
    keys = [f"default-{i}" for i in range(2000)]
    full = [("a", 100.0), ("b", 50.0), ("c", 100.0)]
    without_b = [c for c in full if c[0] != "b"]
    for k in keys:
        winner = weighted_rendezvous(k, full)
        if winner != "b":
            assert weighted_rendezvous(k, without_b) == winner
