"""The direct path (`cluster_backend_path = direct`): a proxy logs in to the backend's Dovecot itself.

Instead of a hop to the backend's palomar service, the proxy connects to the backend's Dovecot
listener with `haproxy = yes`, writes a PROXY v2 header with the client's address (Dovecot
believes it from `haproxy_trusted_networks` only), and logs in as the master user with the same
code the backend uses on the hop path (`palomar.dovecot_login`). Dovecot's passdb asks the
backend's palomar service whether it serves the user (backend/login_check.py); a referral comes
back as the text of Dovecot's refusal and is followed like a hop's REFERRAL. After the login the
proxy relays straight to Dovecot: one Python process in the session's data path.
"""

from __future__ import annotations

import ssl

from palomar.dovecot_login import DovecotEndpoint, login_over
from palomar.protocols import hop
from palomar.protocols.proxyproto import build_v2
from palomar.proxy.hop_client import (
    Established,
    HopFailed,
    HopTarget,
    follow_referrals,
    open_backend_link,
    split_host_port,
)


class DirectClient:
    """Opens sessions straight to backends' Dovecot for the protocols in `ports` (same port on every
    backend); every other protocol stays on the hop."""

    def __init__(self, ports: dict[str, int], *, master_user: str, master_password: str,
                 connect_timeout: float, answer_timeout: float, tls: ssl.SSLContext | None = None,
                 sessions: dict[str, ssl.SSLSession] | None = None) -> None:
        self.ports = {protocol: port for protocol, port in ports.items() if port}
        self.master_user = master_user
        self.master_password = master_password
        self.connect_timeout = connect_timeout
        self.answer_timeout = answer_timeout
        self.tls = tls
        """`cluster_hop_ssl = yes`: TLS after the PROXY header, the certificate checked against the
        hop CA and the backend's address (as on the hop); None: plaintext."""
        self.sessions: dict[str, ssl.SSLSession] = {} if sessions is None else sessions
        """backend host -> the last TLS session its Dovecot gave us, offered on the next connection
        (as the hop client does; Dovecot resumes it when the same login process takes it)."""

    def serves(self, protocol: str) -> bool:
        return protocol in self.ports

    def with_timeout(self, timeout: float) -> DirectClient:
        """The same client for a probe that may take `timeout` (as `HopClient.with_timeout`)."""
        return DirectClient(self.ports, master_user=self.master_user, master_password=self.master_password,
                            connect_timeout=min(self.connect_timeout, timeout), answer_timeout=timeout, tls=self.tls,
                            sessions=self.sessions)

    async def _attempt(self, host: str, target: HopTarget, ttl: int) -> Established | HopFailed | hop.HopReply:
        port = self.ports[target.protocol]
        address, _ = split_host_port(host, port)  # a port in a backend's name is its hop port, not Dovecot's
        link = await open_backend_link(host, address, port, timeout=self.connect_timeout, tls=self.tls,
                                       sessions=self.sessions, preamble=build_v2(target.client, target.local))
        if isinstance(link, HopFailed):
            return link
        endpoint = DovecotEndpoint(host=host, ports=self.ports, master_user=self.master_user,
                                   master_password=self.master_password, timeout=self.answer_timeout)
        request = hop.HopRequest(
            user=target.user, protocol=target.protocol, session_id=target.session_id, backend_host=host,
            client=target.client, local=target.local, client_tls=target.client_tls, ttl=ttl,
            client_id=hop.encode_client_id(target.client_id))
        try:
            reply, session = await login_over(link, endpoint, request)
        except (ConnectionError, OSError) as exc:
            link.abort()
            return HopFailed(host, "proxy_dest_remote_failure", f"Dovecot connection failed: {exc}")
        if isinstance(reply, hop.LoggedIn):
            assert session is not None  # login_over returns the session with every LoggedIn
            ticket = session.new_tls_session()  # TLS 1.3 tickets came with Dovecot's first data
            if ticket is not None and ticket.has_ticket:
                self.sessions[host] = ticket
            return Established(host, session, reply.text, session.take_buffer(), 0)
        return reply

    async def connect(self, host: str, target: HopTarget, on_redirect=None) -> Established | HopFailed:
        """Log the user in at `host`'s Dovecot, following referrals as on the hop."""
        return await follow_referrals(self._attempt, host, target, on_redirect)
