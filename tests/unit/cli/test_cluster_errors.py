"""Config and GeoDB failures, JSON output, and the real `palomar` executable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from cluster_harness import Cluster, write_config
from palomar.cli.main import main

PALOMAR = Path(sys.executable).with_name("palomar")


def _one_line_failure(args: list[str], env: dict[str, str] | None = None) -> str:
    result = CliRunner().invoke(main, args, env=env)
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("palomar cluster: "), result.stderr
    assert result.stdout == ""
    return lines[0]


def test_missing_config_file_is_one_line(tmp_path: Path) -> None:
    line = _one_line_failure(["cluster", "-c", str(tmp_path / "nope.conf"), "site", "list"])
    assert "nope.conf does not exist" in line


def test_config_comes_from_palomar_config_env(tmp_path: Path) -> None:
    config = tmp_path / "env.conf"
    write_config(config, tmp_path / "g.sqlite", tmp_path / "l.sqlite")
    result = CliRunner().invoke(main, ["cluster", "site", "add", "east"], env={"PALOMAR_CONFIG": str(config)})
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "g.sqlite").exists()
    line = _one_line_failure(
        ["cluster", "site", "list"], env={"PALOMAR_CONFIG": str(tmp_path / "missing.conf")}
    )
    assert "missing.conf" in line


def test_invalid_config_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "bad.conf"
    config.write_text(f"cluster_geodb_path = {tmp_path}/g.sqlite\nno_such_setting = 1\n")
    line = _one_line_failure(["cluster", "-c", str(config), "site", "list"])
    assert "no_such_setting" in line


def test_unusable_geodb_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "c.conf"
    write_config(config, tmp_path, tmp_path / "l.sqlite")  # a directory, not a database file
    line = _one_line_failure(["cluster", "-c", str(config), "backend", "list"])
    assert "cannot open the GeoDB" in line
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"this is not sqlite" * 100)
    write_config(config, garbage, tmp_path / "l.sqlite")
    assert "cannot open the GeoDB" in _one_line_failure(["cluster", "-c", str(config), "site", "list"])


def test_missing_self_settings_are_reported(tmp_path: Path) -> None:
    config = tmp_path / "c.conf"
    write_config(config, tmp_path / "g.sqlite", tmp_path / "l.sqlite", cluster_backend_name='""')
    assert "cluster_backend_name is not set" in _one_line_failure(
        ["cluster", "-c", str(config), "backend", "add", "--self"]
    )


def test_json_errors_are_still_one_line_on_stderr(cluster: Cluster) -> None:
    assert cluster.fails("site", "status", "nope", json_output=True) == "site 'nope' does not exist"


def test_empty_lists_print_nothing_or_an_empty_json_list(cluster: Cluster) -> None:
    for verb in (("site", "list"), ("backend", "list"), ("group", "list"), ("user", "list"), ("tag", "list")):
        assert cluster.ok(*verb) == ""
        assert cluster.json(*verb) == []


def _palomar(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PALOMAR_CONFIG"}
    return subprocess.run(
        [str(PALOMAR), "cluster", "-c", str(config), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def test_real_executable_end_to_end(tmp_path: Path) -> None:
    config = tmp_path / "palomar.conf"
    write_config(config, tmp_path / "geodb.sqlite", tmp_path / "localdb.sqlite")
    assert _palomar(config, "site", "add", "east").returncode == 0
    added = _palomar(config, "--json", "backend", "add", "--self")
    assert added.returncode == 0, added.stderr
    assert json.loads(added.stdout)["status"] == "standby"
    assert _palomar(config, "backend", "update", "--status", "online", "--self").returncode == 0
    listed = _palomar(config, "--json", "backend", "list")
    assert [(b["host"], b["status"], b["load_factor"]) for b in json.loads(listed.stdout)] == [
        ("localhost", "online", 100)
    ]
    bad = _palomar(config, "backend", "update", "--load-factor", "101", "localhost")
    assert bad.returncode == 1
    assert bad.stdout == ""
    assert bad.stderr.strip() == "palomar cluster: invalid load factor 101: must be between 0 and 100"
    ip = _palomar(config, "backend", "add", "no-such-host.invalid")
    assert ip.returncode == 1 and "Traceback" not in ip.stderr
    assert len(ip.stderr.strip().splitlines()) == 1
