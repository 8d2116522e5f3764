"""The reachability rule's numbers come from the proxy's settings (cluster_site_*)."""

from __future__ import annotations

from pathlib import Path

import pytest

from palomar.cluster.reachability import ReachabilityWindows
from palomar.config.errors import ConfigError
from palomar.config.loader import load
from palomar.proxy.site_probes import reachability_windows


def test_the_windows_are_read_from_the_settings(tmp_path: Path) -> None:
    path = tmp_path / "proxy.conf"
    path.write_text("cluster_site_probe_interval = 2 secs\ncluster_site_unreachable_after = 15 secs\n"
                    "cluster_site_reachable_after = 7 secs\ncluster_site_unreachable_quorum = 3\n")
    windows = reachability_windows(load(path))
    assert windows == ReachabilityWindows(probe_interval=2.0, down_window=15.0, up_window=7.0, quorum=3)
    assert windows.fresh == 6.0
    assert windows.probe_timeout == 2.0  # a probe never outlasts the interval, so reports stay fresh


def test_the_defaults_are_the_documented_numbers(tmp_path: Path) -> None:
    path = tmp_path / "proxy.conf"
    path.write_text("")
    windows = reachability_windows(load(path))
    assert windows == ReachabilityWindows(10.0, 60.0, 30.0, 2)
    assert (windows.fresh, windows.probe_timeout) == (30.0, 5.0)


def test_a_bad_window_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "proxy.conf"
    path.write_text("cluster_site_unreachable_after = soon\n")
    with pytest.raises(ConfigError, match="cluster_site_unreachable_after"):
        load(path)
