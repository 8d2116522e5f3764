"""What a session learns about its client before the login, besides the credentials.

A peer in `login_trusted_networks` (a proxy or load balancer in front of palomar) may say who
the real client is: IMAP ID `x-originating-ip` & co, or XCLIENT in POP3, Submission and
ManageSieve. The cores produce `ClientForwarded` only for trusted peers (as Dovecot's login
processes do); the session then uses the forwarded address and session id for the passdb, the
log and the hop, so the backend's Dovecot logs the real client. The client's own IMAP ID is
logged (`imap_id_log`) and kept to pass on to the backend (`imap_id_retain`).
"""

from __future__ import annotations

import logging
from typing import Any

from palomar.protocols.imap import IdReceived, client_id_to_forward, id_log_text
from palomar.protocols.login_core import ClientForwarded
from palomar.proxy.frontend import ClientConnection, trusted
from palomar.proxy.state import ProxyState

log = logging.getLogger("palomar.proxy")


def is_trusted(state: ProxyState, conn: ClientConnection) -> bool:
    """The connection comes from login_trusted_networks (its address after any PROXY header)."""
    return bool(state.login_trusted) and trusted(conn.client[0], state.login_trusted)


def note_client_info(state: ProxyState, conn: ClientConnection, event: Any) -> None:
    """Apply a core's ClientForwarded or IdReceived event to the session; other events are ignored."""
    if isinstance(event, ClientForwarded):
        apply_forwarded(conn, event)
    elif isinstance(event, IdReceived) and event.first:
        text = id_log_text(event.params, state.imap_id_log)
        if text is not None:
            log.info("session=%s client=%s:%d ID sent: %s", conn.session_id, conn.client[0], conn.client[1], text)
        if state.imap_id_retain:
            conn.client_id = client_id_to_forward(event.params)


def apply_forwarded(conn: ClientConnection, info: ClientForwarded) -> None:
    """Take the forwarded address, port and session id in place of the connection's own."""
    log.debug("session=%s client %s:%d forwarded as %s:%s session=%s", conn.session_id, conn.client[0],
              conn.client[1], info.ip, info.port, info.session_id)
    conn.client = (info.ip or conn.client[0], conn.client[1] if info.port is None else info.port)
    conn.local = (info.local_ip or conn.local[0], conn.local[1] if info.local_port is None else info.local_port)
    if info.session_id:
        conn.session_id = info.session_id
