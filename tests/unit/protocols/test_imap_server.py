"""ImapLoginServer: byte vectors for the pre-login phase palomar's proxy shows to clients."""

from __future__ import annotations

import base64

import pytest

from palomar.protocols.imap import (
    AUTH_FAILED,
    Close,
    IdReceived,
    ImapLoginServer,
    LoginRequest,
    ServerState,
    StartTlsRequest,
    rewrite_tag,
    tagged,
    untagged,
)

CAPS = ("IMAP4rev1", "SASL-IR", "LOGIN-REFERRALS", "ID", "ENABLE", "IDLE", "LITERAL+")
PRIVACY = b"NO [PRIVACYREQUIRED] Plaintext authentication disallowed on non-secure (SSL/TLS) connections.\r\n"
BAD = b"BAD Error in IMAP command received by server.\r\n"


def server(*, starttls=True, secured=False, allow_cleartext=True, **kw) -> ImapLoginServer:
    return ImapLoginServer(CAPS, starttls=starttls, secured=secured, allow_cleartext=allow_cleartext,
                           greeting="Palomar ready.", **kw)


def talk(core: ImapLoginServer, data: bytes) -> tuple[list, bytes]:
    events = core.receive(data)
    return events, core.data_to_send()


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


# --------------------------------------------------------------------------- greeting, capability


def test_greeting_plaintext_port_with_starttls_and_cleartext_allowed():
    assert server().greeting() == (
        b"* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ STARTTLS "
        b"AUTH=PLAIN AUTH=LOGIN] Palomar ready.\r\n")


def test_greeting_logindisabled_hides_plaintext_mechanisms():
    greeting = server(allow_cleartext=False).greeting()
    assert greeting == (b"* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ STARTTLS "
                        b"LOGINDISABLED] Palomar ready.\r\n")


def test_secured_connection_has_no_starttls_and_allows_login():
    caps = server(secured=True, allow_cleartext=False).capability_string()
    assert "STARTTLS" not in caps.split()
    assert "LOGINDISABLED" not in caps.split()
    assert caps.endswith("AUTH=PLAIN AUTH=LOGIN")


def test_starttls_not_offered_when_disabled():
    assert "STARTTLS" not in server(starttls=False).capability_string().split()


def test_state_dependent_capabilities_cannot_be_configured():
    with pytest.raises(ValueError):
        ImapLoginServer(("IMAP4rev1", "STARTTLS"), starttls=True, secured=False, allow_cleartext=True)
    with pytest.raises(ValueError):
        ImapLoginServer(("IMAP4rev1", "AUTH=PLAIN"), starttls=True, secured=False, allow_cleartext=True)


def test_capability_command():
    core = server()
    events, out = talk(core, b"a1 CAPABILITY\r\n")
    assert events == []
    assert out == (b"* CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ STARTTLS "
                   b"AUTH=PLAIN AUTH=LOGIN\r\n"
                   b"a1 OK Pre-login capabilities listed, post-login capabilities have more.\r\n")
    assert core.client_used_capability


def test_command_names_are_case_insensitive_and_bare_lf_is_accepted():
    _, out = talk(server(), b"a1 capability\n")
    assert out.endswith(b"a1 OK Pre-login capabilities listed, post-login capabilities have more.\r\n")


def test_noop_and_logout():
    core = server()
    events, out = talk(core, b"n NOOP\r\nx LOGOUT\r\ny NOOP\r\n")
    assert out == b"n OK NOOP completed.\r\n* BYE Logging out\r\nx OK Logout completed.\r\n"
    assert events == [Close("Aborted login (logged out)")]
    assert core.state is ServerState.CLOSED
    assert talk(core, b"z NOOP\r\n") == ([], b"")


def test_enable_before_authentication_is_ignored_as_dovecot_does():
    core = server(max_bad_commands=2)
    _, out = talk(core, b"e1 ENABLE UTF8=ACCEPT\r\ne2 ENABLE CONDSTORE\r\ne3 NOOP\r\n")
    assert out == (b"* ENABLED\r\ne1 OK ENABLE ignored in non-authenticated state.\r\n"
                   b"* ENABLED\r\ne2 OK ENABLE ignored in non-authenticated state.\r\n"
                   b"e3 OK NOOP completed.\r\n")


# --------------------------------------------------------------------------- timing, framing


def test_client_that_never_sends_produces_nothing():
    core = server()
    assert core.receive(b"") == []
    assert core.data_to_send() == b""
    assert core.state is ServerState.COMMAND


def test_client_that_talks_before_the_greeting_is_still_answered():
    core = server()
    events, out = talk(core, b"a1 NOOP\r\n")
    assert out == b"a1 OK NOOP completed.\r\n"
    assert core.greeting().startswith(b"* OK [CAPABILITY ")  # the caller writes this first


def test_pipelined_commands_in_one_chunk():
    _, out = talk(server(), b"a NOOP\r\nb CAPABILITY\r\nc ID NIL\r\nd NOOP\r\n")
    lines = out.split(b"\r\n")
    assert lines[0] == b"a OK NOOP completed."
    assert lines[1].startswith(b"* CAPABILITY IMAP4rev1")
    assert lines[2] == b"b OK Pre-login capabilities listed, post-login capabilities have more."
    assert lines[3:6] == [b'* ID ("name" "palomar")', b"c OK ID completed.", b"d OK NOOP completed."]


def test_one_byte_at_a_time_login_with_literals():
    core = server()
    wire = b'a1 LOGIN {5}\r\nalice {6+}\r\nse"c\\t\r\n'
    events: list = []
    sent = b""
    for i in range(len(wire)):
        events += core.receive(wire[i : i + 1])
        sent += core.data_to_send()
    assert sent == b"+ OK\r\n"
    assert events == [LoginRequest("a1", "alice", 'se"c\\t', "PLAIN", "LOGIN")]


def test_empty_lines_and_garbage_are_bad_commands():
    core = server(max_bad_commands=10)
    _, out = talk(core, b"\r\n\x16\x03\x01\x02\r\nGET / HTTP/1.1\r\nonlytag\r\nt \x01\r\n")
    assert out == (b"* " + BAD) * 2 + b"GET " + BAD + b"onlytag " + BAD + b"t " + BAD
    assert core.bad_commands == 5


def test_tag_that_looks_like_login_gets_a_hint():
    _, out = talk(server(), b"LOGIN alice secret\r\n")
    assert out.startswith(b"LOGIN BAD First parameter in line is IMAP's command tag")


def test_three_bad_commands_close_the_connection():
    core = server()
    events, out = talk(core, b"a FOO\r\nb BAR\r\nc BAZ\r\nd NOOP\r\n")
    assert out == b"a " + BAD + b"b " + BAD + b"* BYE Too many invalid IMAP commands.\r\n"
    assert events == [Close("Too many invalid commands")]
    assert core.state is ServerState.CLOSED


def test_line_over_the_limit_closes():
    core = server(max_line=64)
    assert talk(core, b"a1 NOOP " + b"x" * 56) == ([], b"")  # 64 bytes, still waiting for the end
    events, out = talk(core, b"xx")
    assert out == b"* BYE Input buffer full, aborting\r\n"
    assert events == [Close("Input buffer full")]


def test_line_at_the_limit_is_accepted():
    core = server(max_line=64)
    line = b"a1 ID (" + b'"k" "' + b"v" * 50 + b'")'
    assert len(line) == 64
    events, _ = talk(core, line + b"\r\n")
    assert events == [IdReceived("a1", (("k", "v" * 50),))]


def test_synchronizing_literal_over_the_limit_is_refused_without_continuation():
    core = server(max_line=64)
    events, out = talk(core, b"a1 LOGIN {100}\r\n")
    assert out == b"a1 BAD Literal size too large.\r\n"
    assert events == []
    _, out = talk(core, b"a2 NOOP\r\n")
    assert out == b"a2 OK NOOP completed.\r\n"


def test_non_synchronizing_literal_over_the_limit_closes():
    core = server(max_line=64)
    events, out = talk(core, b"a1 LOGIN {100+}\r\n" + b"x" * 100)
    assert out == b"* BYE Input buffer full, aborting\r\n"
    assert events == [Close("Input buffer full")]


def test_literal_size_with_more_than_ten_digits_is_still_a_literal():
    """Found by fuzzing: `{10000000000}` was not taken for a literal, so the line was a bad
    command and, for `{n+}`, the literal's bytes were then read as commands."""
    core = server(max_line=64)
    events, out = talk(core, b"a1 LOGIN {10000000000}\r\n")
    assert out == b"a1 BAD Literal size too large.\r\n"
    assert events == []
    events, out = talk(server(max_line=64), b"a1 LOGIN {99999999999+}\r\na2 LOGIN u p\r\n")
    assert out == b"* BYE Input buffer full, aborting\r\n"
    assert events == [Close("Input buffer full")]
    # Thousands of digits are refused the same way, without converting the number.
    _, out = talk(server(), b"a1 LOGIN {" + b"9" * 5000 + b"}\r\n")
    assert out == b"a1 BAD Literal size too large.\r\n"


def test_literal_size_with_leading_zeros():
    events, _ = talk(server(), b"a1 LOGIN {00000000000005+}\r\nalice bob\r\n")
    assert [(e.username, e.password) for e in events] == [("alice", "bob")]


def test_synchronizing_literal_for_an_unknown_command_is_refused():
    _, out = talk(server(), b"a1 FOO {3}\r\n")
    assert out == b"a1 " + BAD


def test_non_synchronizing_literal_for_an_unknown_command_is_consumed():
    _, out = talk(server(), b"a1 FOO {3+}\r\nx\r\n\r\na2 NOOP\r\n")
    assert out == b"a1 " + BAD + b"a2 OK NOOP completed.\r\n"


# --------------------------------------------------------------------------- LOGIN


@pytest.mark.parametrize(
    ("wire", "user", "password"),
    [
        (b"a1 LOGIN alice secret\r\n", "alice", "secret"),
        (b'a1 LOGIN "alice@example.test" "p\\"a\\\\ss w"\r\n', "alice@example.test", 'p"a\\ss w'),
        (b"a1 LOGIN {5+}\r\nalice {3+}\r\n\r\n \r\n", "alice", "\r\n "),
        (b'a1 login "" ""\r\n', "", ""),
        (b"a1 LOGIN a]b \"\xc3\xa9t\xc3\xa9\"\r\n", "a]b", "\u00e9t\u00e9"),
    ],
    ids=["atoms", "quoted-escapes", "literal-plus", "empty", "utf8"],
)
def test_login_variants(wire, user, password):
    core = server()
    events, out = talk(core, wire)
    assert out == b""
    assert events == [LoginRequest("a1", user, password, "PLAIN", "LOGIN")]
    assert core.state is ServerState.AWAIT_LOGIN


def test_login_with_synchronizing_literals():
    core = server()
    events, out = talk(core, b"a1 LOGIN {5}\r\n")
    assert (events, out) == ([], b"+ OK\r\n")
    events, out = talk(core, b"alice {6}\r\n")
    assert (events, out) == ([], b"+ OK\r\n")
    events, out = talk(core, b"secret\r\n")
    assert out == b""
    assert events == [LoginRequest("a1", "alice", "secret", "PLAIN", "LOGIN")]


def test_latin1_password_survives_byte_exactly():
    events, _ = talk(server(), b'a1 LOGIN bob "\xe9t\xe9"\r\n')
    assert events[0].password.encode("utf-8", "surrogateescape") == b"\xe9t\xe9"


@pytest.mark.parametrize(
    "wire",
    [b"a1 LOGIN alice\r\n", b"a1 LOGIN alice secret extra\r\n", b'a1 LOGIN "alice secret\r\n',
     b"a1 LOGIN alice {3}x\r\n", b'a1 LOGIN "a\\x" b\r\n', b"a1 LOGIN (alice) b\r\n", b"a1 LOGIN  alice b\r\n"],
)
def test_malformed_login_is_a_bad_command(wire):
    core = server()
    events, out = talk(core, wire)
    assert events == []
    assert out == b"a1 " + BAD
    assert core.bad_commands == 1


def test_login_refused_without_tls_when_cleartext_is_disallowed():
    core = server(allow_cleartext=False)
    events, out = talk(core, b"a1 LOGIN alice secret\r\n")
    assert events == []
    assert out == b"a1 " + PRIVACY


def test_login_literal_refused_before_the_password_is_sent():
    core = server(allow_cleartext=False)
    events, out = talk(core, b"a1 LOGIN alice {6}\r\n")
    assert events == [] and out == b"a1 " + PRIVACY
    # The client did not get "+ OK", so its next line is a new command.
    _, out = talk(core, b"a2 NOOP\r\n")
    assert out == b"a2 OK NOOP completed.\r\n"


def test_login_failed_resumes_with_pipelined_commands():
    core = server()
    events, _ = talk(core, b"a1 LOGIN alice wrong\r\na2 NOOP\r\n")
    assert [type(e) for e in events] == [LoginRequest]
    assert core.data_to_send() == b""
    assert core.receive(b"a3 NOOP\r\n") == []  # held while the caller decides
    assert core.data_to_send() == b""
    assert core.login_failed("a1", AUTH_FAILED) == []
    assert core.data_to_send() == (b"a1 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"
                                   b"a2 OK NOOP completed.\r\na3 OK NOOP completed.\r\n")
    assert core.state is ServerState.COMMAND


def test_login_failed_returns_events_of_pipelined_commands():
    core = server()
    talk(core, b"a1 LOGIN alice wrong\r\na2 LOGIN alice right\r\n")
    events = core.login_failed("a1", AUTH_FAILED)
    assert events == [LoginRequest("a2", "alice", "right", "PLAIN", "LOGIN")]


def test_login_succeeded_hands_back_pipelined_bytes():
    core = server()
    talk(core, b"a1 LOGIN alice secret\r\na2 SELECT INBOX\r\na3 FETCH 1")
    core.receive(b" BODY[]\r\n")
    core.login_succeeded()
    assert core.state is ServerState.LOGGED_IN
    assert core.receive(b"a4 IDLE\r\n") == []
    assert core.data_to_send() == b""
    assert core.leftover() == b"a2 SELECT INBOX\r\na3 FETCH 1 BODY[]\r\na4 IDLE\r\n"
    assert core.leftover() == b""


def test_login_decision_for_the_wrong_tag_is_a_programming_error():
    core = server()
    talk(core, b"a1 LOGIN alice secret\r\n")
    with pytest.raises(RuntimeError):
        core.login_failed("zz", AUTH_FAILED)
    with pytest.raises(ValueError):
        core.login_failed("a1", "NO x\r\n* OK injected")


def test_flood_while_awaiting_login_decision_closes():
    core = server(max_line=1024)
    talk(core, b"a1 LOGIN alice secret\r\n")
    events, out = talk(core, b"x" * 70000)
    assert events == [Close("Input buffer full")]
    assert out == b"* BYE Input buffer full, aborting\r\n"


# --------------------------------------------------------------------------- AUTHENTICATE


def test_authenticate_plain_with_sasl_ir():
    events, out = talk(server(), b"a1 AUTHENTICATE PLAIN " + b64(b"\0alice\0secret") + b"\r\n")
    assert out == b""
    assert events == [LoginRequest("a1", "alice", "secret", "PLAIN", "AUTHENTICATE", None)]


def test_authenticate_plain_spec_example():
    events, _ = talk(server(), b"a1 authenticate plain AGpvaG4Ac2VjcmV0\r\n")
    assert (events[0].username, events[0].password) == ("john", "secret")


def test_authenticate_plain_without_sasl_ir():
    core = server()
    events, out = talk(core, b"a1 AUTHENTICATE PLAIN\r\n")
    assert (events, out) == ([], b"+ \r\n")
    events, out = talk(core, b64(b"alice\0alice\0secret") + b"\r\n")
    assert out == b""
    assert events == [LoginRequest("a1", "alice", "secret", "PLAIN", "AUTHENTICATE", "alice")]
    assert not events[0].is_master_login


def test_authenticate_plain_with_other_authzid_is_exposed_as_master_login():
    events, _ = talk(server(), b"a1 AUTHENTICATE PLAIN " + b64(b"bob\0alice\0secret") + b"\r\n")
    assert events[0].authzid == "bob" and events[0].username == "alice"
    assert events[0].is_master_login


def test_authenticate_continuation_one_byte_at_a_time():
    core = server()
    wire = b"a1 AUTHENTICATE PLAIN\r\n" + b64(b"\0alice\0secret") + b"\r\n"
    events: list = []
    for i in range(len(wire)):
        events += core.receive(wire[i : i + 1])
    assert core.data_to_send() == b"+ \r\n"
    assert events == [LoginRequest("a1", "alice", "secret", "PLAIN", "AUTHENTICATE", None)]


def test_authenticate_continuation_with_literal_marker_is_taken_as_base64():
    core = server()
    talk(core, b"a1 AUTHENTICATE PLAIN\r\n")
    events, out = talk(core, b"{5}\r\n")
    assert out == b"a1 BAD Invalid base64 data in continued response\r\n"
    assert events == []


def test_authenticate_cancel():
    core = server()
    talk(core, b"a1 AUTHENTICATE PLAIN\r\n")
    events, out = talk(core, b"*\r\na2 NOOP\r\n")
    assert events == []
    assert out == b"a1 BAD Authentication aborted by client.\r\na2 OK NOOP completed.\r\n"
    assert core.bad_commands == 0


def test_authenticate_bad_base64_in_continuation():
    core = server()
    talk(core, b"a1 AUTHENTICATE PLAIN\r\n")
    _, out = talk(core, b"not base64!\r\n")
    assert out == b"a1 BAD Invalid base64 data in continued response\r\n"
    assert core.state is ServerState.COMMAND


def test_authenticate_bad_base64_in_initial_response():
    _, out = talk(server(), b"a1 AUTHENTICATE PLAIN AGpvaG4Ac2VjcmV0=\r\n")
    assert out == b"a1 BAD Invalid base64 data in initial response\r\n"


@pytest.mark.parametrize("payload", [b"=", b64(b"alice\0secret"), b64(b"\0\0secret"), b64(b"a\0b\0c\0d")])
def test_malformed_plain_message_fails_authentication(payload):
    core = server()
    events, out = talk(core, b"a1 AUTHENTICATE PLAIN " + payload + b"\r\n")
    assert events == []
    assert out == b"a1 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"
    assert core.state is ServerState.COMMAND


def test_authenticate_login_mechanism():
    core = server()
    _, out = talk(core, b"a1 AUTHENTICATE LOGIN\r\n")
    assert out == b"+ VXNlcm5hbWU6\r\n"  # "Username:"
    _, out = talk(core, b64(b"alice") + b"\r\n")
    assert out == b"+ UGFzc3dvcmQ6\r\n"  # "Password:"
    events, out = talk(core, b64(b"secret") + b"\r\n")
    assert out == b""
    assert events == [LoginRequest("a1", "alice", "secret", "LOGIN", "AUTHENTICATE", None)]


def test_authenticate_login_with_initial_response():
    core = server()
    _, out = talk(core, b"a1 AUTHENTICATE LOGIN " + b64(b"alice") + b"\r\n")
    assert out == b"+ UGFzc3dvcmQ6\r\n"
    events, _ = talk(core, b64(b"secret") + b"\r\n")
    assert (events[0].username, events[0].password, events[0].mechanism) == ("alice", "secret", "LOGIN")


def test_authenticate_unknown_mechanism():
    _, out = talk(server(), b"a1 AUTHENTICATE CRAM-MD5\r\n")
    assert out == b"a1 NO [ALERT] Unsupported authentication mechanism.\r\n"


def test_authenticate_refused_without_tls_when_cleartext_is_disallowed():
    events, out = talk(server(allow_cleartext=False), b"a1 AUTHENTICATE PLAIN " + b64(b"\0a\0b") + b"\r\n")
    assert events == [] and out == b"a1 NO [PRIVACYREQUIRED] Plaintext authentication disabled.\r\n"


# --------------------------------------------------------------------------- STARTTLS


def test_starttls_discards_pipelined_bytes_and_secures():
    core = server(allow_cleartext=False)
    events, out = talk(core, b"s1 STARTTLS\r\na2 LOGIN evil injected\r\n")
    assert events == [StartTlsRequest("s1")]
    assert out == b"s1 OK Begin TLS negotiation now.\r\n"
    assert core.state is ServerState.AWAIT_TLS
    assert talk(core, b"a3 LOGIN more injected\r\n") == ([], b"")  # plaintext before the handshake
    core.tls_started()
    assert core.secured and core.state is ServerState.COMMAND
    caps = core.capability_string().split()
    assert "STARTTLS" not in caps and "LOGINDISABLED" not in caps and "AUTH=PLAIN" in caps
    events, out = talk(core, b"a4 CAPABILITY\r\na5 LOGIN alice secret\r\n")
    assert b"STARTTLS" not in out
    assert events == [LoginRequest("a5", "alice", "secret", "PLAIN", "LOGIN")]
    assert not core.client_used_capability  # only a pre-STARTTLS CAPABILITY counts


def test_starttls_when_already_secured_or_disabled():
    _, out = talk(server(secured=True), b"s STARTTLS\r\n")
    assert out == b"s BAD TLS is already active.\r\n"
    _, out = talk(server(starttls=False), b"s STARTTLS\r\n")
    assert out == b"s BAD TLS support isn't enabled.\r\n"


def test_tls_started_without_starttls_is_a_programming_error():
    with pytest.raises(RuntimeError):
        server().tls_started()


# --------------------------------------------------------------------------- ID


def test_id_with_pairs_and_nil():
    core = server()
    events, out = talk(core, b'i1 ID ("name" "Thunderbird" "version" NIL "os" {5}\r\n')
    assert out == b"+ OK\r\n"
    events, out = talk(core, b"Linux)\r\n")
    assert out == b'* ID ("name" "palomar")\r\ni1 OK ID completed.\r\n'
    assert events == [IdReceived("i1", (("name", "Thunderbird"), ("version", None), ("os", "Linux")))]


def test_id_nil_and_empty_list():
    events, out = talk(server(), b"i1 ID NIL\r\ni2 id ()\r\n")
    assert events == [IdReceived("i1", ()), IdReceived("i2", (), first=False)]
    assert out.count(b"OK ID completed.") == 2


def test_id_value_length_limit():
    events, _ = talk(server(), b'i1 ID ("k" "' + b"v" * 1024 + b'")\r\n')
    assert events == [IdReceived("i1", (("k", "v" * 1024),))]
    events, out = talk(server(), b'i1 ID ("k" "' + b"v" * 1025 + b'")\r\n')
    assert events == [Close("Input buffer full")]  # as Dovecot 2.3 does
    assert out == b"* BYE Input buffer full, aborting\r\n"


@pytest.mark.parametrize(
    "args",
    [b'("' + b"k" * 31 + b'" "v")', b'("name")', b"(name \"x\")", b'("a" "b"', b"NOTNIL", b"", b'("a" "b")x',
     b'("a" "b""c" "d")'],
    ids=["long-key", "odd", "atom-key", "unclosed", "not-nil", "missing", "trailing", "no-space"],
)
def test_invalid_id_parameters(args):
    core = server()
    events, out = talk(core, b"i1 ID " + args + b"\r\n" if args else b"i1 ID\r\n")
    assert events == []
    assert out == b"i1 BAD Invalid ID parameters\r\n"
    assert core.bad_commands == 0


def test_id_reply_can_be_configured():
    _, out = talk(server(server_id=()), b"i ID NIL\r\n")
    assert out.startswith(b"* ID NIL\r\n")


# --------------------------------------------------------------------------- secrets, helpers


def test_passwords_do_not_appear_in_reprs():
    core = server()
    events, _ = talk(core, b"a1 LOGIN alice Sup3rS3cret\r\n")
    for text in (repr(events), str(events[0]), repr(core)):
        assert "Sup3rS3cret" not in text
    core = server()
    talk(core, b"a1 AUTHENTICATE LOGIN " + b64(b"alice") + b"\r\n")
    assert "alice" not in repr(core) and "alice" not in repr(core._sasl)
    events, _ = talk(core, b64(b"Sup3rS3cret") + b"\r\n")
    assert "Sup3rS3cret" not in repr(events)


def test_reply_helpers():
    assert tagged("a1", "NO", "[AUTHENTICATIONFAILED] Authentication failed.") == (
        b"a1 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n")
    assert untagged("BYE bye") == b"* BYE bye\r\n"
    with pytest.raises(ValueError):
        tagged("a1", "OK", "x\r\n* injected")


def test_rewrite_tag():
    assert rewrite_tag(b"L OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n", "a7") == (
        b"a7 OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n")
    assert rewrite_tag(b"L OK Logged in", "a7", ["IMAP4rev1", "MOVE"]) == (
        b"a7 OK [CAPABILITY IMAP4rev1 MOVE] Logged in\r\n")
    assert rewrite_tag(b"L NO [UNAVAILABLE] Try later\r\n", "x", ["IMAP4rev1"]) == (
        b"x NO [UNAVAILABLE] Try later\r\n")
    with pytest.raises(ValueError):
        rewrite_tag(b"garbage", "a")
