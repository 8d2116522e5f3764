"""ManageSieve towards clients: how the shared session loop speaks RFC 5804."""

from __future__ import annotations

from palomar.protocols import managesieve
from palomar.proxy.client_info import is_trusted
from palomar.proxy.frontend import ClientConnection
from palomar.proxy.hop_client import Established
from palomar.proxy.state import ProxyState

SIEVE_EXTENSIONS = (
    "fileinto reject envelope encoded-character vacation subaddress comparator-i;ascii-numeric relational regex "
    "imap4flags copy include variables body enotify environment mailbox date index ihave duplicate mime "
    "foreverypart extracttext"
)
"""What Dovecot CE 2.3's Pigeonhole offers by default; the proxy advertises it before login, when
it cannot ask the user's backend yet."""


class SieveAdapter:
    protocol = "sieve"

    def make_core(self, state: ProxyState, conn: ClientConnection) -> managesieve.SieveLoginServer:
        return managesieve.SieveLoginServer(
            starttls=state.tls is not None and not conn.tls, secured=conn.tls,
            allow_cleartext=state.allow_cleartext, sieve_extensions=SIEVE_EXTENSIONS, notify_methods="mailto",
            greeting=state.greeting, trusted=is_trusted(state, conn),
        )

    def is_login(self, event: object) -> bool:
        return isinstance(event, managesieve.LoginRequest)

    def is_starttls(self, event: object) -> bool:
        return isinstance(event, managesieve.StartTlsRequest)

    def is_close(self, event: object) -> bool:
        return isinstance(event, managesieve.Close)

    def refused_master(self, event: managesieve.LoginRequest) -> str | None:
        return managesieve.AUTH_FAILED if event.is_master_login else None

    def success(self, event: managesieve.LoginRequest, core: managesieve.SieveLoginServer,
                established: Established) -> bytes:
        return established.text  # Dovecot's own `OK "Logged in."`
