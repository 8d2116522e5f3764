"""Table tests of the Dovecot rules behind subaddresses, forwarded client data and ID handling."""

from __future__ import annotations

import pytest

from palomar.protocols import hop, imap, managesieve, pop3, submission
from palomar.protocols.login_core import ClientForwarded, parse_xclient
from palomar.protocols.subaddress import Recipient, delimiters_problem, delivery_address, split_detail


@pytest.mark.parametrize(("address", "delimiters", "expected"), [
    ("user3+tag@example.test", "+", Recipient("user3@example.test", "+", "tag")),
    ("user3@example.test", "+", Recipient("user3@example.test")),
    ("a-b+c@x.test", "+-", Recipient("a@x.test", "-", "b+c")),  # the first delimiter found wins
    ("a+b-c@x.test", "-+", Recipient("a@x.test", "+", "b-c")),
    ("user+@x.test", "+", Recipient("user@x.test", "+", "")),
    ("user+tag", "+", Recipient("user", "+", "tag")),
    ("user+tag@x.test", "", Recipient("user+tag@x.test")),
])
def test_split_detail(address: str, delimiters: str, expected: Recipient) -> None:
    assert split_detail(address, delimiters) == expected


@pytest.mark.parametrize(("original", "username", "expected"), [
    ("user3+tag@example.test", "user3@example.test", "user3+tag@example.test"),
    ("User3+Tag@Example.test", "user3@example.test", "user3+Tag@example.test"),  # renamed: rebuilt
    ("alias+x@example.test", "real@example.test", "real+x@example.test"),
    ("alias@example.test", "real@example.test", "real@example.test"),
])
def test_delivery_address(original: str, username: str, expected: str) -> None:
    assert delivery_address(original, split_detail(original, "+"), username) == expected


@pytest.mark.parametrize("delimiters", ["@", " ", "+\t", '"', "\\"])
def test_bad_delimiters_are_refused(delimiters: str) -> None:
    assert delimiters_problem(delimiters) is not None
    assert delimiters_problem("+-_") is None


@pytest.mark.parametrize(("args", "expected"), [
    ("ADDR=198.51.100.7 PORT=4242 SESSION=abc TTL=4", ClientForwarded("198.51.100.7", 4242, session_id="abc")),
    ("addr=IPV6:2001:db8::7", ClientForwarded("2001:db8::7")),
    ("ADDR=[::1] HELO=x FORWARD=abc", ClientForwarded("::1")),
    ("SESSION=" + "s" * 65, ClientForwarded()),  # too long: ignored, as Dovecot does
])
def test_parse_xclient(args: str, expected: ClientForwarded) -> None:
    assert parse_xclient(args) == expected


@pytest.mark.parametrize(("args", "bad"), [("ADDR=nonsense", "ADDR"), ("ADDR=1.2.3.4 PORT=70000", "PORT")])
def test_parse_xclient_names_the_invalid_parameter(args: str, bad: str) -> None:
    with pytest.raises(ValueError, match=bad):
        parse_xclient(args)


def test_forwarded_from_id_ignores_values_that_do_not_parse() -> None:
    params = (("X-Originating-IP", "198.51.100.7"), ("x-originating-port", "nope"), ("x-connected-ip", "192.0.2.1"),
              ("x-connected-port", "143"), ("x-session-ext-id", "ext1"), ("name", "client"))
    assert imap.forwarded_from_id(params) == ClientForwarded("198.51.100.7", None, "192.0.2.1", 143, "ext1")
    assert imap.forwarded_from_id((("name", "client"),)) is None


def test_id_log_text_sanitises_as_dovecot() -> None:
    params = (("name", "Mail\x01Client"), ("version", None), ("long", "é" * 50), ("other", "x"))
    assert imap.id_log_text(params, "*") == f"name=Mail?Client, version=NIL, long={'é' * 38}..., other=x"
    assert imap.id_log_text(params, "name OTHER") == "name=Mail?Client, other=x"
    assert imap.id_log_text(params, "") is None
    assert imap.id_log_text(params, "missing") is None


def test_client_id_to_forward_keeps_the_clients_own_pairs_within_256_bytes() -> None:
    params = (("name", "a\r\nb"), ("x-originating-ip", "1.2.3.4"), ("x-forward-foo", "1"), ("x-proxy-ttl", "3"),
              ("version", None), ("big", "v" * 300), ("os", "linux"))
    assert imap.client_id_to_forward(params) == (("name", "ab"), ("version", None), ("os", "linux"))


def test_client_id_travels_in_the_hop_and_is_checked() -> None:
    pairs = (("name", "client"), ("version", None))
    encoded = hop.encode_client_id(pairs)
    assert encoded is not None and hop.decode_client_id(encoded) == pairs
    assert hop.encode_client_id(()) is None
    assert hop.decode_client_id(b'[["name", 1]]') is None and hop.decode_client_id(b"{") is None
    request = hop.HopRequest(user="u", protocol="imap", session_id="s", backend_host="b",
                             client=("127.0.0.1", 1), local=("127.0.0.1", 2), client_id=encoded)
    challenge = hop.new_challenge()
    tlvs = hop.seal(request, b"secret", challenge)
    got = hop.verify(("127.0.0.1", 1), ("127.0.0.1", 2), tlvs, secret=b"secret", own_host="b",
                     challenge=challenge)
    assert got.client_id == encoded


@pytest.mark.parametrize(("used_capability", "expected"), [
    (False, b"t1 OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n"),
    (True, b"* CAPABILITY IMAP4rev1 IDLE\r\nt1 OK Logged in\r\n"),
])
def test_login_ok_reply_follows_dovecot(used_capability: bool, expected: bytes) -> None:
    assert imap.login_ok_reply(b"L OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n", "t1", used_capability) == expected


def imap_core(trusted: bool) -> imap.ImapLoginServer:
    return imap.ImapLoginServer(starttls=False, secured=True, allow_cleartext=True, trusted=trusted)


def test_imap_id_of_rfc2971_size_is_accepted_and_only_the_first_one_forwards() -> None:
    core = imap_core(trusted=True)
    pairs = [("x-originating-ip", "198.51.100.7")] + [(f"k{i:02d}", "v" * 1024) for i in range(29)]
    line = "a ID (" + " ".join(f'"{k}" "{v}"' for k, v in pairs) + ")\r\n"
    assert len(line) > 3 * 8192
    events = core.receive(line.encode())
    assert events[0] == ClientForwarded("198.51.100.7") and isinstance(events[1], imap.IdReceived)
    assert core.data_to_send().endswith(b"a OK ID completed.\r\n")
    events = core.receive(b'b ID ("x-originating-ip" "198.51.100.8")\r\n')
    assert [type(e) for e in events] == [imap.IdReceived] and not events[0].first
    untrusted = imap_core(trusted=False)
    assert [type(e) for e in untrusted.receive(b'c ID ("x-originating-ip" "198.51.100.7")\r\n')] == [imap.IdReceived]


def test_other_commands_keep_the_shorter_line_limit() -> None:
    core = imap_core(trusted=False)
    core.receive(b"a NOOP " + b"x" * 9000 + b"\r\n")
    assert core.data_to_send() == b"* BYE Input buffer full, aborting\r\n"


def test_xclient_in_each_core_follows_dovecot() -> None:
    pop = pop3.Pop3LoginServer(starttls=False, secured=True, allow_cleartext=True, greeting="ready.", trusted=True)
    assert pop.greeting() == b"+OK [XCLIENT] ready.\r\n"
    assert pop.receive(b"XCLIENT ADDR=198.51.100.7\r\n") == [ClientForwarded("198.51.100.7")]
    assert pop.data_to_send() == b"+OK Updated\r\n"
    pop.receive(b"XCLIENT ADDR=bad\r\n")
    assert pop.data_to_send() == b"-ERR Invalid parameters\r\n"
    sieve = managesieve.SieveLoginServer(starttls=False, secured=True, allow_cleartext=True, sieve_extensions="x",
                                         trusted=True)
    assert b'"XCLIENT"\r\n' in sieve.greeting()
    assert sieve.receive(b"XCLIENT ADDR=198.51.100.7 PORT=1\r\n") == [ClientForwarded("198.51.100.7", 1)]
    assert sieve.data_to_send() == b'OK "Updated"\r\n'
    untrusted = managesieve.SieveLoginServer(starttls=False, secured=True, allow_cleartext=True, sieve_extensions="x")
    assert untrusted.receive(b"XCLIENT ADDR=198.51.100.7\r\n") == []
    assert untrusted.data_to_send() == b'NO "You are not from trusted IP"\r\n'
    smtp = submission.SubmissionLoginServer(hostname="p.example", starttls=False, secured=True, allow_cleartext=True,
                                            trusted=True)
    assert smtp.receive(b"XCLIENT ADDR=198.51.100.7 PORT=x\r\n") == []
    assert smtp.data_to_send() == b"501 5.5.4 Invalid PORT parameter\r\n"
    assert smtp.receive(b"XCLIENT ADDR=IPV6:2001:db8::1\r\n") == [ClientForwarded("2001:db8::1")]
    assert smtp.data_to_send() == b"220 p.example Palomar ready.\r\n"


def test_an_id_value_over_1024_octets_ends_the_session_as_in_dovecot() -> None:
    core = imap_core(trusted=False)
    assert core.receive(b'a ID ("name" "' + b"v" * 1025 + b'")\r\n')[0] == imap.Close("Input buffer full")
    assert core.data_to_send() == b"* BYE Input buffer full, aborting\r\n"
