"""LMTP cores, byte for byte: the proxy's server side (routing left to the caller) and the
backend's client side towards Dovecot's LMTP."""

from __future__ import annotations

import pytest

from palomar.protocols import lmtp
from palomar.protocols.lmtp import (
    RCPT_OK,
    Close,
    CommandReply,
    DataAborted,
    DataChunk,
    DataEnd,
    DataStart,
    DeliveryReply,
    LmtpClient,
    LmtpFailure,
    LmtpServer,
    MailFrom,
    RcptRequest,
    Ready,
    ServerState,
    TransactionReset,
)


def make_server(**kwargs: object) -> LmtpServer:
    options: dict = {"hostname": "proxy.example"}
    options.update(kwargs)
    return LmtpServer(**options)


def talk(server: LmtpServer, data: bytes) -> tuple[bytes, list]:
    events = server.receive(data)
    return server.data_to_send(), events


def ready_server(**kwargs: object) -> LmtpServer:
    server = make_server(**kwargs)
    talk(server, b"LHLO mta.example\r\n")
    return server


def in_transaction(rcpts: list[str], **kwargs: object) -> LmtpServer:
    server = ready_server(**kwargs)
    talk(server, b"MAIL FROM:<s@example.org>\r\n")
    for rcpt in rcpts:
        talk(server, f"RCPT TO:<{rcpt}>\r\n".encode())
        server.rcpt_reply(RCPT_OK)
        server.data_to_send()
    return server


def chunks_of(events: list) -> bytes:
    return b"".join(event.data for event in events if isinstance(event, DataChunk))


# --------------------------------------------------------------------------- server: session


def test_greeting_and_lhlo() -> None:
    server = make_server()
    assert server.greeting() == b"220 proxy.example LMTP Palomar ready.\r\n"
    out, events = talk(server, b"LHLO mta.example\r\n")
    assert out == (b"250-proxy.example\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250-PIPELINING\r\n"
                   b"250 SIZE\r\n")
    assert events == [] and server.lhlo_name == "mta.example"


def test_lhlo_with_extensions_and_size() -> None:
    server = make_server(capabilities=["SMTPUTF8", "chunking", "DSN"], max_size=1000)
    out, _ = talk(server, b"LHLO m\r\n")
    assert out == (b"250-proxy.example\r\n250-8BITMIME\r\n250-CHUNKING\r\n250-DSN\r\n"
                   b"250-ENHANCEDSTATUSCODES\r\n"
                   b"250-PIPELINING\r\n250-SIZE 1000\r\n250 SMTPUTF8\r\n")
    with pytest.raises(ValueError, match="BINARYMIME"):
        make_server(capabilities=["BINARYMIME"])


def test_lhlo_errors_and_smtp_greetings_are_unknown() -> None:
    server = make_server()
    out, _ = talk(server, b"LHLO\r\nHELO x\r\nEHLO x\r\nMAIL FROM:<a@b>\r\n")
    assert out == (b"501 Missing hostname\r\n500 5.5.1 Unknown command\r\n500 5.5.1 Unknown command\r\n"
                   b"503 5.5.1 LHLO needed first\r\n")


def test_noop_vrfy_rset_quit() -> None:
    server = ready_server()
    out, events = talk(server, b"NOOP\r\nVRFY x\r\nRSET\r\nRSET now\r\nQUIT\r\nNOOP\r\n")
    assert out == (b"250 2.0.0 OK\r\n252 2.3.3 Try RCPT instead\r\n250 2.0.0 OK\r\n"
                   b"501 5.5.4 Invalid parameters\r\n221 2.0.0 Bye\r\n")
    assert events == [Close("QUIT")]
    assert server.state is ServerState.CLOSED
    assert talk(server, b"NOOP\r\n") == (b"", [])


def test_line_too_long_continues_and_bad_commands_close() -> None:
    server = ready_server(max_line=64, max_bad_commands=3)
    out, events = talk(server, b"RCPT TO:<" + b"x" * 100 + b"@y>\r\nNOOP\r\n")
    assert out == b"500 5.5.2 Line too long\r\n250 2.0.0 OK\r\n" and events == []
    out, events = talk(server, b"MAIL FROM:<a@b>\r\nBOGUS\r\n!!\r\nNOOP\r\n")
    assert out == (b"250 2.1.0 OK\r\n500 5.5.1 Unknown command\r\n"
                   b"421 4.7.0 proxy.example Too many invalid commands.\r\n")
    assert events == [MailFrom("a@b", {}), TransactionReset("Too many invalid commands"),
                      Close("Too many invalid commands")]


# --------------------------------------------------------------------------- server: MAIL


def test_mail_from_accepted_with_params() -> None:
    server = ready_server(max_size=1000)
    out, events = talk(server, b"MAIL FROM:<> SIZE=999 BODY=8bitmime\r\n")
    assert out == b"250 2.1.0 OK\r\n"
    assert events == [MailFrom("", {"SIZE": "999", "BODY": "8bitmime"})]
    out, _ = talk(server, b"MAIL FROM:<a@b>\r\n")
    assert out == b"503 5.5.0 MAIL already given\r\n"


@pytest.mark.parametrize("line,reply", [
    (b"MAIL FROM:a@b", b"501 5.5.4 Invalid FROM: Missing '<' at beginning of path"),
    (b"MAIL TO:<a@b>", b"501 5.5.4 Invalid FROM: Missing FROM:"),
    (b"MAIL FROM:<a@b> FOO=bar", b"555 5.5.4 Unsupported parameters"),
    (b"MAIL FROM:<a@b> SIZE=1001", b"552 5.3.4 Message size exceeds fixed maximum message size"),
    (b"MAIL FROM:<a@b> SIZE=abc", b"501 5.5.4 Invalid SIZE parameter"),
    (b"MAIL FROM:<a@b> SIZE", b"501 5.5.4 Invalid SIZE parameter"),
    (b"MAIL FROM:<a@b> BODY=BINARYMIME", b"555 5.5.4 Unsupported BODY parameter value"),
    (b"MAIL FROM:<a@b> SMTPUTF8", b"555 5.5.4 Unsupported parameters"),
    (b"MAIL FROM:<a@b> RET=FULL", b"555 5.5.4 Unsupported parameters"),
    ("MAIL FROM:<ü@b>".encode(), b"553 5.6.7 Non-ASCII address requires SMTPUTF8"),
])
def test_mail_from_refused(line: bytes, reply: bytes) -> None:
    server = ready_server(max_size=1000)
    out, events = talk(server, line + b"\r\nMAIL FROM:<ok@b>\r\n")
    assert out == reply + b"\r\n250 2.1.0 OK\r\n"  # the session goes on
    assert events == [MailFrom("ok@b", {})]


def test_smtputf8_and_dsn_when_offered() -> None:
    server = ready_server(capabilities=["SMTPUTF8", "DSN"])
    out, events = talk(server, "MAIL FROM:<ü@b> SMTPUTF8 RET=HDRS ENVID=x1\r\n".encode())
    assert out == b"250 2.1.0 OK\r\n"
    out, events = talk(server, "RCPT TO:<ö@c> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;x@c\r\n".encode())
    assert events == [RcptRequest("ö@c", {"NOTIFY": "SUCCESS,FAILURE", "ORCPT": "rfc822;x@c"})]
    server.rcpt_reply(RCPT_OK)
    out, _ = talk(server, b"RCPT TO:<a@c> NOTIFY=SOMETIMES\r\nRCPT TO:<a@c> ORCPT=x\r\n")
    assert out == (b"250 2.1.5 OK\r\n501 5.5.4 Invalid NOTIFY parameter\r\n"
                   b"501 5.5.4 Invalid ORCPT parameter\r\n")


# --------------------------------------------------------------------------- server: RCPT


def test_rcpt_needs_mail_and_valid_syntax() -> None:
    server = ready_server()
    out, _ = talk(server, b"RCPT TO:<a@b>\r\nMAIL FROM:<s@x>\r\nRCPT TO:<>\r\nRCPT TO:<a@b> NOTIFY=NEVER\r\n")
    assert out == (b"503 5.5.0 MAIL needed first\r\n250 2.1.0 OK\r\n"
                   b"501 5.5.4 Invalid TO: Empty path not allowed\r\n"
                   b"555 5.5.4 Unsupported parameters\r\n")


def test_control_characters_in_a_quoted_local_part_are_refused() -> None:
    """Found by fuzzing: `<"a\\rb"@x>` was accepted, so a CR reached the RcptRequest (and from
    there the 552 reply, which then raised ValueError out of the core)."""
    server = ready_server(max_size=1)
    out, events = talk(server, b'MAIL FROM:<"s\rx"@x>\r\nMAIL FROM:<s@x>\r\nRCPT TO:<"a\\\0b"@x>\r\n'
                               b'RCPT TO:<"a\x7fb"@x>\r\nRCPT TO:<"a b"@x>\r\n')
    assert out == (b"501 5.5.4 Invalid FROM: Invalid character in path\r\n250 2.1.0 OK\r\n"
                   + b"501 5.5.4 Invalid TO: Invalid character in path\r\n" * 2)
    assert events == [MailFrom("s@x", {}), RcptRequest('"a b"@x', {})]


def test_pipelined_transaction_replies_stay_in_order() -> None:
    """Pipelined RCPTs are handed out together (the caller may route them as a batch); their
    replies go out in RCPT order, and DATA waits until every one is answered."""
    server = ready_server()
    pipeline = b"MAIL FROM:<s@x>\r\nRCPT TO:<a@x>\r\nRCPT TO:<b@x>\r\nRCPT TO:<c@x>\r\nDATA\r\n"
    out, events = talk(server, pipeline)
    assert out == b"250 2.1.0 OK\r\n"
    assert events == [MailFrom("s@x", {}), RcptRequest("a@x", {}), RcptRequest("b@x", {}), RcptRequest("c@x", {})]
    assert server.paused
    assert talk(server, b"ignored until DATA\r\n") == (b"", [])  # buffered, not parsed yet
    assert server.rcpt_reply(RCPT_OK) == []
    assert server.data_to_send() == b"250 2.1.5 OK\r\n"
    assert server.rcpt_reply("550 5.1.1 <b@x> User doesn't exist: b@x") == []
    assert server.paused
    events = server.rcpt_reply(b"250 2.1.5 OK\r\n")
    assert server.data_to_send() == b"550 5.1.1 <b@x> User doesn't exist: b@x\r\n250 2.1.5 OK\r\n354 OK\r\n"
    assert events[0] == DataStart()
    assert chunks_of(events) == b"ignored until DATA"  # its CRLF may still precede the end
    assert server.recipients == ("a@x", "c@x")


def test_a_rcpt_the_core_refuses_waits_behind_pending_ones() -> None:
    """Only RCPTs that become requests are handed out early: a malformed one, or one over the
    recipient limit counting those still pending, is answered by the core in its turn."""
    server = ready_server(max_recipients=2)
    out, events = talk(server, b"MAIL FROM:<s@x>\r\nRCPT TO:<a@x>\r\nRCPT TO:<b c>\r\nRCPT TO:<d@x>\r\n")
    assert events == [MailFrom("s@x", {}), RcptRequest("a@x", {})]
    assert server.rcpt_reply(RCPT_OK) == [RcptRequest("d@x", {})]
    assert server.data_to_send() == b"250 2.1.5 OK\r\n501 5.5.4 Invalid TO: Invalid character in path\r\n"
    out, events = talk(server, b"RCPT TO:<e@x>\r\n")  # two accepted or pending: the limit
    assert (out, events) == (b"", [])
    assert server.rcpt_reply("450 4.2.0 <d@x> busy") == [RcptRequest("e@x", {})]  # d refused: room again
    assert server.data_to_send() == b"450 4.2.0 <d@x> busy\r\n"


def test_rcpts_read_while_others_are_pending_are_handed_out_with_the_next_reply() -> None:
    server = ready_server()
    _, events = talk(server, b"MAIL FROM:<s@x>\r\nRCPT TO:<a@x>\r\n")
    assert events == [MailFrom("s@x", {}), RcptRequest("a@x", {})]
    assert talk(server, b"RCPT TO:<b@x>\r\nRCPT TO:<c@x>\r\nRSET\r\n") == (b"", [])
    assert server.rcpt_reply(RCPT_OK) == [RcptRequest("b@x", {}), RcptRequest("c@x", {})]
    assert server.rcpt_reply(RCPT_OK) == []
    events = server.rcpt_reply(RCPT_OK)
    assert events == [TransactionReset("RSET")]
    assert server.data_to_send() == b"250 2.1.5 OK\r\n" * 3 + b"250 2.0.0 OK\r\n"


def test_rcpt_reply_misuse() -> None:
    server = ready_server()
    with pytest.raises(RuntimeError):
        server.rcpt_reply(RCPT_OK)
    talk(server, b"MAIL FROM:<s@x>\r\nRCPT TO:<a@x>\r\n")
    with pytest.raises(ValueError):
        server.rcpt_reply("354 go ahead")
    with pytest.raises(ValueError):
        server.rcpt_reply("OK")


def test_too_many_recipients() -> None:
    server = in_transaction(["a@x", "b@x"], max_recipients=2)
    out, events = talk(server, b"RCPT TO:<c@x>\r\n")
    assert out == b"452 4.5.3 Too many recipients\r\n" and events == []


def test_data_needs_mail_and_an_accepted_recipient() -> None:
    server = ready_server()
    out, _ = talk(server, b"DATA\r\nMAIL FROM:<s@x>\r\nRCPT TO:<a@x>\r\n")
    assert out == b"503 5.5.0 MAIL needed first\r\n250 2.1.0 OK\r\n"
    server.rcpt_reply("550 5.1.1 <a@x> no")
    out, events = talk(server, b"DATA\r\nDATA now\r\n")
    assert out == b"550 5.1.1 <a@x> no\r\n503 5.5.0 No valid recipients\r\n503 5.5.0 No valid recipients\r\n"
    assert events == []


# --------------------------------------------------------------------------- server: DATA


def test_data_streams_unstuffed_chunks_and_asks_for_replies_per_recipient() -> None:
    server = in_transaction(["a@x", "b@x", "a@x"])
    out, events = talk(server, b"DATA\r\n")
    assert out == b"354 OK\r\n" and events == [DataStart()]
    out, events = talk(server, b"Subject: t\r\n\r\n..dot\r\n")
    assert chunks_of(events) == b"Subject: t\r\n\r\n.dot"
    out, events = talk(server, b"\r\n.\r\nQUIT\r\n")
    assert chunks_of(events) == b"\r\n\r\n"
    assert events[-1] == DataEnd(len(b"Subject: t\r\n\r\n.dot\r\n\r\n"), ("a@x", "b@x", "a@x"))
    assert server.state is ServerState.AWAIT_REPLIES and server.paused
    with pytest.raises(ValueError, match="3 replies needed"):
        server.data_replies([RCPT_OK])
    events = server.data_replies(["250 2.0.0 <a@x> id1 Saved", "452 4.2.2 <b@x> Quota exceeded",
                                  "250 2.0.0 <a@x> id1 Saved"])
    assert server.data_to_send() == (b"250 2.0.0 <a@x> id1 Saved\r\n452 4.2.2 <b@x> Quota exceeded\r\n"
                                     b"250 2.0.0 <a@x> id1 Saved\r\n221 2.0.0 Bye\r\n")
    assert events == [Close("QUIT")]  # the transaction is over: no reset to report


def test_data_terminator_split_one_byte_at_a_time() -> None:
    server = in_transaction(["a@x"])
    talk(server, b"DATA\r\n")
    body = b"line1\r\n.\n.x\r\n..\r\n.\r\nNOOP\r\n"
    events: list = []
    for byte in body:
        events += server.receive(bytes([byte]))
    # `.` + bare LF is a dot line (its stuffed dot goes); a dot after a bare LF is content
    assert chunks_of(events) == b"line1\r\n\n.x\r\n.\r\n"
    assert events[-1] == DataEnd(len(b"line1\r\n\n.x\r\n.\r\n"), ("a@x",))
    server.data_replies([b"250 2.0.0 <a@x> Saved\r\n"])
    assert server.data_to_send() == b"250 2.0.0 <a@x> Saved\r\n250 2.0.0 OK\r\n"


def test_size_exceeded_during_data_is_consumed_then_refused_per_recipient() -> None:
    server = in_transaction(["a@x", "b@x"], max_size=10)
    talk(server, b"DATA\r\n")
    out, events = talk(server, b"0123456789")
    assert chunks_of(events) == b"0123456789" and out == b""
    out, events = talk(server, b"abcdef\r\nmore\r\n")
    assert events == [] and out == b""  # over the limit: nothing more is handed out
    out, events = talk(server, b".\r\nMAIL FROM:<t@x>\r\n")
    assert out == (b"552 5.3.4 <a@x> Message size exceeds fixed maximum message size\r\n"
                   b"552 5.3.4 <b@x> Message size exceeds fixed maximum message size\r\n250 2.1.0 OK\r\n")
    assert events == [DataAborted("size"), MailFrom("t@x", {})]


def test_rset_and_lhlo_reset_the_transaction() -> None:
    server = in_transaction(["a@x"])
    out, events = talk(server, b"RSET\r\nRSET\r\n")
    assert out == b"250 2.0.0 OK\r\n250 2.0.0 OK\r\n" and events == [TransactionReset("RSET")]
    talk(server, b"MAIL FROM:<s@x>\r\n")
    out, events = talk(server, b"LHLO again\r\nRCPT TO:<a@x>\r\n")
    assert events == [TransactionReset("LHLO")]
    assert out.endswith(b"503 5.5.0 MAIL needed first\r\n")


def test_input_buffer_full_while_paused() -> None:
    server = ready_server(max_buffer=1000)
    talk(server, b"MAIL FROM:<s@x>\r\nRCPT TO:<a@x>\r\n")
    out, events = talk(server, b"x" * 1001)
    assert out == b"421 4.7.0 proxy.example Input buffer full\r\n"
    assert events == [TransactionReset("Input buffer full"), Close("Input buffer full")]


# --------------------------------------------------------------------------- server: BDAT


def test_bdat_chunks() -> None:
    server = in_transaction(["a@x", "b@x"], capabilities=["CHUNKING"])
    out, events = talk(server, b"BDAT 10\r\nhel")
    assert out == b"" and events == [DataStart(), DataChunk(b"hel")]
    out, events = talk(server, b"lo\r\n.\r\nBDAT 0 LAST\r\n")  # raw bytes: no dot handling
    assert out == b"250 2.0.0 Added 10 octets\r\n"
    assert events == [DataChunk(b"lo\r\n.\r\n"), DataEnd(10, ("a@x", "b@x"))]
    server.data_replies(["250 2.0.0 <a@x> Saved", "250 2.0.0 <b@x> Saved"])
    assert server.data_to_send() == b"250 2.0.0 <a@x> Saved\r\n250 2.0.0 <b@x> Saved\r\n"
    server2 = in_transaction(["a@x"], capabilities=["CHUNKING"])
    out, events = talk(server2, b"BDAT 3 LAST\r\n.\r\nQUIT\r\n")
    assert events == [DataStart(), DataChunk(b".\r\n"), DataEnd(3, ("a@x",))]
    server2.data_replies(["250 2.0.0 <a@x> Saved"])
    assert server2.data_to_send() == b"250 2.0.0 <a@x> Saved\r\n221 2.0.0 Bye\r\n"


def test_bdat_pipelined_whole_message() -> None:
    server = in_transaction(["a@x"], capabilities=["CHUNKING"])
    out, events = talk(server, b"BDAT 3\r\nabcBDAT 2 LAST\r\nde")
    assert out == b"250 2.0.0 Added 3 octets\r\n"
    assert chunks_of(events) == b"abcde" and events[-1] == DataEnd(5, ("a@x",))


def test_bdat_refusals_still_consume_the_chunk() -> None:
    server = ready_server(capabilities=["CHUNKING"])
    out, _ = talk(server, b"BDAT 6 LAST\r\nNOOP\r\nNOOP\r\n")
    assert out == b"503 5.5.0 MAIL needed first\r\n250 2.0.0 OK\r\n"
    plain = ready_server()
    out, _ = talk(plain, b"BDAT 6 LAST\r\nNOOP\r\nNOOP\r\n")
    assert out == b"500 5.5.1 Unknown command\r\n250 2.0.0 OK\r\n"
    out, _ = talk(server, b"BDAT x\r\nBDAT 1 FIRST\r\n")
    assert out == b"501 5.5.4 Invalid BDAT parameters\r\n" * 2


def test_bdat_and_data_do_not_mix() -> None:
    server = in_transaction(["a@x"], capabilities=["CHUNKING"])
    out, _ = talk(server, b"BDAT 1\r\nxDATA\r\nRCPT TO:<b@x>\r\n")
    assert out == (b"250 2.0.0 Added 1 octets\r\n503 5.5.0 DATA cannot be used with BDAT\r\n"
                   b"503 5.5.0 RCPT not allowed after BDAT\r\n")


def test_bdat_size_exceeded() -> None:
    server = in_transaction(["a@x"], capabilities=["CHUNKING"], max_size=4)
    out, events = talk(server, b"BDAT 3\r\nabcBDAT 3\r\ndefBDAT 1 LAST\r\ng")
    assert out == (b"250 2.0.0 Added 3 octets\r\n"
                   b"552 5.3.4 Message size exceeds fixed maximum message size\r\n"
                   b"503 5.5.0 MAIL needed first\r\n")
    assert events == [DataStart(), DataChunk(b"abc"), DataAborted("size")]
    server = in_transaction(["a@x", "b@x"], capabilities=["CHUNKING"], max_size=4)
    out, events = talk(server, b"BDAT 5 LAST\r\nabcde")
    assert out == (b"552 5.3.4 <a@x> Message size exceeds fixed maximum message size\r\n"
                   b"552 5.3.4 <b@x> Message size exceeds fixed maximum message size\r\n")
    assert events[-1] == DataAborted("size")


def test_data_chunk_repr_hides_content() -> None:
    assert repr(DataChunk(b"secret body")) == "DataChunk(<11 bytes>)"


# --------------------------------------------------------------------------- client

GREETING = b"220 backend1.example.test Dovecot (Debian) ready.\r\n"
LHLO_REPLY = (b"250-backend1.example.test\r\n250-8BITMIME\r\n250-CHUNKING\r\n250-ENHANCEDSTATUSCODES\r\n"
              b"250-PIPELINING\r\n250-XCLIENT ADDR PORT PROTO HELO LOGIN SESSION TTL TIMEOUT\r\n"
              b"250 XRCPTFORWARD\r\n")
CAPS = ["8BITMIME", "CHUNKING", "ENHANCEDSTATUSCODES", "PIPELINING",
        "XCLIENT ADDR PORT PROTO HELO LOGIN SESSION TTL TIMEOUT", "XRCPTFORWARD"]


def ready_client() -> LmtpClient:
    client = LmtpClient(lhlo_name="proxy.example",
                        xclient={"ADDR": "2001:db8::9", "PORT": "2525", "HELO": "mta.example",
                                 "SESSION": "s:P1",
                                 "DESTADDR": "192.0.2.1"})
    assert client.receive(GREETING) == []
    assert client.data_to_send() == b"LHLO proxy.example\r\n"
    assert client.receive(LHLO_REPLY) == []
    assert client.data_to_send() == (b"XCLIENT HELO=mta.example SESSION=s:P1 PORT=2525 ADDR=2001:db8::9\r\n"
                                     b"LHLO proxy.example\r\n")
    assert client.receive(GREETING) == []
    assert client.receive(LHLO_REPLY) == [Ready(CAPS, True)]
    assert client.ready
    return client


def test_client_handshake_without_xclient() -> None:
    client = LmtpClient(lhlo_name="p", xclient={"ADDR": "192.0.2.1"})
    events = client.receive(GREETING + b"250-b\r\n250 PIPELINING\r\n")
    assert events == [Ready(["PIPELINING"], False)]
    assert client.data_to_send() == b"LHLO p\r\n"


def test_client_pipelined_transaction_and_per_recipient_replies() -> None:
    client = ready_client()
    client.mail_from("s@example.org", {"BODY": "8BITMIME", "SMTPUTF8": None})
    client.rcpt("a@x")
    client.rcpt("b@x")
    client.rcpt("c@x")
    client.data_start()
    assert client.data_to_send() == (b"MAIL FROM:<s@example.org> BODY=8BITMIME SMTPUTF8\r\nRCPT TO:<a@x>\r\n"
                                     b"RCPT TO:<b@x>\r\nRCPT TO:<c@x>\r\nDATA\r\n")
    with pytest.raises(RuntimeError):
        client.data_chunk(b"too early")
    events = client.receive(b"250 2.1.0 OK\r\n250 2.1.5 OK\r\n550 5.1.1 <b@x> User doesn't exist: b@x\r\n"
                            b"250 2.1.5 OK\r\n354 OK\r\n")
    assert all(isinstance(e, CommandReply) for e in events)
    assert [(e.command, e.reply.code, e.recipient) for e in events] == [
        ("MAIL", 250, None), ("RCPT", 250, "a@x"), ("RCPT", 550, "b@x"), ("RCPT", 250, "c@x"),
        ("DATA", 354, None)]
    assert client.accepted_recipients == ("a@x", "c@x") and client.data_open
    client.data_chunk(b"Subject: x\r\n\r\n.hidden\n")
    client.data_chunk(b".")
    client.data_end()
    assert client.data_to_send() == b"Subject: x\r\n\r\n..hidden\r\n..\r\n.\r\n"
    events = client.receive(b"250 2.0.0 <a@x> id Saved\r\n")
    assert len(events) == 1 and isinstance(events[0], DeliveryReply) and events[0].recipient == "a@x"
    events = client.receive(b"452 4.2.2 <c@x> Quota exceeded\r\n")
    assert events[0].recipient == "c@x" and events[0].reply.enhanced == "4.2.2"
    client.quit()
    assert client.data_to_send() == b"QUIT\r\n"
    assert [e.reply.code for e in client.receive(b"221 2.0.0 Bye\r\n")] == [221]
    assert client.connection_lost() == []


def test_client_data_refused() -> None:
    client = ready_client()
    client.mail_from("")
    client.rcpt("a@x")
    client.data_start()
    events = client.receive(b"250 2.1.0 OK\r\n550 5.1.1 no\r\n503 5.5.0 No valid recipients\r\n")
    assert events[-1].command == "DATA" and events[-1].reply.code == 503
    assert not client.data_open
    with pytest.raises(RuntimeError):
        client.data_end()
    with pytest.raises(RuntimeError):
        client.rcpt("b@x")
    client.rset()
    client.mail_from("s@x")
    assert client.data_to_send() == b"MAIL FROM:<>\r\nRCPT TO:<a@x>\r\nDATA\r\nRSET\r\nMAIL FROM:<s@x>\r\n"


def test_client_misuse_and_bad_input() -> None:
    client = LmtpClient(lhlo_name="p")
    with pytest.raises(RuntimeError):
        client.mail_from("a@b")
    client = ready_client()
    with pytest.raises(RuntimeError):
        client.rcpt("a@b")
    with pytest.raises(RuntimeError):
        client.data_start()
    with pytest.raises(ValueError):
        client.mail_from("a@b>\r\nRCPT TO:<evil@x")
    with pytest.raises(ValueError):
        client.mail_from("a@b", {"SIZE": "1 2"})
    with pytest.raises(ValueError):
        LmtpClient(lhlo_name="two words")


def test_client_failures() -> None:
    client = LmtpClient(lhlo_name="p")
    [failure] = client.receive(b"421 4.3.2 busy\r\n")
    assert isinstance(failure, LmtpFailure)
    assert (failure.kind, failure.text) == ("temp", "GREETING failed: 421 4.3.2 busy")
    assert failure.reply is not None and failure.reply.raw == b"421 4.3.2 busy\r\n"
    assert client.receive(b"220 late\r\n") == []  # failed for good
    client = ready_client()
    events = client.receive(b"421 4.4.2 idle timeout\r\n")
    assert isinstance(events[0], LmtpFailure) and events[0].kind == "temp"
    client = ready_client()
    events = client.receive(b"garbage\r\n")
    assert isinstance(events[0], LmtpFailure) and events[0].kind == "protocol"
    client = ready_client()
    client.noop()
    assert client.connection_lost() == [LmtpFailure("temp", "Server disconnected")]


# --------------------------------------------------------------------------- both cores together


@pytest.mark.parametrize("message", [
    b"Subject: plain\r\n\r\nbody\r\n",
    b".\r\n..\r\n...\r\n.x\r\n",
    b"bare\nlf\n.\nlines\n",
    b"no final newline",
    b"",
])
def test_client_and_server_cores_round_trip(message: bytes) -> None:
    server = make_server()
    client = LmtpClient(lhlo_name="backend.example")
    delivered = bytearray()
    finals: list = []

    def pump() -> None:
        for _ in range(20):
            to_server = client.data_to_send()
            events = server.receive(to_server)
            while events:  # answering a request may release more pipelined commands
                event = events.pop(0)
                if isinstance(event, RcptRequest):
                    known = event.address != "bad@x"
                    events += server.rcpt_reply(RCPT_OK if known else "550 5.1.1 <bad@x> no")
                elif isinstance(event, DataChunk):
                    delivered.extend(event.data)
                elif isinstance(event, DataEnd):
                    events += server.data_replies([f"250 2.0.0 <{r}> Saved" for r in event.recipients])
            to_client = server.data_to_send()
            finals.extend(client.receive(to_client))
            if not to_server and not to_client:
                return

    client.receive(server.greeting())
    pump()
    assert client.ready
    client.mail_from("s@x")
    for rcpt in ("a@x", "bad@x", "b@x"):
        client.rcpt(rcpt)
    client.data_start()
    pump()
    assert client.data_open
    for index in range(0, len(message), 3):
        client.data_chunk(message[index : index + 3])
    client.data_end()
    pump()
    expected = message.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if expected and not expected.endswith(b"\r\n"):
        expected += b"\r\n"
    assert bytes(delivered) == expected
    deliveries = [e for e in finals if isinstance(e, DeliveryReply)]
    assert [(d.recipient, d.reply.text) for d in deliveries] == [
        ("a@x", "<a@x> Saved"), ("b@x", "<b@x> Saved")]


@pytest.mark.parametrize("address", ['"a>b"@example.test', '"x<y"@example.test', "user+tag@example.test"])
def test_client_passes_on_every_address_the_server_side_accepts(address: str) -> None:
    """A quoted local part may hold `<` or `>` (RFC 5321); the client once refused them with ValueError."""
    assert lmtp._path(address, allow_empty=False) == f"<{address}>"


@pytest.mark.parametrize("address", ["a>b@example.test", "x\r\nRSET@example.test", "", "@r:u@example.test"])
def test_client_refuses_what_would_break_the_command_line(address: str) -> None:
    with pytest.raises(ValueError):
        lmtp._path(address, allow_empty=False)
