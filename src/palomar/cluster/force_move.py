"""Backend choice by weighted rendezvous, and the backend force-move rule built on it.

Shared by the proxy (where to send a login) and the backend (whether a login sent
here by force-move is legitimate), so both sides compute the same answer.
"""

from __future__ import annotations

from collections.abc import Iterable

from palomar.cluster.hashing import force_move_bucket, weighted_rendezvous
from palomar.cluster.model import Backend, SiteView


def rendezvous_backend(key: str, backends: Iterable[Backend]) -> Backend | None:
    """Rendezvous over backends weighted by load factor; equal weights if none is above 0.

    Falling back to equal weights keeps a site whose backends are all draining serving.
    """
    pool = list(backends)
    weighted = [(str(b.id), float(b.load_factor)) for b in pool if b.load_factor > 0]
    if not weighted:
        weighted = [(str(b.id), 1.0) for b in pool]
    winner = weighted_rendezvous(key, weighted)
    return next((b for b in pool if str(b.id) == winner), None)


def apply_force_move(backend: Backend, username: str, site_view: SiteView) -> Backend | None:
    """The force-move destination for this user, or None when the user stays on `backend`.

    Only this user's sessions go elsewhere; the group stays on `backend`, so the
    other users of the group are unaffected and the move ends when force-move stops.
    """
    move = backend.force_move
    if move is None or force_move_bucket(move.id, username) >= move.percentage:
        return None
    dests = [site_view.backend_by_host(host) for host in move.dest]
    online = [d for d in dests if d is not None and d.online and d.id != backend.id]
    return rendezvous_backend(username, online)
