"""Dovecot's metric names on the real endpoints: a proxy's and a `palomar backend`'s /metrics, scraped
with an HTTP client after real logins and a real LMTP delivery."""

from __future__ import annotations

import imaplib
import re
import smtplib
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness.clients import tls_context

from palomar.devcluster.cluster import LocalCluster

USER, PASSWORD = "user1@example.test", "password1"


@pytest.fixture(scope="module")
def cluster(harness_root: Path) -> Iterator[LocalCluster]:
    c = LocalCluster(harness_root / "metrics-cluster", backends_count=1, proxies_count=2, users_count=3,
                     auth_failure_delay="100 ms", proxy_settings={"proxy2": ("metrics_prefix = mail_",)})
    try:
        yield c.start()
    finally:
        c.stop()


def scrape(host: str, port: int) -> dict[str, float]:
    """Every sample of GET /metrics, by its name and labels as written."""
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("application/openmetrics-text")
        text = response.read().decode()
    assert text.endswith("# EOF\n")
    samples = {}
    for line in text.splitlines():
        match = re.fullmatch(r"([a-z_]+(?:\{[^}]*\})?) (\S+)", line)
        if match:
            samples[match[1]] = float(match[2])
    return samples


def delta(before: dict[str, float], after: dict[str, float], name: str) -> float:
    return after.get(name, 0.0) - before.get(name, 0.0)


def imap(cluster: LocalCluster, proxy: int = 0) -> imaplib.IMAP4:
    node = cluster.proxies[proxy]
    client = imaplib.IMAP4(node.host, node.imap, timeout=30)
    client.starttls(tls_context())
    return client


def test_proxy_exports_the_seeds_and_dovecots_metric_names(cluster: LocalCluster) -> None:
    proxy = cluster.proxies[0]
    backend = cluster.backends[0]
    before = scrape(proxy.host, proxy.metrics)
    backend_before = scrape(backend.host, backend.metrics)
    with imap(cluster) as client:  # one session established
        client.login(USER, PASSWORD)
        client.select("INBOX")
        client.logout()
    with imap(cluster) as client:  # a wrong password, then the client gives up: login_aborted auth_failed
        with pytest.raises(imaplib.IMAP4.error):
            client.login(USER, "wrong")
        client.logout()
    with smtplib.LMTP(proxy.host, proxy.lmtp, local_hostname="mta.example.test", timeout=30) as lmtp:
        lmtp.sendmail("sender@example.test", ["user2@example.test"], "Subject: metrics\r\n\r\nbody\r\n")
    after = scrape(proxy.host, proxy.metrics)
    dest = f'{{dest_host="{backend.host}"}}'
    assert delta(before, after, "dovecot_auth_successes_total") == 1
    assert delta(before, after, "dovecot_auth_failures_total") == 1
    assert delta(before, after, f"dovecot_proxy_session_success_total{dest}") == 1
    assert delta(before, after, f"dovecot_proxy_session_established_total{dest}") == 1
    assert after["dovecot_proxy_session_success_count"] == sum(
        v for k, v in after.items() if k.startswith("dovecot_proxy_session_success_total{"))
    assert delta(before, after, 'dovecot_login_aborted_total{reason="auth_failed"}') == 1
    assert delta(before, after, f"dovecot_lmtp_rcpt_finished_success_total{dest}") == 1
    assert "dovecot_proxy_session_failure_count" in after or not any(
        k.startswith("dovecot_proxy_session_failure") for k in after)
    assert not any(k.startswith("palomar_auth_") or k.startswith("palomar_proxy_session_success") for k in after)
    # the backend's own endpoint: its hop outcomes, palomar's names
    backend_after = scrape(backend.host, backend.metrics)
    assert delta(backend_before, backend_after, 'palomar_backend_hops_total{result="login"}') >= 1
    assert "palomar_backend_sessions" in backend_after
    assert after["palomar_geodb_available"] == 1 and backend_after["palomar_geodb_available"] == 1  # both roles


def test_the_prefix_of_dovecots_names_is_configurable(cluster: LocalCluster) -> None:
    proxy = cluster.proxies[1]  # metrics_prefix = mail_
    before = scrape(proxy.host, proxy.metrics)
    with imap(cluster, proxy=1) as client:
        client.login(USER, PASSWORD)
        client.logout()
    after = scrape(proxy.host, proxy.metrics)
    assert delta(before, after, "mail_auth_successes_total") == 1
    assert not any(name.startswith("dovecot_") for name in after)
