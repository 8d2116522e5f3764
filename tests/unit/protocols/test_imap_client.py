"""ImapLoginClient: logging a user in to a Dovecot backend as a master user, byte by byte."""

from __future__ import annotations

import base64

import pytest

from palomar.protocols.imap import ClientState, ImapLoginClient, LoggedIn, LoginFailed, rewrite_tag

IR = base64.b64encode(b"alice@example.test\0palomar-master\0m4sterPW")
BANNER_ID = (b"* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ AUTH=PLAIN] "
             b"Dovecot ready.\r\n")
BANNER_NO_ID = b"* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS IDLE LITERAL+ AUTH=PLAIN] Dovecot ready.\r\n"
ID_FIELDS = [
    ("x-session-id", "wDcCCsgi"),
    ("x-originating-ip", "192.0.2.10"),
    ("x-originating-port", "51234"),
    ("x-connected-ip", "198.51.100.1"),
    ("x-connected-port", "143"),
    ("x-proxy-ttl", "6"),
    ("x-forward-tenant", "acme"),
]
ID_LINE = (b'I ID ("x-session-id" "wDcCCsgi" "x-originating-ip" "192.0.2.10" "x-originating-port" "51234" '
           b'"x-connected-ip" "198.51.100.1" "x-connected-port" "143" "x-proxy-ttl" "6" '
           b'"x-forward-tenant" "acme")\r\n')
OK_LINE = b"L OK [CAPABILITY IMAP4rev1 SASL-IR IDLE MOVE UIDPLUS] Logged in\r\n"


def client(id_fields=ID_FIELDS) -> ImapLoginClient:
    return ImapLoginClient("alice@example.test", master_user="palomar-master", master_password="m4sterPW",
                           id_fields=id_fields)


def test_banner_with_id_pipelines_id_and_authenticate():
    core = client()
    assert core.data_to_send() == b""
    assert core.receive(BANNER_ID) is None
    assert core.data_to_send() == ID_LINE + b"L AUTHENTICATE PLAIN " + IR + b"\r\n"
    assert core.state is ClientState.AUTHENTICATE
    result = core.receive(b'* ID ("name" "Dovecot")\r\nI OK Trusted ID completed.\r\n' + OK_LINE)
    assert result == LoggedIn(OK_LINE, ["IMAP4rev1", "SASL-IR", "IDLE", "MOVE", "UIDPLUS"], b"")
    assert core.result is result
    assert rewrite_tag(result.ok_line, "a1") == b"a1 OK [CAPABILITY IMAP4rev1 SASL-IR IDLE MOVE UIDPLUS] Logged in\r\n"


def test_banner_without_id_sends_no_id():
    core = client()
    core.receive(BANNER_NO_ID)
    assert core.data_to_send() == b"L AUTHENTICATE PLAIN " + IR + b"\r\n"


def test_no_id_fields_means_no_id_command():
    core = client(id_fields=())
    core.receive(BANNER_ID)
    assert core.data_to_send() == b"L AUTHENTICATE PLAIN " + IR + b"\r\n"


def test_id_values_are_quoted_and_nil():
    core = client(id_fields=[("x-forward-note", 'say "hi" \\o/'), ("x-empty", None)])
    core.receive(BANNER_ID)
    assert core.data_to_send().startswith(b'I ID ("x-forward-note" "say \\"hi\\" \\\\o/" "x-empty" NIL)\r\n')


def test_id_value_needing_a_literal_is_refused():
    with pytest.raises(ValueError):
        client(id_fields=[("x-forward-evil", "a\r\nL LOGIN x y")])


def test_without_sasl_ir_waits_for_the_continuation():
    core = client(id_fields=())
    core.receive(b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] ready\r\n")
    assert core.data_to_send() == b"L AUTHENTICATE PLAIN\r\n"
    assert core.receive(b"+ \r\n") is None
    assert core.data_to_send() == IR + b"\r\n"
    assert isinstance(core.receive(b"L OK Logged in\r\n"), LoggedIn)


def test_continuation_without_space_is_tolerated():
    core = client(id_fields=())
    core.receive(b"* OK [CAPABILITY IMAP4rev1] ready\r\n")
    core.data_to_send()
    core.receive(b"+\r\n")
    assert core.data_to_send() == IR + b"\r\n"


def test_unexpected_second_continuation_is_a_protocol_failure():
    core = client()
    core.receive(BANNER_ID)
    result = core.receive(b"+ \r\n")
    assert isinstance(result, LoginFailed) and result.kind == "protocol"


def test_banner_without_capability_asks_for_it_first():
    core = client()
    core.receive(b"* OK Dovecot ready.\r\n")
    assert core.data_to_send() == b"C CAPABILITY\r\n"
    assert core.state is ClientState.CAPABILITY
    core.receive(b"* CAPABILITY IMAP4rev1 SASL-IR ID\r\n")
    assert core.data_to_send() == b""
    core.receive(b"C OK Pre-login capabilities listed, post-login capabilities have more.\r\n")
    assert core.data_to_send() == ID_LINE + b"L AUTHENTICATE PLAIN " + IR + b"\r\n"
    result = core.receive(b"L OK Logged in\r\n")
    assert result == LoggedIn(b"L OK Logged in\r\n", ["IMAP4rev1", "SASL-IR", "ID"], b"")


def test_capability_command_failure_is_a_protocol_failure():
    core = client()
    core.receive(b"* OK ready\r\n")
    result = core.receive(b"C BAD no\r\n")
    assert isinstance(result, LoginFailed) and result.kind == "protocol"


def test_backend_without_imap4rev1_is_a_protocol_failure():
    result = client().receive(b"* OK [CAPABILITY POP3] huh\r\n")
    assert result == LoginFailed("protocol", None, "Backend does not support IMAP4rev1")


@pytest.mark.parametrize(
    "banner",
    [b"+OK Dovecot ready.\r\n", b"* BYE Server shutting down\r\n", b"HTTP/1.1 400 Bad Request\r\n",
     b"* PREAUTH [CAPABILITY IMAP4rev1] hi\r\n", b"\r\n", b"* OK [CAPABILITY IMAP4rev1 unterminated\r\n"],
)
def test_garbage_banner_is_a_protocol_failure(banner):
    core = client()
    result = core.receive(banner)
    assert isinstance(result, LoginFailed)
    assert result.kind == "protocol"
    assert core.data_to_send() == b""
    assert core.state is ClientState.DONE


def test_too_long_line_is_a_protocol_failure():
    core = ImapLoginClient("u", master_user="m", master_password="p", max_line=100)
    result = core.receive(b"* OK " + b"x" * 200)
    assert isinstance(result, LoginFailed) and result.kind == "protocol"


def test_endless_untagged_replies_are_a_protocol_failure():
    """Found by fuzzing: untagged lines before the login reply were kept without a bound."""
    core = ImapLoginClient("alice@example.test", master_user="palomar-master", master_password="m4sterPW",
                           max_line=100)
    assert core.receive(b"* OK [CAPABILITY IMAP4rev1 SASL-IR] ready\r\n") is None
    for _ in range(8):
        assert core.receive(b"* 1 EXISTS\r\n") is None
    result = core.receive(b"* 2 EXISTS\r\n")
    assert isinstance(result, LoginFailed) and result.kind == "protocol"
    assert "untagged" in result.text
    assert len(core._untagged) <= 100


def test_authentication_failed():
    core = client()
    core.receive(BANNER_ID)
    result = core.receive(b"I OK ID completed.\r\nL NO [AUTHENTICATIONFAILED] Authentication failed.\r\n")
    assert result == LoginFailed("auth", "AUTHENTICATIONFAILED", "Authentication failed.", None,
                                 b"L NO [AUTHENTICATIONFAILED] Authentication failed.\r\n")


def test_no_without_code_counts_as_auth_failure():
    core = client()
    core.receive(BANNER_ID)
    result = core.receive(b"L NO Login failed\r\n")
    assert (result.kind, result.response_code, result.text) == ("auth", None, "Login failed")


def test_unavailable_is_temporary():
    core = client()
    core.receive(BANNER_ID)
    result = core.receive(b"L NO [UNAVAILABLE] Temporary authentication failure. [host:2024]\r\n")
    assert result.kind == "temp"
    assert result.response_code == "UNAVAILABLE"
    assert result.text == "Temporary authentication failure. [host:2024]"


@pytest.mark.parametrize(
    ("line", "url"),
    [
        (b"L NO [REFERRAL imap://alice@10.0.0.2:1143/] Try this server instead.\r\n", "imap://alice@10.0.0.2:1143/"),
        (b"L NO [REFERRAL imap://[::1]:1143/] Moved\r\n", "imap://[::1]:1143/"),
    ],
)
def test_referral_carries_the_url(line, url):
    core = client()
    core.receive(BANNER_ID)
    result = core.receive(line)
    assert result.kind == "referral" and result.referral == url and result.response_code == "REFERRAL"


def test_other_codes_are_kept_for_verbatim_forwarding():
    core = client()
    core.receive(BANNER_ID)
    result = core.receive(b"L NO [LIMIT] Too many connections\r\n")
    assert (result.kind, result.response_code, result.line) == (
        "other", "LIMIT", b"L NO [LIMIT] Too many connections\r\n")


def test_serverbug_is_a_config_failure_even_on_id():
    core = client()
    core.receive(BANNER_ID)
    result = core.receive(b"I NO [SERVERBUG] Internal error\r\n")
    assert result.kind == "config" and result.response_code == "SERVERBUG"


def test_id_refusal_without_serverbug_is_ignored():
    core = client()
    core.receive(BANNER_ID)
    assert core.receive(b"I BAD Invalid ID parameters\r\n") is None
    assert isinstance(core.receive(OK_LINE), LoggedIn)


def test_bad_reply_to_authenticate_is_a_protocol_failure():
    core = client()
    core.receive(BANNER_ID)
    result = core.receive(b"L BAD Invalid base64 data in initial response\r\n")
    assert result.kind == "protocol"


def test_unknown_tag_is_a_protocol_failure():
    core = client()
    core.receive(BANNER_ID)
    assert core.receive(b"Z OK what\r\n").kind == "protocol"


def test_untagged_lines_before_ok_are_collected_except_bye_id_and_capability():
    core = client()
    core.receive(BANNER_ID)
    result = core.receive(
        b'* ID ("name" "Dovecot")\r\n'
        b"* OK [ALERT] Maintenance tonight\r\n"
        b"* BYE going away\r\n"
        b"* CAPABILITY IMAP4rev1 IDLE MOVE\r\n"
        b"* OK [ALERT] {5}\r\nhello\r\n"
        b"L OK Logged in\r\n"
    )
    assert result == LoggedIn(
        b"L OK Logged in\r\n",
        ["IMAP4rev1", "IDLE", "MOVE"],
        b"* OK [ALERT] Maintenance tonight\r\n* OK [ALERT] {5}\r\nhello\r\n",
    )


def test_fragmented_replies_one_byte_at_a_time():
    core = client()
    wire = BANNER_ID + b'* ID ("name" "Dovecot")\r\nI OK ID completed.\r\n' + OK_LINE + b"* 3 EXISTS\r\n"
    results = []
    sent = b""
    for i in range(len(wire)):
        result = core.receive(wire[i : i + 1])
        sent += core.data_to_send()
        if result is not None:
            results.append(result)
    assert sent == ID_LINE + b"L AUTHENTICATE PLAIN " + IR + b"\r\n"
    assert results == [LoggedIn(OK_LINE, ["IMAP4rev1", "SASL-IR", "IDLE", "MOVE", "UIDPLUS"], b"")]
    assert core.leftover() == b"* 3 EXISTS\r\n"


def test_bytes_after_the_tagged_reply_are_leftover():
    core = client()
    core.receive(BANNER_ID)
    core.receive(OK_LINE + b"* 1 EXISTS\r\n* 1 RECENT")
    assert core.receive(b"\r\n") is None
    assert core.leftover() == b"* 1 EXISTS\r\n* 1 RECENT\r\n"
    assert core.leftover() == b""


def test_disconnect_before_reply_is_temporary():
    core = client()
    core.receive(BANNER_ID)
    assert core.connection_lost() == LoginFailed("temp", None, "Backend disconnected during login")
    done = client()
    done.receive(BANNER_ID)
    ok = done.receive(OK_LINE)
    assert done.connection_lost() is ok


def test_master_password_absent_from_repr_and_plain_layout():
    core = client()
    assert "m4sterPW" not in repr(core)
    core.receive(BANNER_NO_ID)
    line = core.data_to_send()
    assert base64.b64decode(line.split()[-1]) == b"alice@example.test\0palomar-master\0m4sterPW"


def test_nul_in_credentials_is_refused():
    with pytest.raises(ValueError):
        ImapLoginClient("a\0b", master_user="m", master_password="p")
    with pytest.raises(ValueError):
        ImapLoginClient("a", master_user="", master_password="p")
