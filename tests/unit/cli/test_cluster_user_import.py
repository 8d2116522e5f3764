"""`palomar cluster user import` through the real CLI entry point on a SQLite GeoDB."""

from __future__ import annotations

import json
from pathlib import Path

from cluster_harness import Cluster
from palomar.cluster.model import User


def _user(cluster: Cluster, name: str) -> User | None:
    return cluster.db(lambda db: db.user_get(name))


def _site_id(cluster: Cluster, name: str):  # noqa: ANN202
    return cluster.db(lambda db: db.site_get_by_name(name)).id


def test_csv_import_places_users_in_batches(two_sites: Cluster, tmp_path: Path) -> None:
    path = tmp_path / "users.csv"
    path.write_text("username,site,group\n" + "".join(f"u{i},west,g{i % 3}\n" for i in range(2500)) + "local1,,\n")
    result = two_sites.run("user", "import", "--batch-size", "1000", str(path))
    assert result.exit_code == 0, result.output
    assert "imported 2501 users" in result.stdout
    assert "2501 imported" in result.stderr  # the final progress line
    west, east = _site_id(two_sites, "west"), _site_id(two_sites, "east")
    u7 = _user(two_sites, "u7")
    assert u7 is not None and (u7.preferred_site_id, u7.group_name) == (west, "g1")
    local = _user(two_sites, "local1")
    assert local is not None and (local.preferred_site_id, local.group_name) == (east, None)  # cluster_local_site


def test_jsonl_import_leaves_existing_users_alone_unless_update(two_sites: Cluster, tmp_path: Path) -> None:
    two_sites.db(lambda db: db.user_put("old", group_name="keep"))
    path = tmp_path / "users.jsonl"
    path.write_text(json.dumps({"username": "old", "group": "new"}) + "\n" + json.dumps({"username": "fresh"}) + "\n")
    out = two_sites.json("user", "import", "--site", "west", "--no-progress", str(path))
    assert (out["imported"], out["existing"], out["bad_lines"]) == (1, 1, 0)
    assert _user(two_sites, "old").group_name == "keep"  # type: ignore[union-attr]
    assert _user(two_sites, "fresh").preferred_site_id == _site_id(two_sites, "west")  # type: ignore[union-attr]
    out = two_sites.json("user", "import", "--update", "--no-progress", str(path))
    assert (out["imported"], out["existing"]) == (2, 0)
    assert _user(two_sites, "old").group_name == "new"  # type: ignore[union-attr]


def test_bad_lines_are_named_and_skipped_without_traceback(two_sites: Cluster, tmp_path: Path) -> None:
    path = tmp_path / "users.csv"
    path.write_bytes(b"good1,east\nbad user,east\ngood2,nowhere\nbad\xff,east\ngood3\n")
    result = two_sites.run("user", "import", "--no-progress", str(path))
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stderr.splitlines() == [
        f"palomar cluster: {path} line 2: invalid user name 'bad user': must be 1-255 characters without spaces or '/'",
        f"palomar cluster: {path} line 3: site 'nowhere' does not exist",
        f"palomar cluster: {path} line 4: user name is not valid UTF-8",
        "palomar cluster: 3 bad lines not imported",
    ]
    assert "imported 2 users" in result.stdout
    assert _user(two_sites, "good3") is not None and _user(two_sites, "good2") is None


def test_refusals_before_any_write(two_sites: Cluster, tmp_path: Path) -> None:
    (tmp_path / "users.txt").write_text("alice\n")
    assert "give --format csv or --format jsonl" in two_sites.fails("user", "import", str(tmp_path / "users.txt"))
    assert "cannot read" in two_sites.fails("user", "import", str(tmp_path / "absent.csv"))
    assert two_sites.fails("user", "import", "--site", "mars", "--format", "csv",
                           str(tmp_path / "users.txt")) == "site 'mars' does not exist"
    assert _user(two_sites, "alice") is None
