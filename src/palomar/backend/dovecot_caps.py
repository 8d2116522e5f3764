"""What the local Dovecot offers before login: its IMAP banner's CAPABILITY list, its Submission
EHLO keywords and its ManageSieve greeting. The proxies ask for it (admin command `capabilities`,
backend/admin.py) so that their own pre-login answers follow the backends (docs/compatibility.md).

One short connection per protocol, read until the list is complete, then a polite goodbye; no login.
"""

from __future__ import annotations

import asyncio
from typing import Any

from palomar.dovecot_login import BACKEND_HELO, DovecotEndpoint
from palomar.net.link import Link, open_link
from palomar.protocols import managesieve
from palomar.protocols.imap_syntax import ImapSyntaxError, LineAssembler, parse_response
from palomar.protocols.login_core import next_message_inline
from palomar.protocols.smtp_syntax import ReplyReader, SmtpSyntaxError

MAX_LINE = 65536


class CapabilityReadError(Exception):
    """The Dovecot service did not answer as expected; the text names which one."""


async def _messages(link: Link, assembler: LineAssembler):
    """Messages (literals inline) from `link` until it closes."""
    while True:
        message = next_message_inline(assembler)
        if message is not None:
            yield message
            continue
        data = await link.read()
        if not data:
            raise CapabilityReadError("closed the connection early")
        assembler.feed(data)


async def _imap(link: Link) -> list[str]:
    messages = _messages(link, LineAssembler(MAX_LINE))
    banner = parse_response(await anext(messages))
    if banner.tag != "*" or banner.status != "OK":
        raise CapabilityReadError(f"unexpected banner {banner.raw[:80]!r}")
    if banner.code == "CAPABILITY" and banner.code_args:
        caps = banner.code_args.split()
    else:
        link.write(b"C CAPABILITY\r\n")
        caps = []
        while True:
            resp = parse_response(await anext(messages))
            if resp.tag == "*" and resp.status == "CAPABILITY":
                caps = resp.text.split()
            elif resp.tag == "C":
                break
    link.write(b"Z LOGOUT\r\n")
    return caps


async def _submission(link: Link) -> list[str]:
    reader = ReplyReader(MAX_LINE)

    async def reply():
        while True:
            found = reader.next_reply()
            if found is not None:
                return found
            data = await link.read()
            if not data:
                raise CapabilityReadError("closed the connection early")
            reader.feed(data)

    greeting = await reply()
    if greeting.code != 220:
        raise CapabilityReadError(f"greeting {greeting.first_line()}")
    link.write(f"EHLO {BACKEND_HELO}\r\n".encode())
    ehlo = await reply()
    if ehlo.code != 250:
        raise CapabilityReadError(f"EHLO answered {ehlo.first_line()}")
    link.write(b"QUIT\r\n")
    return list(ehlo.lines[1:])


async def _sieve(link: Link) -> dict[str, str | None]:
    lines: dict[str, str | None] = {}
    async for message in _messages(link, LineAssembler(MAX_LINE)):
        if message[:1] in (b'"', b"{"):
            name, value = managesieve.parse_capability_line(message)
            lines[name] = value
            continue
        if managesieve.parse_response(message).status != "OK":
            raise CapabilityReadError(f"greeting ended with {message[:80]!r}")
        break
    link.write(b"LOGOUT\r\n")
    return lines


_READERS = {"imap": _imap, "submission": _submission, "sieve": _sieve}


async def read_capabilities(endpoint: DovecotEndpoint) -> dict[str, Any]:
    """`{"imap": [...], "submission": [...], "sieve": {...}}` as the local Dovecot sends them."""
    result: dict[str, Any] = {}
    for protocol, reader in _READERS.items():
        port = endpoint.ports[protocol]
        try:
            link = await open_link(endpoint.host, port, timeout=endpoint.timeout)
        except (OSError, TimeoutError) as exc:
            raise CapabilityReadError(f"Dovecot {protocol} not reachable: {exc}") from None
        try:
            async with asyncio.timeout(endpoint.timeout):
                result[protocol] = await reader(link)
        except TimeoutError:
            raise CapabilityReadError(f"Dovecot {protocol} did not answer in time") from None
        except (ImapSyntaxError, SmtpSyntaxError, managesieve.SieveSyntaxError, CapabilityReadError) as exc:
            raise CapabilityReadError(f"Dovecot {protocol}: {exc}") from None
        finally:
            link.close()
    return result
