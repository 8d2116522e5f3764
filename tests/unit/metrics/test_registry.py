"""The exposition: Dovecot's names in the shape Dovecot 2.3's OpenMetrics exporter writes, palomar's own apart."""

from __future__ import annotations

from palomar.metrics.registry import Registry


def test_dovecot_names_take_the_dovecot_prefix_and_format() -> None:
    registry = Registry()
    success = registry.counter("proxy_session_success", "Sessions established", ("dest_host",))
    success.inc(dest_host="10.0.0.2")
    success.inc(dest_host="10.0.0.2")
    success.inc(dest_host="10.0.0.3")
    registry.counter("auth_failures", "Failed passdb authentications")
    registry.counter("proxy_backend_probes", "Probes", ("dest_host",)).inc(dest_host="10.0.0.2")
    lines = registry.exposition().splitlines()
    # as real Dovecot 2.3.19 writes a grouped event metric: _total per group, _count over all
    assert lines[3:8] == [
        "# HELP dovecot_proxy_session_success Sessions established",
        "# TYPE dovecot_proxy_session_success counter",
        'dovecot_proxy_session_success_total{dest_host="10.0.0.2"} 2',
        'dovecot_proxy_session_success_total{dest_host="10.0.0.3"} 1',
        "dovecot_proxy_session_success_count 3",
    ]
    # ungrouped: one _total line, also before any event
    assert "dovecot_auth_failures_total 0" in lines
    assert not any(line.startswith("dovecot_auth_failures_count") for line in lines)
    # palomar's own metrics keep their prefix
    assert 'palomar_proxy_backend_probes_total{dest_host="10.0.0.2"} 1' in lines
    assert lines[-1] == "# EOF"


def test_the_dovecot_prefix_is_configurable() -> None:
    registry = Registry(dovecot_prefix="mail_")
    registry.counter("login_aborted", "Aborted logins", ("reason",)).inc(reason="auth_failed")
    text = registry.exposition()
    assert 'mail_login_aborted_total{reason="auth_failed"} 1\nmail_login_aborted_count 1\n' in text
    assert "dovecot_" not in text


def test_collectors_refresh_mirrored_totals_at_each_scrape() -> None:
    registry = Registry()
    hops = registry.counter("backend_hops", "Hops", ("result",))
    source = {"login": 0}
    registry.on_collect(lambda: hops.set_total(source["login"], result="login"))
    source["login"] = 5
    assert 'palomar_backend_hops_total{result="login"} 5' in registry.exposition()
    source["login"] = 7
    assert 'palomar_backend_hops_total{result="login"} 7' in registry.exposition()
