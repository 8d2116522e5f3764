"""The doveadm TCP protocol core, against byte vectors of Dovecot 2.3's doveadm client and server
(src/doveadm/server-connection.c, client-connection-tcp.c)."""

from __future__ import annotations

import base64

import pytest

from palomar.protocols import doveadm
from palomar.protocols.doveadm import (
    Command,
    Credentials,
    DoveadmProtocolError,
    Refused,
    ServerConnection,
    Version,
)

PLAIN = b"PLAIN\t" + base64.b64encode(b"\0doveadm\0secret") + b"\n"
# what `doveadm mailbox status -S host:port -u user5@example.test messages INBOX` sends after "+"
STATUS_LINE = b"\tuser5@example.test\tmailbox status\t-u\tuser5@example.test\tmessages\tINBOX\n"


def test_handshake_of_a_2_3_client_then_its_command() -> None:
    core = ServerConnection()
    assert core.receive(b"VERSION\tdoveadm-server\t1\t2\n") == [Version(2)]
    assert core.data_to_send() == b"VERSION\tdoveadm-client\t1\t2\n-\n"
    [credentials] = core.receive(PLAIN)
    assert credentials == Credentials("secret") and "secret" not in repr(credentials)
    core.accept()
    assert core.data_to_send() == b"+\n"
    [command] = core.receive(STATUS_LINE)
    assert command == Command("", "user5@example.test", "mailbox status",
                              ("-u", "user5@example.test", "messages", "INBOX"), STATUS_LINE)


def test_minor_0_gets_no_version_line_and_pipelined_lines_wait_for_the_verdict() -> None:
    core = ServerConnection()
    events = core.receive(b"VERSION\tdoveadm-server\t1\t0\n" + PLAIN + STATUS_LINE)
    assert events == [Version(0), Credentials("secret")]
    assert core.data_to_send() == b"-\n"
    core.accept()
    assert [e.name for e in core.receive(b"")] == ["mailbox status"]  # type: ignore[union-attr]
    assert core.data_to_send() == b"+\n"


def test_wrong_password_gets_a_minus() -> None:
    core = ServerConnection()
    core.receive(b"VERSION\tdoveadm-server\t1\t2\n" + PLAIN)
    core.data_to_send()
    core.reject()
    assert core.data_to_send() == b"-\n"


def test_starttls_then_credentials_through_tls() -> None:
    core = ServerConnection()
    assert core.receive(b"VERSION\tdoveadm-server\t1\t2\nSTARTTLS\n") == [doveadm.Version(2), doveadm.StartTls()]
    assert core.data_to_send() == b"VERSION\tdoveadm-client\t1\t2\n-\n"  # no reply to STARTTLS itself
    assert core.receive(PLAIN) == [doveadm.Credentials("secret")]
    with pytest.raises(DoveadmProtocolError, match="already uses TLS"):
        ServerConnection(tls=True).receive(b"VERSION\tdoveadm-server\t1\t2\nSTARTTLS\n")


@pytest.mark.parametrize(("data", "error"), [
    (b"HELLO\n", "not a doveadm client"),
    (b"VERSION\tdoveadm-server\t1\tx\n", "bad VERSION line"),
    (b"VERSION\tdoveadm-server\t1\t2\nSTARTTLS\n" + PLAIN, "data after STARTTLS"),
    (b"VERSION\tdoveadm-server\t1\t2\nLOGIN\tx\n", "non-PLAIN"),
    (b"VERSION\tdoveadm-server\t1\t2\nPLAIN\t!!\n", "invalid base64"),
    (b"VERSION\tdoveadm-server\t1\t2\nPLAIN\t" + base64.b64encode(b"\0root\0pw") + b"\n", "as 'doveadm'"),
])
def test_protocol_errors(data: bytes, error: str) -> None:
    with pytest.raises(DoveadmProtocolError, match=error):
        ServerConnection().receive(data)


def test_command_lines() -> None:
    escaped = doveadm.parse_command(b"v\tu\x01tser\tfetch\ttext\x01n\n")
    assert (escaped.flags, escaped.user, escaped.args) == ("v", "u\tser", ("text\n",))
    assert doveadm.encode_command("v", "u\tser", "fetch", ("text\n",)) == b"v\tu\x01tser\tfetch\ttext\x01n\n"
    with pytest.raises(DoveadmProtocolError, match="unknown flag: x"):
        doveadm.parse_command(b"x\tuser\tfetch\n")
    with pytest.raises(DoveadmProtocolError, match="no command"):
        doveadm.parse_command(b"\tuser\n")


@pytest.mark.parametrize(("line", "target"), [
    (STATUS_LINE, "user5@example.test"),
    (b"\t\tkick\tuser5@example.test\n", "user5@example.test"),
    (b"\tuser*\tmailbox status\tmessages\tINBOX\n", "user masks are not supported"),
    (b"\t\tkick\tuser*\n", "exactly one user name"),
    (b"\t\tkick\t-h\tbackend1\n", "exactly one user name"),
    (b"\t\tkick\t192.168.0.0/16\n", "exactly one user name"),
    (b"\t\tkick\tuser5@example.test\t10.0.0.1\n", "exactly one user name"),
    (b"\t\twho\n", "who: not supported through a palomar proxy"),
])
def test_target_user(line: bytes, target: str) -> None:
    found = doveadm.target_user(doveadm.parse_command(line))
    if isinstance(found, Refused):
        assert target in found.text and found.code == "USAGE"
    else:
        assert found == target


def test_with_target_renames_the_user_field_or_kicks_argument() -> None:
    renamed = doveadm.with_target(doveadm.parse_command(STATUS_LINE), "other@example.test")
    assert renamed.raw.startswith(b"\tother@example.test\tmailbox status\t")
    kick = doveadm.with_target(doveadm.parse_command(b"\t\tkick\tUser5\n"), "user5")
    assert kick.raw == b"\t\tkick\tuser5\n"
    same = doveadm.parse_command(STATUS_LINE)
    assert doveadm.with_target(same, "user5@example.test") is same


def test_failure_reply_framing() -> None:
    assert doveadm.failure_reply(0, "USAGE", "no") == b"\n-USAGE\n"
    assert doveadm.failure_reply(2, "TEMPFAIL", "down") == (
        b"L\x00\x00\x00\x06\x04down\n" + b"\x00\x00\x00\x00\x0b\n-TEMPFAIL\n")


@pytest.mark.parametrize("minor", [0, 2])
def test_reply_tracker_finds_the_end_byte_by_byte(minor: int) -> None:
    reply = (doveadm.frame(minor, b"INBOX\t2\t") + doveadm.frame(minor, b"x\x01ty\t", doveadm.LOG_CHANNEL)
             + doveadm.frame(minor, b"\n-NOTFOUND\n"))
    tracker = doveadm.ReplyTracker(minor)
    ends = [tracker.feed(reply[i:i + 1]) for i in range(len(reply))]
    assert ends[:-1] == [None] * (len(reply) - 1) and ends[-1] == 1
    assert tracker.status == b"-NOTFOUND"
    whole = doveadm.ReplyTracker(minor)
    assert whole.feed(reply + b"next") == len(reply)
    assert whole.status == b"-NOTFOUND"


def test_reply_tracker_refuses_a_broken_status_line() -> None:
    with pytest.raises(DoveadmProtocolError, match="broken reply status"):
        doveadm.ReplyTracker(0).feed(b"\n?\n")
    with pytest.raises(DoveadmProtocolError, match="after the reply"):
        doveadm.ReplyTracker(2).feed(doveadm.frame(2, b"\n+\nextra"))


@pytest.mark.parametrize(("args", "expected"), [
    (("-F", "", "--", "messages", "INBOX"), ("-A", "--", "messages", "INBOX")),
    (("-A", "--", "messages"), ("-A", "--", "messages")),
    (("--", "-F", ""), ("--", "-F", "")),  # after `--` they are the command's own arguments
    (("-F", "users.txt", "--"), ("-F", "users.txt", "--")),
    (("-F", ""), ("-F", "")),
])
def test_user_file_as_all_users(args: tuple[str, ...], expected: tuple[str, ...]) -> None:
    command = doveadm.parse_command(doveadm.encode_command("", "u@x", "mailbox status", args))
    rewritten = doveadm.user_file_as_all_users(command)
    assert rewritten.args == expected
    assert doveadm.parse_command(rewritten.raw) == rewritten
