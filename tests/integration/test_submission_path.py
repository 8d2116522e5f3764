"""Submission through HAProxy and the palomar proxies, with smtplib and swaks, into a real relay sink."""

from __future__ import annotations

import smtplib
import subprocess
from pathlib import Path

import pytest
from harness.clients import backend_of, tls_context

from palomar.devcluster.cluster import LocalCluster

CLIENT_SOURCE = "127.0.0.96"


@pytest.fixture(scope="module")
def cluster(harness_root: Path):
    c = LocalCluster(harness_root / "submission-cluster", auth_failure_delay="200 ms")
    c.start()
    yield c
    c.stop()


def backend_dovecot(cluster: LocalCluster, user: str):
    host = backend_of(cluster, user)
    return next(b.dovecot for b in cluster.backends if b.host == host)


def message(subject: str) -> bytes:
    return f"From: sender@example.test\r\nTo: rcpt@example.org\r\nSubject: {subject}\r\n\r\nbody\r\n".encode()


def received(cluster: LocalCluster, subject: str):
    assert cluster.sink is not None
    return cluster.sink.wait_for_match(lambda m: f"Subject: {subject}".encode() in m.data, timeout=20)


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_smtplib_starttls_on_submission_port(cluster: LocalCluster, mechanism: str) -> None:
    with smtplib.SMTP(cluster.lb_host, cluster.lb_submission, timeout=15,
                      source_address=(CLIENT_SOURCE, 0)) as smtp:
        smtp.ehlo("client.example.test")
        assert smtp.has_extn("starttls")
        smtp.starttls(context=tls_context())
        smtp.ehlo("client.example.test")
        assert mechanism in smtp.esmtp_features["auth"].upper()
        smtp.user, smtp.password = "user1@example.test", "password1"
        code, _ = smtp.auth(mechanism, getattr(smtp, f"auth_{mechanism.lower()}"))
        assert code == 235
        refused = smtp.sendmail(f"env-from-{mechanism}@example.test", ["rcpt@example.org", "second@example.net"],
                                message(f"starttls {mechanism}"))
        assert refused == {}
    [got] = received(cluster, f"starttls {mechanism}")
    assert got.mail_from == f"env-from-{mechanism}@example.test"
    assert got.rcpt_tos == ("rcpt@example.org", "second@example.net")
    backend_dovecot(cluster, "user1@example.test").wait_for_log(
        r"submission-login: Info: Login: user=<user1@example\.test>.*rip=127\.0\.0\.96")


def test_smtp_ssl_on_submissions_port(cluster: LocalCluster) -> None:
    with smtplib.SMTP_SSL(cluster.lb_host, cluster.lb_submissions, timeout=15, context=tls_context(),
                          source_address=(CLIENT_SOURCE, 0)) as smtp:
        smtp.login("user2@example.test", "password2")
        smtp.sendmail("implicit@example.test", ["rcpt@example.org"], message("implicit tls"))
    [got] = received(cluster, "implicit tls")
    assert got.mail_from == "implicit@example.test" and got.rcpt_tos == ("rcpt@example.org",)


def test_submission_refuses_wrong_password_and_cleartext_auth(cluster: LocalCluster) -> None:
    with smtplib.SMTP(cluster.lb_host, cluster.lb_submission, timeout=15) as smtp:
        smtp.ehlo("client.example.test")
        assert "auth" not in smtp.esmtp_features  # no AUTH offered before TLS
        smtp.starttls(context=tls_context())
        smtp.ehlo("client.example.test")
        with pytest.raises(smtplib.SMTPAuthenticationError) as failed:
            smtp.login("user3@example.test", "wrong")
        assert failed.value.smtp_code == 535


def test_swaks_submits_through_the_cluster(cluster: LocalCluster) -> None:
    run = subprocess.run(
        ["swaks", "--server", cluster.lb_host, "--port", str(cluster.lb_submission), "--tls",
         "--auth", "PLAIN", "--auth-user", "user4@example.test", "--auth-password", "password4",
         "--from", "swaks-env@example.test", "--to", "swaks-rcpt@example.org",
         "--header", "Subject: via swaks", "--body", "swaks body", "--local-interface", CLIENT_SOURCE],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert run.returncode == 0, run.stdout + run.stderr
    [got] = received(cluster, "via swaks")
    assert got.mail_from == "swaks-env@example.test" and got.rcpt_tos == ("swaks-rcpt@example.org",)
