"""Submission towards clients: how the shared session loop speaks ESMTP with AUTH."""

from __future__ import annotations

from palomar.protocols import submission
from palomar.proxy.client_info import is_trusted
from palomar.proxy.frontend import ClientConnection
from palomar.proxy.hop_client import Established
from palomar.proxy.state import ProxyState


class SubmissionAdapter:
    protocol = "submission"

    def make_core(self, state: ProxyState, conn: ClientConnection) -> submission.SubmissionLoginServer:
        return submission.SubmissionLoginServer(
            hostname=state.proxy_host, starttls=state.tls is not None and not conn.tls, secured=conn.tls,
            allow_cleartext=state.allow_cleartext, greeting=state.greeting, trusted=is_trusted(state, conn),
            capabilities=state.capabilities.offered.submission,
        )

    def is_login(self, event: object) -> bool:
        return isinstance(event, submission.LoginRequest)

    def is_starttls(self, event: object) -> bool:
        return isinstance(event, submission.StartTlsRequest)

    def is_close(self, event: object) -> bool:
        return isinstance(event, submission.Close)

    def refused_master(self, event: submission.LoginRequest) -> str | None:
        return submission.AUTH_FAILED if event.is_master_login else None

    def success(self, event: submission.LoginRequest, core: submission.SubmissionLoginServer,
                established: Established) -> bytes:
        """Dovecot's 235; the client's next EHLO (if any) is answered by Dovecot itself, with the
        backend's post-login extensions (its SIZE limit and the rest)."""
        return established.text
