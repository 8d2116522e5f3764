"""ManageSieve towards clients: how the shared session loop speaks RFC 5804."""

from __future__ import annotations

from palomar.protocols import managesieve
from palomar.proxy.client_info import is_trusted
from palomar.proxy.frontend import ClientConnection
from palomar.proxy.hop_client import Established
from palomar.proxy.state import ProxyState


class SieveAdapter:
    protocol = "sieve"

    def make_core(self, state: ProxyState, conn: ClientConnection) -> managesieve.SieveLoginServer:
        offered = state.capabilities.offered
        return managesieve.SieveLoginServer(
            starttls=state.tls is not None and not conn.tls, secured=conn.tls,
            allow_cleartext=state.allow_cleartext, sieve_extensions=offered.sieve, notify_methods=offered.notify,
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
