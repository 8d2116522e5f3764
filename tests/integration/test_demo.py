"""`palomar demo` as a person runs it: from a directory only root can enter, via the command line.

Root's home is 0700 on Debian, so a clone there is out of reach of Dovecot's unprivileged
processes; a fresh `mkdtemp()` directory (0700, root's) reproduces that. The demo must log in
on every protocol before it says it runs, serve over IPv4 and IPv6, restart a server that
dies, and resume on the same directory with the mail it had.
"""

from __future__ import annotations

import base64
import http.cookiejar
import imaplib
import json
import os
import queue
import re
import shutil
import signal
import smtplib
import stat
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from harness.clients import tls_context

from palomar.devcluster.cluster import shared_dir_for
from palomar.devcluster.login_check import check_logins
from palomar.devcluster.net import free_port, port_accepts

START_TIMEOUT = 180.0
PORT_OPTIONS = ("imap", "imaps", "pop3", "pop3s", "submission", "submissions", "sieve", "lmtp", "doveadm",
                "doveadm-http")


class Demo:
    """`python -m palomar demo --dir DIR ...` with its output read line by line."""

    def __init__(self, directory: Path, ports: dict[str, int], options: tuple[str, ...] = ()) -> None:
        self.directory = directory
        self.ports = ports
        self.lines: list[str] = []
        self._new: queue.Queue[str | None] = queue.Queue()
        args = [sys.executable, "-m", "palomar", "demo", "--dir", str(directory), "--users", "6", *options]
        for name, port in ports.items():
            args += [f"--{name}-port", str(port)]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, start_new_session=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._new.put(line.rstrip("\n"))
        self._new.put(None)

    def wait_for(self, pattern: str, timeout: float = START_TIMEOUT) -> re.Match[str]:
        """The first line from now on matching `pattern`; fails with the output so far otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._new.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line is None:
                raise AssertionError(f"no line matches {pattern!r}; output:\n" + "\n".join(self.lines))
            self.lines.append(line)
            match = re.search(pattern, line)
            if match:
                return match

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(120)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait(30)


def free_lb_ports() -> dict[str, int]:
    ports: dict[str, int] = {}
    while len(ports) < len(PORT_OPTIONS):
        port = free_port("127.0.0.1")
        if port not in ports.values() and not port_accepts("::1", port):
            ports[PORT_OPTIONS[len(ports)]] = port
    return ports


@pytest.fixture(scope="module")
def private_dir() -> Iterator[Path]:
    """A 0700 directory of root's, like /root: Dovecot's users cannot enter it."""
    parent = Path(tempfile.mkdtemp(prefix="palomar-demo-"))
    assert stat.S_IMODE(parent.stat().st_mode) == 0o700
    yield parent / "demo-run"
    shutil.rmtree(shared_dir_for(parent / "demo-run"), ignore_errors=True)
    shutil.rmtree(parent, ignore_errors=True)


@pytest.fixture(scope="module")
def demo(private_dir: Path) -> Iterator[Demo]:
    running = Demo(private_dir, free_lb_ports())
    try:
        running.wait_for(r"palomar demo is running")
        yield running
    finally:
        running.stop()


def imap_messages(host: str, port: int, user: str, password: str, subject: str) -> int:
    with imaplib.IMAP4(host, port, timeout=30) as imap:
        imap.starttls(tls_context())
        imap.login(user, password)
        imap.select("INBOX")
        typ, data = imap.search(None, "SUBJECT", f'"{subject}"')
        assert typ == "OK"
        imap.logout()
    return len(data[0].split())


def deliver(host: str, port: int, rcpt: str, subject: str) -> None:
    with smtplib.LMTP(host, port, local_hostname="mta.example.test", timeout=30) as lmtp:
        lmtp.sendmail("sender@example.test", [rcpt], f"Subject: {subject}\r\n\r\nkept across restarts\r\n")


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_demo_from_a_private_directory_serves_every_protocol(demo: Demo, host: str) -> None:
    ports = SimpleNamespace(**{f"lb_{name}": port for name, port in demo.ports.items()})
    assert check_logins(ports, [host], "user2@example.test", "password2") == []
    subject = f"over {host}"
    deliver(host, demo.ports["lmtp"], "user3@example.test", subject)
    assert imap_messages(host, demo.ports["imap"], "user3@example.test", "password3", subject) == 1


def test_doveadm_through_haproxy_as_the_printout_says(demo: Demo) -> None:
    pattern = r"^  doveadm  127\.0\.0\.1:(\d+) \(http (\d+)\)  password (\S+)$"
    match = next((m for m in map(lambda line: re.search(pattern, line), demo.lines) if m), None) \
        or demo.wait_for(pattern, timeout=10)
    port, http_port, password = int(match[1]), int(match[2]), match[3]
    assert (port, http_port) == (demo.ports["doveadm"], demo.ports["doveadm-http"])
    deliver("127.0.0.1", demo.ports["lmtp"], "user5@example.test", "for doveadm")
    # Dovecot 2.3's doveadm takes -S and -u after the command name
    status = subprocess.run(["doveadm", "-o", f"doveadm_password={password}", "mailbox", "status", "-S",
                             f"127.0.0.1:{port}", "-u", "user5@example.test", "-t", "all", "INBOX"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert status.returncode == 0, status.stderr
    assert re.match(r"messages=1 recent=\d+ unseen=1 vsize=\d+$", status.stdout.strip()), status.stdout
    body = '[["mailboxStatus",{"user":"user5@example.test","field":["messages"],"mailboxMask":["INBOX"]},"t1"]]'
    answer = subprocess.run(["curl", "-s", "-u", f"doveadm:{password}", f"http://127.0.0.1:{http_port}/doveadm/v1",
                             "-d", body], capture_output=True, text=True, timeout=60, check=True).stdout
    assert answer == '[["doveadmResponse",[{"mailbox":"INBOX","messages":"1"}],"t1"]]'


def test_a_killed_dovecot_is_reaped_reported_and_restarted(demo: Demo, private_dir: Path) -> None:
    pid_file = private_dir / "dovecot" / "backend1" / "run" / "master.pid"
    old = int(pid_file.read_text())
    os.kill(old, signal.SIGKILL)
    demo.wait_for(r"backend1 Dovecot exited with signal SIGKILL; log \S+dovecot\.log; restarting it in",
                  timeout=30)
    demo.wait_for(r"backend1 Dovecot restarted", timeout=120)
    assert not Path(f"/proc/{old}").exists(), "the killed master is still a zombie"
    new = int(pid_file.read_text())
    assert new != old and Path(f"/proc/{new}").exists()
    for n in range(1, 7):
        assert imap_messages("127.0.0.1", demo.ports["imap"], f"user{n}@example.test", f"password{n}", "x") == 0


def test_the_demo_serves_the_controller_ui_and_api_on_port_8100(demo: Demo) -> None:
    printed = [m for line in demo.lines
               if (m := re.fullmatch(r"  controller UI http://127\.0\.0\.1:8100/  user admin  password (\S+)", line))]
    assert len(printed) == 1, "\n".join(demo.lines)
    password = printed[0].group(1)
    api = urllib.request.Request("http://127.0.0.1:8100/api/v1/backends", headers={
        "Authorization": "Basic " + base64.b64encode(f"admin:{password}".encode()).decode()})
    with urllib.request.urlopen(api, timeout=30) as response:
        backends = json.loads(response.read())
    assert sorted(b["host"] for b in backends) == ["127.0.0.2", "127.0.0.3"]
    browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    form = urllib.parse.urlencode({"user": "admin", "password": password}).encode()
    with browser.open("http://127.0.0.1:8100/login", data=form, timeout=30) as response:
        page = response.read().decode()
    assert response.url == "http://127.0.0.1:8100/" and "Cluster overview" in page
    assert 'data-host="127.0.0.2"' in page and 'data-host="127.0.0.3"' in page


def test_the_demo_resumes_on_its_directory_with_its_mail(demo: Demo, private_dir: Path) -> None:
    second = subprocess.run([sys.executable, "-m", "palomar", "demo", "--dir", str(private_dir)],
                            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert second.returncode == 1
    assert f"a demo is already running in {private_dir}" in second.stderr
    deliver("127.0.0.1", demo.ports["lmtp"], "user4@example.test", "before the restart")
    assert demo.stop() == 0
    again = Demo(private_dir, free_lb_ports())
    try:
        again.wait_for(r"resuming the demo in .* \(its mail and GeoDB are kept\)")
        again.wait_for(r"palomar demo is running")
        assert imap_messages("127.0.0.1", again.ports["imap"], "user4@example.test", "password4",
                             "before the restart") == 1
    finally:
        assert again.stop() == 0
