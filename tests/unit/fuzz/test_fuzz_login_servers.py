"""Fuzzing the pre-login server cores (IMAP, POP3, ManageSieve, Submission) with the same
properties: any bytes in any chunking give the same events, replies and relayed bytes;
only protocol replies come out, one well-formed line at a time; the unparsed input stays
under the line limit; nothing pipelined behind STARTTLS survives the handshake; what
follows a successful login is relayed untouched."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from palomar.protocols import imap, managesieve, pop3, submission
from palomar.protocols.login_core import ServerState
from unit.fuzz import grammars
from unit.fuzz.drive import buffered_input, same_server_runs
from unit.fuzz.hostile import cuts, more, overlong


@dataclass(frozen=True)
class Protocol:
    name: str
    core: Callable[..., Any]  # (max_line, secured, allow_cleartext) -> core
    max_line: int  # the core's default
    command: st.SearchStrategy[bytes]
    session: Callable[[int], st.SearchStrategy[bytes]]
    starttls: bytes
    logins: tuple[bytes, ...]
    refuse: Callable[[Any, Any], list[Any]]
    succeed: Callable[[Any], None] = lambda core: core.login_succeeded()

    def make(self, max_line: int | None = None, *, secured: bool = False, cleartext: bool = True):
        return lambda: self.core(max_line or self.max_line, secured, cleartext)

    def same_runs(self, make, data: bytes, tls: bytes, chunks: list[bytes], accept, max_line: int | None = None):
        return same_server_runs(make, data, tls, chunks, accept=accept, refuse=self.refuse, succeed=self.succeed,
                                max_buffer=(max_line or self.max_line) + 1)


PROTOCOLS = [
    Protocol(
        "imap",
        lambda max_line, secured, cleartext: imap.ImapLoginServer(
            starttls=True, secured=secured, allow_cleartext=cleartext, max_line=max_line, max_bad_commands=5),
        8192, grammars.imap_command(), grammars.imap_session, b"a STARTTLS\r\n",
        (b"a LOGIN u p\r\n", b"a AUTHENTICATE PLAIN AHUAcA==\r\n", b"a LOGIN {1}\r\nu {1+}\r\np\r\n"),
        lambda core, request: core.login_failed(request.tag, imap.AUTH_FAILED),
    ),
    Protocol(
        "pop3",
        lambda max_line, secured, cleartext: pop3.Pop3LoginServer(
            starttls=True, secured=secured, allow_cleartext=cleartext, max_line=max_line, max_bad_commands=5),
        4096, grammars.pop3_command(), grammars.pop3_session, b"STLS\r\n",
        (b"USER u\r\nPASS p\r\n", b"AUTH PLAIN AHUAcA==\r\n", b"AUTH LOGIN\r\ndQ==\r\ncA==\r\n"),
        lambda core, request: core.login_failed(request.tag, pop3.AUTH_FAILED),
    ),
    Protocol(
        "managesieve",
        lambda max_line, secured, cleartext: managesieve.SieveLoginServer(
            starttls=True, secured=secured, allow_cleartext=cleartext, sieve_extensions="fileinto vacation",
            max_line=max_line, max_bad_commands=5),
        8192, grammars.sieve_command(), grammars.sieve_session, b"STARTTLS\r\n",
        (b'AUTHENTICATE "PLAIN" "AHUAcA=="\r\n', b'AUTHENTICATE "PLAIN" {8+}\r\nAHUAcA==\r\n',
         b'AUTHENTICATE "LOGIN"\r\n"dQ=="\r\n{4+}\r\ncA==\r\n'),
        lambda core, request: core.login_failed(request.tag, managesieve.AUTH_FAILED),
    ),
    Protocol(
        "submission",
        lambda max_line, secured, cleartext: submission.SubmissionLoginServer(
            hostname="proxy.test", starttls=True, secured=secured, allow_cleartext=cleartext, max_line=max_line,
            max_bad_commands=5),
        4096, grammars.smtp_command(), grammars.smtp_session, b"EHLO c\r\nSTARTTLS\r\n",
        (b"AUTH PLAIN AHUAcA==\r\n", b"EHLO c\r\nAUTH LOGIN\r\ndQ==\r\ncA==\r\n"),
        lambda core, request: core.login_failed(None, submission.AUTH_FAILED),
        lambda core: core.login_succeeded(submission.LOGGED_IN),
    ),
]
each_protocol = pytest.mark.parametrize("proto", PROTOCOLS, ids=[p.name for p in PROTOCOLS])


@each_protocol
@given(st_data=st.data())
@more(5)
def test_one_hostile_command(proto, st_data):
    """One or two commands per example: every argument shape gets tried on every command."""
    data = st_data.draw(st.lists(proto.command, min_size=1, max_size=2).map(b"".join))
    accept = st_data.draw(st.lists(st.booleans(), max_size=2))
    proto.same_runs(proto.make(), data, b"", st_data.draw(cuts(data)), accept)


@each_protocol
@given(data=st.binary(max_size=300), accept=st.lists(st.booleans(), max_size=3), st_data=st.data())
def test_random_bytes(proto, data, accept, st_data):
    proto.same_runs(proto.make(), data, b"", st_data.draw(cuts(data)), accept)


@each_protocol
@given(accept=st.lists(st.booleans(), max_size=3), max_line=st.sampled_from([16, 64, None]), secured=st.booleans(),
       cleartext=st.booleans(), st_data=st.data())
def test_hostile_sessions(proto, accept, max_line, secured, cleartext, st_data):
    """Several commands, a STARTTLS somewhere, then more commands inside TLS, under small and default limits."""
    data, tls = st_data.draw(proto.session(8)), st_data.draw(proto.session(4))
    proto.same_runs(proto.make(max_line, secured=secured, cleartext=cleartext), data, tls, st_data.draw(cuts(data)),
                    accept, max_line)


@each_protocol
@given(st_data=st.data())
def test_nothing_pipelined_after_starttls_survives(proto, st_data):
    data = proto.starttls + st_data.draw(proto.session(4))
    run = proto.same_runs(proto.make(), data, st_data.draw(proto.session(4)), st_data.draw(cuts(data)), [])
    assert run.tls_started


@each_protocol
@given(tail=st.binary(max_size=200), st_data=st.data())
def test_pipelined_after_login_is_relayed(proto, tail, st_data):
    data = st_data.draw(st.sampled_from(proto.logins)) + tail
    run = proto.same_runs(proto.make(), data, b"", st_data.draw(cuts(data)), [True])
    assert [type(event).__name__ for event in run.events][-1] == "LoginRequest"
    assert bytes(run.leftover) == tail


@each_protocol
@given(max_line=st.sampled_from([16, 100, None]), st_data=st.data())
def test_endless_line_is_not_buffered(proto, max_line, st_data):
    """A line that never ends closes the connection (Submission: is answered and skipped)
    instead of growing the buffer, whatever command it began as."""
    limit = max_line or proto.max_line
    core = proto.make(max_line)()
    prefix = st_data.draw(st.sampled_from([b"", proto.logins[0][:5], proto.starttls[:3]]))
    junk = st_data.draw(overlong(limit))
    core.receive(prefix)
    for _ in range(4):
        core.receive(junk)
        if core.state is not ServerState.CLOSED:
            assert buffered_input(core) <= limit + 1
    if len(prefix) + 4 * len(junk) > limit + 1 and proto.name != "submission":
        assert core.state is ServerState.CLOSED


@each_protocol
@given(flood=st.integers(min_value=1, max_value=40))
def test_flood_while_a_login_is_pending_closes(proto, flood):
    core = proto.make(64)()  # a small line limit: the cap is 65536 bytes regardless
    assert core.receive(proto.logins[0])
    assert core.state is ServerState.AWAIT_LOGIN
    for _ in range(flood):
        core.receive(b"x" * 4096)
    if flood * 4096 > 65536:
        assert core.state is ServerState.CLOSED and buffered_input(core) == 0
    else:
        assert buffered_input(core) == flood * 4096
