"""`GeoDB.user_pages` on a real Cassandra: the users read in token order, page by page.

The unit test drives `scan_page` against a stand-in session; here Cassandra itself orders the
partitions and evaluates `token(username) > token(?)`, over thousands of users whose names
include the awkward ones (non-ASCII, 4-byte UTF-8, quotes, case variants, long, CQL-looking).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest

from palomar.geodb import open_engine
from palomar.geodb.repository import GeoDB

KEYSPACE = "user_pages"

EDGE_NAMES = [
    "Alice", "alice", "ALICE", "alice ", " alice", "a", "0", "-1", "user@example.com",
    "o'brien", 'say "hi"', "back\\slash", "tab\there", "per%cent", "under_score",
    "jürgen", "日本語ユーザー", "😀emoji@example.org", "token(username)", "' OR ''='",
    "x" * 255, "ß" * 100,
]
PLAIN_NAMES = [f"user{i:05d}@example.com" for i in range(4000)]
ALL_NAMES = EDGE_NAMES + PLAIN_NAMES


@pytest.fixture
async def db(cassandra: Any) -> AsyncIterator[GeoDB]:
    """The same users for every test (rewriting them is idempotent and takes a moment)."""
    engine = open_engine("cassandra", hosts=["127.0.0.1"], keyspace=KEYSPACE, local_dc="dc1",
                         replication={"dc1": 1})
    await engine.open()
    geodb = GeoDB(engine)
    await geodb.users_put_many([(name, {"group_name": "g"}) for name in ALL_NAMES])
    yield geodb
    await engine.close()


async def pages_of(db: GeoDB, page_size: int) -> list[list[str]]:
    return [[u.username for u in page] async for page in db.user_pages(page_size)]


@pytest.mark.parametrize("page_size", [1, 7, 500, 4022, 6000])
async def test_every_user_is_read_exactly_once_in_pages_of_the_asked_size(db: GeoDB, page_size: int) -> None:
    pages = await pages_of(db, page_size)
    seen = Counter(name for page in pages for name in page)
    assert not [name for name, n in seen.items() if n > 1]
    assert set(seen) == set(ALL_NAMES)
    assert all(len(page) == page_size for page in pages[:-1])
    assert 0 < len(pages[-1]) <= page_size  # no empty page, also when the count is a multiple
    assert len(pages) == -(-len(ALL_NAMES) // page_size)


async def test_pages_follow_the_token_order_of_a_full_scan(db: GeoDB) -> None:
    scanned = [row["username"] for row in await db.engine.scan("users")]
    assert [n for page in await pages_of(db, 333) for n in page] == scanned


async def test_a_user_deleted_after_ending_a_page_does_not_stop_the_pass(db: GeoDB) -> None:
    """The next page starts after the token of the previous page's last name, which needs no row."""
    seen: list[str] = []
    deleted = None
    async for page in db.user_pages(250):
        seen += [u.username for u in page]
        if deleted is None:
            deleted = page[-1].username
            await db.user_delete(deleted)
    try:
        assert sorted(seen) == sorted(ALL_NAMES)
    finally:
        assert deleted is not None
        await db.user_put(deleted, group_name="g")
