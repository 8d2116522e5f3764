"""The doveadm HTTP API on a proxy, with curl as the client: each command for one user runs on the
user's backend and its answer equals the backend Dovecot's own HTTP API answer to the same request;
API key and Basic auth as Dovecot's; refusals say why; a moved user's next command runs on the new
backend.
"""

from __future__ import annotations

import base64
import imaplib
import json
import re
import subprocess
from pathlib import Path

import pytest
from harness.clients import append_through_proxy as deliver
from harness.clients import backend_of

from palomar.devcluster.cluster import LocalCluster
from palomar.devcluster.net import wait_until

USER = "user3@example.test"


@pytest.fixture(scope="module")
def cluster(harness_root: Path):
    c = LocalCluster(harness_root / "doveadm-http-cluster", proxies_count=1, users_count=6, allow_cleartext=True,
                     password_scheme="PLAIN", auth_failure_delay="100 ms")
    c.start()
    yield c
    c.stop()


def curl(url: str, *args: str) -> tuple[int, dict[str, str], str]:
    """(status, headers, body) of one curl request."""
    out = subprocess.run(["curl", "-s", "-i", "--max-time", "60", url, *args], capture_output=True,
                         timeout=90, check=True).stdout.decode()
    head, _, body = out.partition("\r\n\r\n")
    lines = head.split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.setdefault(name.lower(), "")
        headers[name.lower()] += ("," if headers[name.lower()] else "") + value.strip()
    return int(lines[0].split()[1]), headers, body


def api_key_header(key: str) -> str:
    return "Authorization: X-Dovecot-API " + base64.b64encode(key.encode()).decode()


def post(url: str, body: object, *auth: str) -> tuple[int, dict[str, str], str]:
    return curl(url, "-X", "POST", "-H", "Content-Type: application/json", "-d", json.dumps(body), *auth)


def proxy_url(cluster: LocalCluster, path: str = "/doveadm/v1") -> str:
    """Through HAProxy (PROXY v2) to the proxies' `inet_listener http { haproxy = yes }`."""
    return f"http://{cluster.lb_host}:{cluster.lb_doveadm_http}{path}"


def via_proxy(cluster: LocalCluster, body: object) -> tuple[int, dict[str, str], str]:
    return post(proxy_url(cluster), body, "-H", api_key_header(cluster.doveadm_api_key))


def on_backend(cluster: LocalCluster, host: str, body: object) -> tuple[int, dict[str, str], str]:
    params = next(b for b in cluster.backends if b.host == host).dovecot.params
    return post(f"http://{params.listen}:{params.doveadm_http_port}/doveadm/v1", body,
                "-u", f"doveadm:{params.doveadm_password}")


def test_mail_commands_answer_as_the_backend_does(cluster: LocalCluster) -> None:
    deliver(cluster, USER, "password3", "first")
    deliver(cluster, USER, "password3", "second")
    host = backend_of(cluster, USER)
    for body in ([["mailboxStatus", {"user": USER, "field": ["all"], "mailboxMask": ["INBOX"]}, "t1"]],
                 [["fetch", {"user": USER, "field": ["uid", "flags", "hdr.subject"], "query": ["mailbox", "INBOX",
                                                                                            "all"]}, "t2"]],
                 [["search", {"user": USER, "query": ["mailbox", "INBOX", "subject", "second"]}, "t3"]]):
        status, headers, through = via_proxy(cluster, body)
        direct = on_backend(cluster, host, body)
        assert (status, through) == (200, direct[2])
        assert headers["content-type"] == "application/json; charset=utf-8"
        assert json.loads(through)[0][0] == "doveadmResponse", through
    rows = json.loads(via_proxy(cluster, [["mailboxStatus", {"user": USER, "field": ["messages"],
                                                             "mailboxMask": ["INBOX"]}, "n"]])[2])
    assert rows == [["doveadmResponse", [{"mailbox": "INBOX", "messages": "2"}], "n"]]


def test_basic_auth_and_api_key_and_their_failures(cluster: LocalCluster) -> None:
    body = [["mailboxStatus", {"user": USER, "field": ["messages"], "mailboxMask": ["INBOX"]}, "t"]]
    basic = post(proxy_url(cluster), body, "-u", f"doveadm:{cluster.doveadm_password}")
    assert basic[0] == 200 and json.loads(basic[2])[0][0] == "doveadmResponse"
    for auth in (("-u", "doveadm:wrong-password"), ("-H", api_key_header("wrong-key")), ()):
        status, headers, _ = post(proxy_url(cluster), body, *auth)
        assert status == 401
        assert headers["www-authenticate"] == 'X-Dovecot-API,Basic Realm="doveadm"'
    proxy = cluster.proxies[0]
    wait_until(lambda: "Invalid authentication attempt to the doveadm HTTP API" in proxy.log_path.read_text(), 10,
               "the refusal in the proxy log")
    assert "wrong-password" not in proxy.log_path.read_text()
    assert curl(proxy_url(cluster))[0] == 401  # the catalogue too


def test_catalogue_lists_the_forwarded_commands(cluster: LocalCluster) -> None:
    status, _, body = curl(proxy_url(cluster), "-u", f"doveadm:{cluster.doveadm_password}")
    names = {entry["command"] for entry in json.loads(body)}
    assert status == 200
    assert {"mailboxStatus", "fetch", "search", "expunge", "import", "kick"} <= names
    assert not {"who", "reload", "dsyncServer"} & names
    assert curl(proxy_url(cluster, "/nowhere"), "-u", f"doveadm:{cluster.doveadm_password}")[0] == 404
    assert curl(proxy_url(cluster), "-X", "OPTIONS")[0] == 200


def test_refusals_and_bad_requests(cluster: LocalCluster) -> None:
    status, _, body = via_proxy(cluster, [
        ["who", {}, "a"],
        ["mailboxStatus", {"user": "user*", "field": ["messages"], "mailboxMask": ["INBOX"]}, "b"],
        ["mailboxStatus", {"allUsers": True, "field": ["messages"], "mailboxMask": ["INBOX"]}, "c"],
        ["mailboxStatus", {"user": USER, "field": ["messages"], "mailboxMask": ["INBOX"]}, "d"],
    ])
    assert status == 200
    items = json.loads(body)
    assert [item[0] for item in items] == ["error", "error", "error", "doveadmResponse"]
    assert [item[1].get("exitCode") for item in items[:3]] == [64, 64, 64]
    assert "who: not supported through a palomar proxy" in items[0][1]["reason"]
    assert "user masks are not supported" in items[1][1]["reason"]
    assert "allUsers and userFile are not supported" in items[2][1]["reason"]
    bad = curl(proxy_url(cluster), "-X", "POST", "-H", api_key_header(cluster.doveadm_api_key), "-d", "[[1,{},\"t\"]]")
    assert bad[0] == 400 and "Command name must be a string" in bad[2]
    broken = curl(proxy_url(cluster), "-X", "POST", "-H", api_key_header(cluster.doveadm_api_key), "-d", "[[")
    assert broken[0] == 400 and "JSON parse error" in broken[2]


def test_save_carries_its_mail_in_the_request(cluster: LocalCluster) -> None:
    """`save` reads the mail from a parameter over HTTP (over TCP it would be an input stream, refused)."""
    user = "user6@example.test"
    deliver(cluster, user, "password6", "appended")
    # over 1 KiB: curl asks `Expect: 100-continue` first
    mail = "From: a@example.test\r\nSubject: saved over http\r\n\r\n" + "body line\r\n" * 200
    saved = via_proxy(cluster, [["save", {"user": user, "mailbox": "INBOX", "file": mail}, "s"]])
    assert json.loads(saved[2]) == [["doveadmResponse", [], "s"]], saved[2]
    fetch = [["fetch", {"user": user, "field": ["hdr.subject"], "query": ["mailbox", "INBOX", "all"]}, "f"]]
    through = via_proxy(cluster, fetch)[2]
    assert through == on_backend(cluster, backend_of(cluster, user), fetch)[2]
    assert "saved over http" in through


def test_expunge_and_a_move_between_two_commands(cluster: LocalCluster) -> None:
    user = "user4@example.test"
    deliver(cluster, user, "password4", "keep")
    deliver(cluster, user, "password4", "drop")
    expunged = via_proxy(cluster, [["expunge", {"user": user, "query": ["mailbox", "INBOX", "subject", "drop"]},
                                    "x"]])
    assert json.loads(expunged[2])[0][0] == "doveadmResponse", expunged[2]
    count = [["mailboxStatus", {"user": user, "field": ["messages"], "mailboxMask": ["INBOX"]}, "m"]]
    first_host = backend_of(cluster, user)
    assert json.loads(via_proxy(cluster, count)[2])[0][1] == [{"mailbox": "INBOX", "messages": "1"}]
    other = next(b.host for b in cluster.backends if b.host != first_host)
    group = json.loads(cluster.cluster("--json", "user", "status", user).stdout)["group"]
    cluster.cluster("group", "move", "--direct", "DC1", group, other)
    before = log_count(cluster, other, user)
    assert json.loads(via_proxy(cluster, count)[2])[0][1] == [{"mailbox": "INBOX", "messages": "1"}]
    assert log_count(cluster, other, user) == before + 1


def log_count(cluster: LocalCluster, host: str, user: str) -> int:
    node = next(b for b in cluster.backends if b.host == host)
    return len(re.findall(rf"user={re.escape(user)} proto=doveadm client=\S+ login ok", node.log_path.read_text()))


def test_kick_runs_where_the_user_is(cluster: LocalCluster) -> None:
    user = "user5@example.test"
    proxy = cluster.proxies[0]
    imap = imaplib.IMAP4(proxy.host, proxy.imap)
    imap.login(user, "password5")
    imap.select("INBOX")
    status, _, body = via_proxy(cluster, [["kick", {"mask": [user]}, "k"]])
    assert status == 200 and json.loads(body)[0][0] == "doveadmResponse", body
    with pytest.raises((imaplib.IMAP4.abort, OSError)):
        imap.noop()
        imap.noop()
