"""IMAP towards clients: how the shared session loop speaks IMAP."""

from __future__ import annotations

from palomar.protocols import imap
from palomar.proxy.client_info import is_trusted
from palomar.proxy.frontend import ClientConnection
from palomar.proxy.hop_client import Established
from palomar.proxy.state import ProxyState


class ImapAdapter:
    protocol = "imap"

    def make_core(self, state: ProxyState, conn: ClientConnection) -> imap.ImapLoginServer:
        return imap.ImapLoginServer(
            state.capabilities.offered.imap,
            starttls=state.tls is not None and not conn.tls,
            secured=conn.tls,
            allow_cleartext=state.allow_cleartext,
            greeting=state.greeting,
            trusted=is_trusted(state, conn),
        )

    def is_login(self, event: object) -> bool:
        return isinstance(event, imap.LoginRequest)

    def is_starttls(self, event: object) -> bool:
        return isinstance(event, imap.StartTlsRequest)

    def is_close(self, event: object) -> bool:
        return isinstance(event, imap.Close)

    def refused_master(self, event: imap.LoginRequest) -> str | None:
        return "NO [AUTHORIZATIONFAILED] Authorization failed" if event.is_master_login else None

    def success(self, event: imap.LoginRequest, core: imap.ImapLoginServer, established: Established) -> bytes:
        """The backend's tagged OK, re-tagged with the client's tag (its untagged lines first), with
        the capabilities where Dovecot puts them for this client (see imap.login_ok_reply)."""
        lines = established.text.splitlines(keepends=True)
        untagged = b"".join(line for line in lines[:-1])
        return untagged + imap.login_ok_reply(lines[-1], event.tag, core.client_used_capability)

