"""base_dir holds each running role's pid file: a second process of the role with the same base_dir
stops with one line instead of sharing the first one's ports (SO_REUSEPORT) and LocalDB."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from palomar.cli.backend_cmd import params_from_config
from palomar.config import load
from palomar.service_runtime import pid_file


def _config(tmp_path: Path, *lines: str):
    path = tmp_path / "palomar.conf"
    path.write_text("\n".join([f"base_dir = {tmp_path / 'run'}", *lines]) + "\n")
    return load(path)


def test_the_role_writes_its_pid_and_a_second_one_is_refused(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    with pid_file(cfg, "proxy") as path:
        assert path == tmp_path / "run" / "proxy.pid"
        assert path.read_text() == f"{os.getpid()}\n"
        with pytest.raises(RuntimeError, match=rf"another palomar proxy runs with this base_dir "
                                               rf"\(PID {os.getpid()}, {path}\)"), pid_file(cfg, "proxy"):
            pass
        with pid_file(cfg, "controller") as other:  # another role beside it is fine
            assert other.name == "controller.pid"
    assert not path.exists()


def test_a_file_left_by_a_killed_process_does_not_block_the_start(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    stale = tmp_path / "run" / "backend.pid"
    stale.parent.mkdir()
    stale.write_text("999999\n")  # nobody holds its lock
    with pid_file(cfg, "backend") as path:
        assert path.read_text() == f"{os.getpid()}\n"


def test_hostname_names_the_backends_dovecot(tmp_path: Path) -> None:
    backend = ["@cluster_defaults = backend", "cluster_backend_name = be1", "cluster_local_site = DC1",
               "cluster_hop_secret = s", "cluster_hop_ssl = no", "cluster_backend_dovecot_master_password = m",
               "doveadm_password = d"]
    def params(*extra: str):
        return params_from_config(_config(tmp_path, *backend, *extra), tmp_path / "mail", tmp_path / "out",
                                  ("127.0.0.1", 25), 0)
    assert params().hostname == "be1"
    assert params("hostname = mail1.example.test").hostname == "mail1.example.test"
    assert params().base_dir == tmp_path / "run" / "dovecot"
