"""POP3 towards clients: how the shared session loop speaks POP3."""

from __future__ import annotations

from palomar.protocols import pop3
from palomar.proxy.client_info import is_trusted
from palomar.proxy.frontend import ClientConnection
from palomar.proxy.hop_client import Established
from palomar.proxy.state import ProxyState


class Pop3Adapter:
    protocol = "pop3"

    def make_core(self, state: ProxyState, conn: ClientConnection) -> pop3.Pop3LoginServer:
        return pop3.Pop3LoginServer(starttls=state.tls is not None and not conn.tls, secured=conn.tls,
                                    allow_cleartext=state.allow_cleartext, greeting=state.greeting,
                                    trusted=is_trusted(state, conn))

    def is_login(self, event: object) -> bool:
        return isinstance(event, pop3.LoginRequest)

    def is_starttls(self, event: object) -> bool:
        return isinstance(event, pop3.StartTlsRequest)

    def is_close(self, event: object) -> bool:
        return isinstance(event, pop3.Close)

    def refused_master(self, event: pop3.LoginRequest) -> str | None:
        return pop3.auth_error() if event.is_master_login else None

    def success(self, event: pop3.LoginRequest, core: pop3.Pop3LoginServer, established: Established) -> bytes:
        return established.text  # Dovecot's own `+OK Logged in.`
