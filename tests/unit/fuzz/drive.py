"""Drivers that play a connection through a sans-IO core the way the services do, and
record what came out, so that runs over different chunkings can be compared.

The driver reacts to events exactly as a service would (answers a login, finishes a TLS
handshake, stops at Close), with decisions fixed in advance so that every chunking of
the same input sees the same decisions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from palomar.protocols.login_core import Close, ServerState


@dataclass
class ServerRun:
    """What a login server core did with one input."""

    events: list[Any] = field(default_factory=list)
    output: bytearray = field(default_factory=bytearray)
    leftover: bytearray = field(default_factory=bytearray)
    tls_started: bool = False


def buffered_input(core: Any) -> int:
    """Bytes a login server core holds from the client that are not yet a command."""
    lines = core._lines
    partial = getattr(lines, "_partial", b"")
    return lines.buffered + len(partial)


def command_limit(core: Any, max_buffer: int) -> int:
    """`max_buffer`, or the larger limit a core grants the command being read (IMAP's ID, as Dovecot)."""
    lines = core._lines
    size_for = getattr(lines, "max_size_for", None)
    if size_for is None:
        return max_buffer
    head = bytes(getattr(lines, "_partial", b"")) + bytes(getattr(lines, "_buf", b""))
    return max(max_buffer, size_for(head) + 1)


def run_login_server(
    make: Callable[[], Any],
    plain: Iterable[bytes],
    tls: Iterable[bytes] = (),
    *,
    accept: Sequence[bool] = (),
    refuse: Callable[[Any, Any], list[Any]],
    succeed: Callable[[Any], None] = lambda core: core.login_succeeded(),
    check: Callable[[Any], None] = lambda core: None,
) -> ServerRun:
    """Feed `plain` chunks, then (after a STARTTLS and its handshake) `tls` chunks.

    The n-th login is accepted when accept[n] is true (refused otherwise). Plaintext left
    after STARTTLS is not fed: a real handshake would consume or reject it, and the core
    must not act on it either way. `check(core)` runs after every receive."""
    core = make()
    run = ServerRun()
    run.output += core.greeting()
    answers = iter(accept)
    state = {"stop": False, "tls": False}

    def handle(events: list[Any]) -> None:
        queue = list(events)
        while queue:
            event = queue.pop(0)
            run.events.append(event)
            name = type(event).__name__
            if isinstance(event, Close) or name == "Close":
                state["stop"] = True
            elif name == "StartTlsRequest":
                run.output += core.data_to_send()
                assert core.state is ServerState.AWAIT_TLS
                assert core.receive(b"ignored plaintext\r\n") == []
                core.tls_started()
                assert buffered_input(core) == 0, "plaintext survived the TLS handshake"
                run.tls_started = True
                state["tls"] = True
            elif name == "LoginRequest":
                run.output += core.data_to_send()
                if next(answers, False):
                    succeed(core)
                else:
                    queue.extend(refuse(core, event))
        run.output += core.data_to_send()

    for phase, chunks in (("plain", plain), ("tls", tls)):
        if phase == "tls" and not state["tls"]:
            break
        for chunk in chunks:
            if state["stop"] or (phase == "plain" and state["tls"]):
                break
            handle(core.receive(chunk))
            check(core)
            run.leftover += core.leftover()
    run.output += core.data_to_send()
    return run


def run_login_client(core: Any, chunks: Iterable[bytes]) -> tuple[Any, bytes, bytes, list[Any]]:
    """Feed a backend's bytes to a login client core; (result, bytes sent, leftover, results returned)."""
    out = bytearray()
    returned = []
    for chunk in chunks:
        result = core.receive(chunk)
        if result is not None:
            returned.append(result)
        out += core.data_to_send()
    return core.result, bytes(out), core.leftover(), returned


def same_server_runs(
    make: Callable[[], Any],
    data: bytes,
    tls: bytes,
    chunks: list[bytes],
    *,
    accept: Sequence[bool],
    refuse: Callable[[Any, Any], list[Any]],
    max_buffer: int,
    succeed: Callable[[Any], None] = lambda core: core.login_succeeded(),
) -> ServerRun:
    """Play the input in one chunk, in `chunks` and byte by byte: the events, the replies and
    the relayed bytes must be identical, every reply line well formed, and the client's
    unparsed input never above `max_buffer` while the core reads commands."""
    from unit.fuzz.hostile import byte_by_byte, well_formed_lines

    def check(core: Any) -> None:
        if core.state in (ServerState.COMMAND, ServerState.AUTH_CONTINUE):
            assert buffered_input(core) <= command_limit(core, max_buffer), (buffered_input(core), max_buffer)
        elif core.state in (ServerState.CLOSED, ServerState.AWAIT_TLS):
            assert buffered_input(core) == 0

    runs = [
        run_login_server(make, plain, tls_chunks, accept=accept, refuse=refuse, succeed=succeed, check=check)
        for plain, tls_chunks in (([data], [tls]), (chunks, byte_by_byte(tls)), (byte_by_byte(data), [tls]))
    ]
    first = runs[0]
    for other in runs[1:]:
        assert other.events == first.events
        assert bytes(other.output) == bytes(first.output)
        assert bytes(other.leftover) == bytes(first.leftover)
    assert well_formed_lines(bytes(first.output)), bytes(first.output)
    for event in first.events:
        if type(event).__name__ == "LoginRequest":
            assert isinstance(event.username, str) and isinstance(event.password, str)
    return first


def same_client_runs(make: Callable[[], Any], data: bytes, chunks: list[bytes]) -> Any:
    """Feed a backend's bytes to fresh login client cores in one chunk, in `chunks` and byte
    by byte: the result and what the core sent must match, the result is returned exactly
    once, and after a successful login the bytes left over match too (after a failure there
    is nothing to relay, so where the failure cut the stream does not matter)."""
    from unit.fuzz.hostile import byte_by_byte, well_formed_lines

    outcomes = [run_login_client(make(), split) for split in ([data], chunks, byte_by_byte(data))]
    result, sent, leftover, returned = outcomes[0]
    assert returned == ([result] if result is not None else [])
    for other in outcomes[1:]:
        assert other[0] == result and other[1] == sent and other[3] == returned
        if type(result).__name__ == "LoggedIn":
            assert other[2] == leftover
    assert well_formed_lines(sent)
    return result
