"""Dovecot 2.3 director assignment, checked against vectors from Dovecot itself.

`MAIL_USER_HASH` comes from Dovecot 2.3.19's own unit test (src/lib-mail/test-mail-user-hash.c);
`DOVEADM_USER_MAP` and the ring vectors were captured from a real Dovecot 2.3.19.1 director ring of
two directors (Debian 12's dovecot-core) with `doveadm director map -u USER` and
`doveadm director status USER`. tests/integration/test_director_transition.py asks a live ring again.
"""

from __future__ import annotations

import hashlib

import pytest

from palomar.cluster.director_hash import (
    DirectorHashError,
    DirectorRing,
    MailHost,
    build_ring,
    check_username_hash,
    host_for_hash,
    user_hash,
)

MAIL_USER_HASH = [
    ("", "", 3558706393),
    ("testuser", "", 3558706393),
    ("", "%u", 3558706393),
    ("@", "%u", 1368314517),
    ("", "%n@%d", 1368314517),
    ("", "%n", 3558706393),
    ("", "%d", 3558706393),
    ("testuser", "%u", 1570531526),
    ("testuser", "%n", 1570531526),
    ("testuser", "%d", 3558706393),
    ("@domain", "%u", 3749630072),
    ("@domain", "%n@%d", 3749630072),
    ("@domain", "%n", 3558706393),
    ("@domain", "%d", 2908717800),
    ("testuser@domain", "%u", 3813799143),
    ("testuser@domain", "%n@%d", 3813799143),
    ("testuser@domain", "%n", 1570531526),
    ("testuser@domain", "%d", 2908717800),
    ("test@user@domain", "%u", 2029259821),
    ("test@user@domain", "%n@%d", 2029259821),
    ("test@user@domain", "%n", 160394189),
    ("test@user@domain", "%d", 1841230927),
]


@pytest.mark.parametrize(("username", "fmt", "expected"), MAIL_USER_HASH)
def test_user_hash_matches_dovecots_own_vectors(username: str, fmt: str, expected: int) -> None:
    assert user_hash(username, fmt) == expected


# (director_username_hash, user, hash printed by `doveadm -o director_username_hash=F director map -u USER`)
DOVEADM_USER_MAP = [
    ("%Lu", "User5@Example.TEST", 2647468450),
    ("%Lu", "plain", 2893625556),
    ("%Lu", "a@b@c", 3100774512),
    ("%u", "User5@Example.TEST", 3930982888),
    ("%Ln", "User5@Example.TEST", 175708226),
    ("%Ln", "a@b@c", 214005177),
    ("%Ld", "User5@Example.TEST", 160771044),
    ("%Ld", "plain", 3558706393),
    ("%Ld", "a@b@c", 2764514565),
    ("%Un", "User5@Example.TEST", 1769294519),
    ("%Un", "a@b@c", 2143642224),
    ("%{user}", "User5@Example.TEST", 3930982888),
    ("x%Rn", "User5@Example.TEST", 987662348),
    ("x%Rn", "plain", 3948053161),
    ("%1.3Lu", "User5@Example.TEST", 2649866606),
    ("%1.3Lu", "a@b@c", 4223772740),
    ("%M{domain}", "User5@Example.TEST", 2110711990),
    ("%M{domain}", "plain", 1958614679),
]


@pytest.mark.parametrize(("fmt", "username", "expected"), DOVEADM_USER_MAP)
def test_user_hash_matches_doveadm_director_map(fmt: str, username: str, expected: int) -> None:
    assert user_hash(username, fmt) == expected


def test_default_format_lowercases_ascii_only() -> None:
    """%Lu lowercases ASCII letters only (Dovecot's i_tolower), never other UTF-8 bytes."""
    assert user_hash("User5@Example.TEST") == user_hash("user5@example.test")
    assert user_hash("ÜSER@x") != user_hash("üser@x")


@pytest.mark.parametrize("fmt", ["%Hu", "%Nu", "%Xu", "%Eu", "%Du", "%s", "%{home}", "%05u", "%L", "%{user"])
def test_unsupported_formats_are_refused(fmt: str) -> None:
    with pytest.raises(DirectorHashError, match="director_username_hash"):
        check_username_hash(fmt)


RING_A = (MailHost("127.0.0.2"), MailHost("127.0.0.3"), MailHost("127.0.0.4"))
"""director_mail_servers = 127.0.0.2 127.0.0.3 127.0.0.4 (the director's "Initial config")."""
RING_B = (MailHost("127.0.0.2"), MailHost("127.0.0.3", 37), MailHost("127.0.0.4", down=True),
          MailHost("127.0.0.5", 3))
"""Ring A after `director update 127.0.0.3 37`, `director down 127.0.0.4`, `director add 127.0.0.5 3`."""

# (user, "Initial config:" = ring A, "Hashed:" = ring B), from `doveadm director status USER`
DIRECTOR_STATUS = [
    ("user1@example.test", "127.0.0.4", "127.0.0.2"),
    ("user2@example.test", "127.0.0.2", "127.0.0.2"),
    ("user3@example.test", "127.0.0.3", "127.0.0.3"),
    ("user4@example.test", "127.0.0.2", "127.0.0.2"),
    ("user5@example.test", "127.0.0.3", "127.0.0.3"),
    ("user6@example.test", "127.0.0.3", "127.0.0.3"),
    ("Mixed.Case7@Example.TEST", "127.0.0.2", "127.0.0.2"),
    ("nodomain8", "127.0.0.2", "127.0.0.2"),
    ("user9@example.test", "127.0.0.4", "127.0.0.2"),
    ("user10@example.test", "127.0.0.2", "127.0.0.2"),
    ("user11@example.test", "127.0.0.4", "127.0.0.2"),
    ("user12@example.test", "127.0.0.2", "127.0.0.2"),
    ("user13@example.test", "127.0.0.3", "127.0.0.2"),
    ("user14@example.test", "127.0.0.2", "127.0.0.2"),
    ("user15@example.test", "127.0.0.3", "127.0.0.3"),
    ("user16@example.test", "127.0.0.2", "127.0.0.2"),
    ("user17@example.test", "127.0.0.3", "127.0.0.3"),
    ("user18@example.test", "127.0.0.4", "127.0.0.2"),
    ("user19@example.test", "127.0.0.4", "127.0.0.2"),
    ("user20@example.test", "127.0.0.4", "127.0.0.3"),
    ("user21@example.test", "127.0.0.4", "127.0.0.3"),
    ("user22@example.test", "127.0.0.2", "127.0.0.2"),
    ("user23@example.test", "127.0.0.4", "127.0.0.2"),
    ("user24@example.test", "127.0.0.4", "127.0.0.2"),
    ("user25@example.test", "127.0.0.2", "127.0.0.2"),
    ("user26@example.test", "127.0.0.2", "127.0.0.2"),
    ("user27@example.test", "127.0.0.4", "127.0.0.2"),
    ("user28@example.test", "127.0.0.4", "127.0.0.2"),
    ("user29@example.test", "127.0.0.3", "127.0.0.3"),
    ("user30@example.test", "127.0.0.3", "127.0.0.3"),
    ("u61@example.test", "127.0.0.2", "127.0.0.5"),
    ("u83@example.test", "127.0.0.2", "127.0.0.5"),
    ("u230@example.test", "127.0.0.3", "127.0.0.5"),
    ("u287@example.test", "127.0.0.2", "127.0.0.5"),
]


@pytest.mark.parametrize(("username", "in_ring_a", "in_ring_b"), DIRECTOR_STATUS)
def test_ring_matches_a_real_director(username: str, in_ring_a: str, in_ring_b: str) -> None:
    assert DirectorRing(RING_A).host_for(username) == in_ring_a
    assert DirectorRing(RING_B).host_for(username) == in_ring_b


def test_ring_points_are_md5_of_ip_and_index() -> None:
    ring = build_ring([MailHost("10.0.0.1", 2)])
    assert [v.point for v in ring] == sorted(
        int.from_bytes(hashlib.md5(text).digest()[:4], "big") for text in (b"10.0.0.1-0", b"10.0.0.1-1"))


def test_lookup_takes_the_first_point_at_or_after_the_hash_and_wraps() -> None:
    ring = build_ring([MailHost("10.0.0.1", 3), MailHost("10.0.0.2", 3)])
    for vhost in ring:
        assert host_for_hash(ring, vhost.point) == vhost.host
        assert host_for_hash(ring, vhost.point - 1) == vhost.host  # no two points are adjacent here
    assert host_for_hash(ring, ring[-1].point + 1) == ring[0].host
    assert host_for_hash(ring, 0) == ring[0].host


def test_no_host_up_means_no_host() -> None:
    assert DirectorRing((MailHost("10.0.0.1", down=True),)).host_for("u") is None
    assert DirectorRing((MailHost("10.0.0.1", 0),)).host_for("u") is None


def test_addresses_are_hashed_in_their_canonical_text() -> None:
    """The director hashes net_ip2addr()'s text, so an IPv6 address is written compressed."""
    long_form = DirectorRing((MailHost("2001:db8:0:0:0:0:0:1"), MailHost("2001:db8::2")))
    short_form = DirectorRing((MailHost("2001:db8::1"), MailHost("2001:db8::2")))
    assert [long_form.host_for(f"u{i}") for i in range(50)] == [short_form.host_for(f"u{i}") for i in range(50)]


@pytest.mark.parametrize(("hosts", "message"), [
    ((MailHost("10.0.0.1"), MailHost("10.0.0.1")), "listed twice"),
])
def test_bad_rings_are_refused(hosts: tuple[MailHost, ...], message: str) -> None:
    with pytest.raises(DirectorHashError, match=message):
        DirectorRing(hosts)


@pytest.mark.parametrize(("ip", "count", "message"), [("mail1", 100, "not an IP"), ("10.0.0.1", -1, "negative")])
def test_bad_mail_hosts_are_refused(ip: str, count: int, message: str) -> None:
    with pytest.raises(DirectorHashError, match=message):
        MailHost(ip, count)
