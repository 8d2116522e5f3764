"""Where a demo keeps its files: Dovecot's part where Dovecot's users can enter, Cassandra under --dir."""

from __future__ import annotations

from pathlib import Path

import palomar
from palomar.backend.dovecot_config import _PATH_BAD
from palomar.devcluster.cassandra import cassandra_dir
from palomar.devcluster.cluster import shared_dir_for


def test_two_demos_get_two_cassandra_directories_inside_their_own() -> None:
    one, two = cassandra_dir(Path("/root/palomar/demo-run")), cassandra_dir(Path("/srv/other/demo-run"))
    assert one != two
    assert one.is_relative_to("/root/palomar/demo-run") and two.is_relative_to("/srv/other/demo-run")
    assert not one.is_relative_to(Path(palomar.__file__).resolve().parents[2])  # not the source tree


def test_shared_dir_is_stable_distinct_and_safe_for_dovecot() -> None:
    base = Path("/var/lib/palomar/demo")
    one = shared_dir_for(Path("/root/palomar/demo-run"), base)
    assert one == shared_dir_for(Path("/root/palomar/demo-run"), base)
    assert one != shared_dir_for(Path("/home/x/palomar/demo-run"), base)
    assert one.parent == base and one.name.startswith("demo-run-")
    odd = shared_dir_for(Path("/root/my demo:{1}"), base)
    assert odd.parent == base and not _PATH_BAD.search(str(odd))
