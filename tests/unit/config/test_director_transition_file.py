"""The file `cluster_director_transition_config` names: read as documented, every problem at its line."""

from __future__ import annotations

import pytest

from palomar.config import ConfigError, load
from palomar.config.director_transition import load_transition

from .test_loader import PROXY

GOOD = """
    # palomar director transition
    director_username_hash = %Ln
    mail_server 10.0.0.11 {
      backend = mail1.example.test
      vhost_count = 37
    }
    mail_server 10.0.0.12 {
      state = down
    }
    mail_server 10.0.0.13 {
    }
"""


def test_file_is_read_as_documented(write) -> None:
    transition = load_transition(write("transition.conf", GOOD))
    hosts = {h.ip: (h.vhost_count, h.down) for h in transition.ring.hosts}
    assert hosts == {"10.0.0.11": (37, False), "10.0.0.12": (100, True), "10.0.0.13": (100, False)}
    assert transition.ring.username_hash == "%Ln"
    assert transition.backends == {"10.0.0.11": "mail1.example.test", "10.0.0.12": "10.0.0.12",
                                   "10.0.0.13": "10.0.0.13"}
    assert {transition.backend_for(f"u{i}@x") for i in range(200)} == {"mail1.example.test", "10.0.0.13"}


def test_proxy_config_with_a_transition_loads(write) -> None:
    transition = write("transition.conf", GOOD)
    cfg = load(write("proxy.conf", PROXY + f"    cluster_director_transition_config = {transition}\n"))
    assert cfg["cluster_director_transition_config"] == str(transition)


def test_problems_are_reported_at_their_lines(write) -> None:
    path = write("transition.conf", """
        director_username_hash = %Hu
        mail_server 10.0.0.11 {
          vhost_count = many
        }
        mail_server mail2 {
        }
        mail_server 10.0.0.13 {
          tag = blue
          weight = 3
        }
        mail_server 10.0.0.14 {
          state = sideways
        }
        director_mail_servers = 10.0.0.11
    """)
    with pytest.raises(ConfigError) as info:
        load_transition(path)
    assert info.value.lines == [
        f"{path}:3: mail_server 10.0.0.11: vhost_count 'many' is not a number",
        f"{path}:5: mail server 'mail2' is not an IP address",
        f"{path}:8: tag: tagged director rings are not supported (untagged only)",
        f"{path}:9: weight: unknown in mail_server (expected backend, vhost_count, state)",
        f"{path}:12: mail_server 10.0.0.14: state 'sideways': expected up or down",
        f"{path}:14: director_mail_servers: unknown in a director transition config (expected "
        "director_username_hash and mail_server sections)",
    ]


@pytest.mark.parametrize(("text", "message"), [
    ("director_username_hash = %Hu\nmail_server 10.0.0.1 {\n}\n",
     ":1: director_username_hash '%Hu': only %u, %n, %d"),
    ("mail_server 10.0.0.1 {\n}\nmail_server 10.0.0.1 {\n}\n", ":3: mail_server 10.0.0.1 is listed twice"),
    ("# nothing\n", ": no mail_server sections: the director ring is empty"),
])
def test_ring_level_problems(write, text: str, message: str) -> None:
    path = write("transition.conf", text)
    with pytest.raises(ConfigError) as info:
        load_transition(path)
    assert [line.removeprefix(str(path)) for line in info.value.lines][0].startswith(message)


def test_config_check_reports_a_broken_transition_file_at_the_setting(write, tmp_path) -> None:
    missing = tmp_path / "no-such-transition.conf"
    path = write("proxy.conf", PROXY + f"    cluster_director_transition_config = {missing}\n")
    with pytest.raises(ConfigError) as info:
        load(path)
    assert info.value.lines == [
        f"{path}:8: cluster_director_transition_config: {missing}: No such file or directory"
    ]


def test_the_setting_is_a_proxy_setting(write) -> None:
    path = write("backend.conf", "@cluster_defaults = backend\ncluster_director_transition_config = /x\n")
    with pytest.raises(ConfigError) as info:
        load(path)
    assert any("cluster_director_transition_config: applies only to a proxy" in line for line in info.value.lines)


def test_empty_backend_name_is_refused_at_its_line(write) -> None:
    path = write("transition.conf", 'mail_server 10.0.0.1 {\n  backend = ""\n}\n')
    with pytest.raises(ConfigError) as info:
        load_transition(path)
    assert info.value.lines == [f"{path}:2: mail_server 10.0.0.1: empty backend name"]
